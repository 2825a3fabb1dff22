"""The on-disk layout of sealed bytes, shared by documents at rest (repository/crypto.py) and documents
in flight (clearinghouse/soap/spool.py), so that there is one definition of it.

A 16-byte header ("ISNC", version, segment size, 7-byte random nonce prefix), then the plaintext in
fixed-size segments, each sealed with AES-256-GCM under nonce = prefix ‖ segment index ‖ last flag and
AAD = header ‖ index (the STREAM construction: reordering, truncation and extension all fail to verify).
"""

from __future__ import annotations

import struct

MAGIC = b"ISNC"
VERSION = 1
SEGMENT = 1 << 20
TAG = 16
PREFIX_LEN = 7
HEADER = struct.Struct(">4sBI7s")


def nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def aad(header: bytes, index: int) -> bytes:
    return header + index.to_bytes(8, "big")


def segment_count(plain_size: int, segment: int = SEGMENT) -> int:
    return max(1, -(-plain_size // segment))


def sealed_size(plain_size: int, segment: int = SEGMENT) -> int:
    """The exact length of the sealed form of ``plain_size`` bytes."""
    return HEADER.size + plain_size + TAG * segment_count(plain_size, segment)
