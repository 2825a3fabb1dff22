"""Key-encryption keys (KEKs): where they come from, and wrapping document data keys (DEKs) under them.

A KEK is 32 random bytes, written as base64, named by a key id. Configuration names them
(``kek_files``: ``ID=PATH,...``; ``kek_keys``: ``ID=BASE64,...``, for secrets passed in the
environment) and ``kek_current`` picks the one new DEKs are wrapped under; the others stay able to
unwrap until ``clearinghouse keys rotate`` has re-wrapped every DEK. With none configured, the
embedded default keeps its KEKs in ``home/keys`` (files ``ID.key``, mode 0600, the current id in
``home/keys/current``) and generates the first one on first start.

DEKs are wrapped with AES Key Wrap (RFC 3394), which carries its own integrity check.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fcntl
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from clearinghouse.config import Settings

log = logging.getLogger("repository.keys")

KEK_LEN = 32
KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
CURRENT_FILE = "current"


class KeyConfigError(ValueError):
    """The configured KEKs are unusable (malformed, missing, or no current one)."""


class UnknownKek(LookupError):
    """A DEK is wrapped under a KEK that is not configured (removed before ``keys rotate`` finished)."""


class DekUnwrapFailed(ValueError):
    """A wrapped DEK does not unwrap under the KEK its row names: the row or the key is wrong."""


def _decode_key(kid: str, text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyConfigError(f"KEK {kid!r} ({where}) is not base64: {exc}") from None
    if len(raw) != KEK_LEN:
        raise KeyConfigError(f"KEK {kid!r} ({where}) has {len(raw)} bytes; a KEK is {KEK_LEN} random bytes")
    return raw


def _check_id(kid: str) -> str:
    if not KEY_ID.fullmatch(kid):
        raise KeyConfigError(f"KEK id {kid!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
    return kid


def _pairs(spec: str, setting: str) -> list[tuple[str, str]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kid, sep, value = item.partition("=")
        if not sep or not value:
            raise KeyConfigError(f"{setting}: {item!r} is not ID=VALUE")
        out.append((_check_id(kid.strip()), value.strip()))
    return out


@dataclass(frozen=True)
class KeyRing:
    keys: dict[str, bytes]
    current: str
    source: str  # where the keys came from, for `keys status`

    def wrap(self, dek: bytes) -> tuple[str, bytes]:
        return self.current, aes_key_wrap(self.keys[self.current], dek)

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        kek = self.keys.get(kek_id)
        if kek is None:
            raise UnknownKek(f"the data key is wrapped under KEK {kek_id!r}, which is not configured")
        try:
            return aes_key_unwrap(kek, wrapped)
        except InvalidUnwrap:
            raise DekUnwrapFailed(f"the data key does not unwrap under KEK {kek_id!r}") from None


def keys_dir(settings: Settings) -> Path:
    return settings.home / "keys"


def generate_key(directory: Path, *, make_current: bool = True) -> str:
    """A new KEK file in the embedded key directory (0600), optionally made the current one."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    kid = f"kek-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    fd = os.open(directory / f"{kid}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(KEK_LEN)).decode() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    if make_current:
        tmp = directory / f".{CURRENT_FILE}.{secrets.token_hex(4)}"
        tmp.write_text(kid + "\n")
        os.replace(tmp, directory / CURRENT_FILE)
    log.info("generated key-encryption key %s in %s", kid, directory)
    return kid


def _create_first_key(directory: Path) -> list[Path]:
    """Generate the first KEK. Several `serve` processes sharing a home may start at once: one generates
    it under the lock and the others then find it (without the lock each would make its own current)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    with open(directory / ".create-lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if not any(directory.glob("*.key")):
            generate_key(directory)
        return sorted(directory.glob("*.key"))


def _embedded(settings: Settings, *, create: bool) -> KeyRing | None:
    directory = keys_dir(settings)
    files = sorted(directory.glob("*.key")) if directory.is_dir() else []
    if not files:
        if not create:
            return None
        files = _create_first_key(directory)
    keys = {}
    for f in files:
        if f.stat().st_mode & 0o077:
            raise KeyConfigError(f"KEK file {f} is readable by others than its owner: chmod 600 it")
        keys[_check_id(f.stem)] = _decode_key(f.stem, f.read_text(), str(f))
    current_file = directory / CURRENT_FILE
    current = current_file.read_text().strip() if current_file.exists() else ""
    if not current and len(keys) == 1:
        current = next(iter(keys))
    if current not in keys:
        raise KeyConfigError(f"{current_file} names KEK {current!r}, which is not in {directory}")
    return KeyRing(keys, current, f"embedded ({directory})")


def load_key_ring(settings: Settings, *, create: bool = True) -> KeyRing | None:
    """The configured KEKs, or the embedded ones (generated on first use when ``create``)."""
    if not settings.kek_files and not settings.kek_keys:
        return _embedded(settings, create=create)
    keys: dict[str, bytes] = {}
    for kid, path in _pairs(settings.kek_files, "kek_files"):
        p = Path(path)
        if not p.is_file():
            raise KeyConfigError(f"KEK file for {kid!r} not found: {p}")
        if p.stat().st_mode & 0o077:
            log.warning("KEK file %s is readable by others than its owner", p)
        keys[kid] = _decode_key(kid, p.read_text(), str(p))
    for kid, value in _pairs(settings.kek_keys, "kek_keys"):
        if kid in keys:
            raise KeyConfigError(f"KEK {kid!r} is configured twice")
        keys[kid] = _decode_key(kid, value, "kek_keys")
    current = settings.kek_current or (next(iter(keys)) if len(keys) == 1 else "")
    if current not in keys:
        raise KeyConfigError(
            f"kek_current {current!r} must name one of the configured KEKs ({', '.join(keys)})"
            if current
            else "several KEKs are configured: set kek_current to the one to wrap new data keys under"
        )
    return KeyRing(keys, current, "configuration")
