"""Sealed spool files: document bytes in flight on disk, never in plaintext (docs/storage.md).

A request that must hold a document on disk while it is handled (an ITI-41 MTOM attachment or inline
document, RAD-69's re-encoded copy) writes it through ``SpoolWriter``: AES-256-GCM under a random
256-bit key made for that one file and held only in memory (``SpoolFile.key``), so a leaked disk, a
backup of the spool or a crash dump of the file system shows no document bytes, and a file left by a
crash can never be read again (the key died with the process).

The layout is the one of stored documents (repository/crypto.py): a 16-byte header ("ISNC", version,
segment size, 7-byte random nonce prefix), then 1 MiB segments, each sealed with nonce = prefix ‖
index ‖ last flag and AAD = header ‖ index. The writer learns the length only at the end of the
stream, so it holds back one segment (1 MiB) until it knows whether another follows: the last flag
is then right, and memory stays bounded by one segment whatever the document's size. The reader
decrypts one segment at a time and can seek (pydicom reads a DICOM file out of order).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clearinghouse.segmented_aead import (
    HEADER,
    MAGIC,
    PREFIX_LEN,
    SEGMENT,
    TAG,
    VERSION,
    segment_count,
)
from clearinghouse.segmented_aead import aad as _aad
from clearinghouse.segmented_aead import nonce as _nonce


class SpoolTampered(OSError):
    """A spool file does not verify under its key: altered, truncated or not the file written."""


@dataclass(frozen=True)
class SpoolFile:
    """A sealed spool file and what reads it: the key exists only in this object."""

    path: Path
    key: bytes = field(repr=False)
    size: int

    def open(self) -> SpoolReader:
        return SpoolReader(self.path, self.key, self.size)


class SpoolWriter(io.RawIOBase):
    """A write-only file object that seals what is written into a new 0600 file in ``directory``.

    ``close()`` (or leaving the ``with``) seals the held-back last segment; ``spool`` is then the
    readable result. On an error the caller deletes ``path`` (``discard()``)."""

    def __init__(
        self, directory: Path, prefix: str = "spool-", suffix: str = ".sealed", segment: int = SEGMENT
    ) -> None:
        super().__init__()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(self._key)
        self._segment = segment
        self._header = HEADER.pack(MAGIC, VERSION, segment, os.urandom(PREFIX_LEN))
        self._prefix = self._header[-PREFIX_LEN:]
        self._buf = bytearray()
        self._index = 0
        self.size = 0
        self.spool: SpoolFile | None = None
        self._file.write(self._header)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a closed spool")
        n = len(data)
        self._buf += data
        self.size += n
        # Strictly more than one segment held: the first one is known not to be the last.
        if len(self._buf) > self._segment:
            start = 0
            with memoryview(self._buf) as view:  # sealed in place, without copying each segment out
                while len(self._buf) - start > self._segment:
                    self._seal(view[start : start + self._segment], last=False)
                    start += self._segment
            del self._buf[:start]
        return n

    def tell(self) -> int:
        return self.size

    def _seal(self, block: bytes | memoryview, *, last: bool) -> None:
        nonce, aad = _nonce(self._prefix, self._index, last), _aad(self._header, self._index)
        self._file.write(self._aead.encrypt(nonce, block, aad))
        self._index += 1

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._seal(bytes(self._buf), last=True)
            self._buf = bytearray()
            self._file.close()
            self.spool = SpoolFile(self.path, self._key, self.size)
        finally:
            self._file.close()
            super().close()

    def discard(self) -> None:
        """Stop writing and delete the file (a failed or aborted request)."""
        self._buf = bytearray()
        self._file.close()
        if not self.closed:
            super().close()
        self.path.unlink(missing_ok=True)


class SpoolReader(io.RawIOBase):
    """The verified plaintext of a sealed spool file, one decrypted segment in memory at a time."""

    def __init__(self, path: Path, key: bytes, size: int) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._aead = AESGCM(key)
        self.size = size
        header = self._file.read(HEADER.size)
        if len(header) != HEADER.size:
            self._file.close()
            raise SpoolTampered(f"spool file {path.name} is shorter than its header")
        magic, version, segment, prefix = HEADER.unpack(header)
        if magic != MAGIC or version != VERSION or not 1 <= segment <= 1 << 30:
            self._file.close()
            raise SpoolTampered(f"spool file {path.name} is not a sealed spool")
        self._header, self._segment, self._prefix = header, segment, prefix
        self._count = segment_count(size, segment)
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _plain_segment(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        plain_len = min(self._segment, self.size - index * self._segment)
        self._file.seek(HEADER.size + index * (self._segment + TAG))
        sealed = self._file.read(plain_len + TAG)
        last = index == self._count - 1
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, index, last), sealed, _aad(self._header, index))
        except InvalidTag:
            raise SpoolTampered(f"spool segment {index} does not verify") from None
        self._cached = (index, plain)
        return plain

    def read(self, n: int = -1) -> bytes:
        if self._pos >= self.size:
            return b""
        want = self.size - self._pos if n is None or n < 0 else min(n, self.size - self._pos)
        index, offset = divmod(self._pos, self._segment)
        if offset == 0 and want >= min(self._segment, self.size - self._pos):
            # A whole segment from its start (how the store reads the spool): no copy.
            plain = self._plain_segment(index)
            if len(plain) == want:
                self._pos += want
                return plain
        out = bytearray()
        while len(out) < want:
            index, offset = divmod(self._pos, self._segment)
            piece = self._plain_segment(index)[offset : offset + want - len(out)]
            out += piece
            self._pos += len(piece)
        return bytes(out)

    def readinto(self, buffer) -> int:  # noqa: ANN001 - any writable buffer
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        self._file.close()
        self._cached = None
        super().close()


def iter_plaintext(spool: SpoolFile, chunk: int = SEGMENT) -> Iterator[bytes]:
    """The plaintext in ``chunk``-sized pieces."""
    with spool.open() as reader:
        while block := reader.read(chunk):
            yield block
