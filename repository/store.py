"""Where document bytes live. One interface; the filesystem store is the embedded default."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20


class DocumentStore(Protocol):
    def put(self, source: Path) -> str:
        """Take over the file at ``source`` (it is moved, not copied) and return its new key."""

    def chunks(self, key: str) -> Iterator[bytes]:
        """The stored bytes, in chunks, without loading the document whole."""

    def size(self, key: str) -> int: ...

    def path_hint(self, key: str) -> Path | None:
        """A local path to stream from, when the store has one."""

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...


class FilesystemStore:
    """Documents as files under ``root``, in two levels of fan-out so no directory grows huge."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if len(key) != 32 or any(c not in "0123456789abcdef" for c in key):
            raise KeyError(f"invalid store key {key!r}")
        return self.root / key[:2] / key[2:4] / key

    def put(self, source: Path) -> str:
        key = uuid.uuid4().hex
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # The spool file was written without fsync; make it durable before the row that names it commits.
        with open(source, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(source, target)
        except OSError:
            # Spool and store on different filesystems: copy, fsync, then drop the spool file.
            tmp = target.with_suffix(".partial")
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while block := src.read(CHUNK):
                    dst.write(block)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
            source.unlink()
        os.chmod(target, 0o600)
        return key

    def chunks(self, key: str) -> Iterator[bytes]:
        with open(self._path(key), "rb") as fh:
            while block := fh.read(CHUNK):
                yield block

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def path_hint(self, key: str) -> Path | None:
        return self._path(key)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return self._path(key).exists()
