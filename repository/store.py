"""Where document bytes live: one interface (DocumentStore), a filesystem store (the embedded default)
and an S3-compatible one (repository/store_s3.py). Stores hold opaque bytes; encryption at rest is
the layer above them (repository/store_sealed.py), so every store holds only sealed objects."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20


class StoredObjectMissing(LookupError):
    """The store holds no object under this key."""


class DocumentStore(Protocol):
    def put(self, source: Path) -> str:
        """Take over the file at ``source`` (it is moved or uploaded, then gone) and return its new key."""

    def put_stream(self, chunks: Iterable[bytes], length: int) -> str:
        """Store exactly ``length`` bytes from ``chunks`` and return the new key; memory O(chunk)."""

    def chunks(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The stored bytes (from ``offset``, ``length`` of them or to the end), in chunks."""

    def size(self, key: str) -> int:
        """The object's length; StoredObjectMissing when there is none."""

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...


def new_key() -> str:
    return uuid.uuid4().hex


def check_key(key: str) -> str:
    if len(key) != 32 or any(c not in "0123456789abcdef" for c in key):
        raise KeyError(f"invalid store key {key!r}")
    return key


def read_exact(store: DocumentStore, key: str, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` (fewer only when the object ends first)."""
    return b"".join(store.chunks(key, offset, length))


class FilesystemStore:
    """Documents as files under ``root``, in two levels of fan-out so no directory grows huge."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def put(self, source: Path) -> str:
        key = new_key()
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # The spool file was written without fsync; make it durable before the row that names it commits.
        with open(source, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(source, target)
        except OSError:
            # Spool and store on different filesystems: copy, fsync, then drop the spool file.
            with open(source, "rb") as src:
                self._write(target, iter(lambda: src.read(CHUNK), b""), None)
            source.unlink()
        os.chmod(target, 0o600)
        return key

    def put_stream(self, chunks: Iterable[bytes], length: int) -> str:
        key = new_key()
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._write(target, chunks, length)
        return key

    @staticmethod
    def _write(target: Path, chunks: Iterable[bytes], length: int | None) -> None:
        tmp = target.with_name(target.name + ".partial")
        written = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as dst:
                for block in chunks:
                    dst.write(block)
                    written += len(block)
                dst.flush()
                os.fsync(dst.fileno())
            if length is not None and written != length:
                raise ValueError(f"store: {written} bytes written where {length} were declared")
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def chunks(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        try:
            fh = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise StoredObjectMissing(key) from None
        return self._read(fh, offset, length)

    @staticmethod
    def _read(fh, offset: int, length: int | None) -> Iterator[bytes]:  # noqa: ANN001
        with fh:
            fh.seek(offset)
            left = length
            while left is None or left > 0:
                block = fh.read(CHUNK if left is None else min(CHUNK, left))
                if not block:
                    return
                if left is not None:
                    left -= len(block)
                yield block

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise StoredObjectMissing(key) from None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return self._path(key).exists()
