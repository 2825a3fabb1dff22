"""Chunked AEAD for documents at rest: AES-256-GCM over fixed-size segments (the STREAM construction).

Layout of a sealed object::

    header  = "ISNC" | version (1 byte) | segment size (4 bytes, big endian) | nonce prefix (7 random bytes)
    segment = AES-256-GCM(dek, nonce = prefix | index (4 bytes) | last flag (1 byte),
                          aad = header | index (8 bytes), plaintext segment)      (ciphertext + 16-byte tag)

Every segment is authenticated on its own, so a reader can release a segment's plaintext as soon as
that segment verifies, with memory bounded by one segment. The index in nonce and AAD stops
reordering; the last-segment flag stops truncation at a segment boundary (an early segment never
verifies as the last one) and extension; the header in the AAD stops swapping the parameters. A
document of n plaintext bytes has ``max(1, ceil(n / segment))`` segments (an empty document is one
empty final segment), so its sealed length is known from n alone: see docs/decisions.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

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
from clearinghouse.segmented_aead import (
    sealed_size as sealed_size,  # re-exported: the sealed store sizes objects with it
)

SCHEME = "aes-256-gcm-stream-v1"
PLAINTEXT = "none"
MAX_SEGMENTS = 1 << 32
DEK_LEN = 32


class TamperedDocument(Exception):
    """The stored ciphertext does not verify: it was altered, truncated, extended or reordered."""


@dataclass(frozen=True)
class Header:
    segment: int
    prefix: bytes

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.segment, self.prefix)

    @staticmethod
    def unpack(raw: bytes) -> Header:
        if len(raw) != HEADER.size:
            raise TamperedDocument(f"sealed object is shorter than its {HEADER.size}-byte header")
        magic, version, segment, prefix = HEADER.unpack(raw)
        if magic != MAGIC or version != VERSION or not 1 <= segment <= 1 << 30:
            raise TamperedDocument("sealed object header is not a known format")
        return Header(segment, prefix)


def new_dek() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def segment_span(index: int, plain_size: int, segment: int = SEGMENT) -> tuple[int, int]:
    """(offset in the sealed object, sealed length) of segment ``index``."""
    plain_len = min(segment, plain_size - index * segment)
    return HEADER.size + index * (segment + TAG), plain_len + TAG


def seal(source: BinaryIO, plain_size: int, dek: bytes, segment: int = SEGMENT) -> Iterator[bytes]:
    """The sealed object, header first then one sealed segment at a time, of exactly ``plain_size``
    bytes read from ``source`` (a short or long source is an error, never a silently wrong object)."""
    count = segment_count(plain_size, segment)
    if count > MAX_SEGMENTS:
        raise ValueError(f"document of {plain_size} bytes exceeds the sealed format's {MAX_SEGMENTS} segments")
    aead = AESGCM(dek)
    header = Header(segment, os.urandom(PREFIX_LEN)).pack()
    yield header
    prefix = header[-PREFIX_LEN:]
    for index in range(count):
        want = min(segment, plain_size - index * segment)
        block = source.read(want)
        if len(block) != want:
            raise ValueError(f"source ended at segment {index}: {len(block)} of {want} bytes")
        last = index == count - 1
        yield aead.encrypt(_nonce(prefix, index, last), block, _aad(header, index))
    if source.read(1):
        raise ValueError(f"source holds more than the {plain_size} bytes declared")


def open_segment(dek: bytes, header_raw: bytes, index: int, last: bool, sealed: bytes) -> bytes:
    """Verify and decrypt one sealed segment."""
    header = Header.unpack(header_raw)
    try:
        return AESGCM(dek).decrypt(_nonce(header.prefix, index, last), sealed, _aad(header_raw, index))
    except InvalidTag:
        raise TamperedDocument(f"segment {index} does not verify") from None


class _Exact:
    """Cuts a chunk stream into pieces of requested lengths, holding at most one piece."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = bytearray()

    def take(self, n: int) -> bytes:
        while len(self._buf) < n:
            block = next(self._it, None)
            if block is None:
                break
            self._buf += block
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def at_end(self) -> bool:
        return not self.take(1)


def open_stream(chunks: Iterable[bytes], dek: bytes, plain_size: int) -> Iterator[bytes]:
    """The plaintext of a sealed object read from ``chunks``, one verified segment at a time.

    Nothing of a segment is yielded before the whole segment verifies; a bad segment, a short or
    long object raise TamperedDocument at that point, after the verified segments before it."""
    reader = _Exact(chunks)
    header_raw = reader.take(HEADER.size)
    header = Header.unpack(header_raw)
    aead = AESGCM(dek)
    count = segment_count(plain_size, header.segment)
    for index in range(count):
        _, length = segment_span(index, plain_size, header.segment)
        sealed = reader.take(length)
        if len(sealed) != length:
            raise TamperedDocument(f"sealed object is truncated in segment {index}")
        last = index == count - 1
        try:
            plain = aead.decrypt(_nonce(header.prefix, index, last), sealed, _aad(header_raw, index))
        except InvalidTag:
            raise TamperedDocument(f"segment {index} does not verify") from None
        if last and not reader.at_end():
            raise TamperedDocument("sealed object continues past its last segment")
        yield plain
