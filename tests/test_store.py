"""The DocumentStore interface, the same checks on the filesystem store and on the S3 store against a
real S3-compatible server (moto), and the sealed layer on top of both."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import pytest
from s3_server import s3_server  # noqa: F401 - fixture

from clearinghouse.config import Settings
from repository import crypto
from repository.keys import load_key_ring
from repository.models import StoredDocument
from repository.store import FilesystemStore, StoredObjectMissing, read_exact
from repository.store_s3 import S3Location, S3Store, part_size_for
from repository.store_sealed import SealedStore, UnreadableDocument


@pytest.fixture(params=["filesystem", "s3"])
def store(request, tmp_path):
    if request.param == "filesystem":
        return FilesystemStore(tmp_path / "docs")
    server = request.getfixturevalue("s3_server")
    return S3Store(Settings(home=tmp_path, **server.settings()))


def _file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / f"spool-{os.urandom(4).hex()}"
    p.write_bytes(data)
    return p


def test_put_takes_over_the_file_and_reads_back_by_range(store, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 11)
    src = _file(tmp_path, data)
    key = store.put(src)
    assert not src.exists()
    assert store.exists(key) and store.size(key) == len(data)
    assert b"".join(store.chunks(key)) == data
    assert read_exact(store, key, 5, 100) == data[5:105]
    assert read_exact(store, key, len(data) - 3, 10) == data[-3:]
    assert all(len(c) <= 1 << 20 for c in store.chunks(key))
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # deleting what is gone is not an error
    with pytest.raises(StoredObjectMissing):
        store.size(key)
    with pytest.raises(StoredObjectMissing):
        b"".join(store.chunks(key))


def test_put_stream_stores_exactly_the_declared_length(store):
    data = os.urandom(12 * 1024 * 1024 + 5)  # over the 5 MiB part size: a multipart upload on S3
    chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))
    key = store.put_stream(chunks, len(data))
    assert store.size(key) == len(data)
    assert hashlib.sha256(b"".join(store.chunks(key))).digest() == hashlib.sha256(data).digest()
    empty = store.put_stream(iter(()), 0)
    assert store.size(empty) == 0 and b"".join(store.chunks(empty)) == b""


def test_keys_are_checked(store):
    with pytest.raises(KeyError):
        store.exists("../../etc/passwd")


def test_s3_location_and_part_size():
    assert S3Location.parse("s3://bucket/a/b/") == S3Location("bucket", "a/b/")
    assert S3Location.parse("s3://bucket") == S3Location("bucket", "")
    for bad in ("http://bucket/x", "s3:///x", "s3://b/x?y=1"):
        with pytest.raises(ValueError):
            S3Location.parse(bad)
    assert part_size_for(10, 16 << 20) == 16 << 20
    assert part_size_for(10, 1) == 5 << 20  # S3's minimum part
    big = part_size_for(500 << 30, 16 << 20)  # 500 GiB would need more than 10,000 parts of 16 MiB
    assert big * 10000 >= 500 << 30 and big % (1 << 20) == 0


def test_s3_endpoint_must_be_http_or_https(tmp_path):
    with pytest.raises(ValueError, match="s3_endpoint"):
        S3Store(Settings(home=tmp_path, store_url="s3://b/p", s3_endpoint="ftp://host"))


# --- the sealed layer ---


def _row(at_rest, data: bytes, uid: str = "1.2.3") -> StoredDocument:
    return StoredDocument(
        unique_id=uid,
        size=len(data),
        sha1=hashlib.sha1(data).hexdigest(),
        mime_type="application/octet-stream",
        store_key=at_rest.key,
        created_at=dt.datetime.now(dt.UTC),
        encryption=at_rest.encryption,
        kek_id=at_rest.kek_id,
        wrapped_dek=at_rest.wrapped_dek,
    )


def _flip(store, key: str, offset: int) -> None:
    """Rewrite the stored object with one bit changed, through the store itself."""
    raw = bytearray(b"".join(store.chunks(key)))
    raw[offset] ^= 0x01
    new = store.put_stream([bytes(raw)], len(raw))
    if isinstance(store, FilesystemStore):
        os.replace(store._path(new), store._path(key))
    else:
        store.client.copy_object(
            store.location.bucket, store._name(key), _copy_source(store.location.bucket, store._name(new))
        )


def _copy_source(bucket: str, name: str):  # noqa: ANN202
    from minio.commonconfig import CopySource

    return CopySource(bucket, name)


def test_sealed_store_encrypts_and_verifies(store, tmp_path):
    ring = load_key_ring(Settings(home=tmp_path))
    alarms: list[tuple[str, str]] = []
    sealed = SealedStore(store, ring, preverify_bytes=1 << 20, alarm=lambda u, r: alarms.append((u, r)))
    data = os.urandom(3 * crypto.SEGMENT + 100)
    at_rest = sealed.put(_file(tmp_path, data), len(data))
    assert at_rest.encryption == crypto.SCHEME and at_rest.kek_id == ring.current
    assert store.size(at_rest.key) == crypto.sealed_size(len(data))
    assert data[:64] not in read_exact(store, at_rest.key, 0, 1 << 20)
    row = _row(at_rest, data)
    assert b"".join(sealed.plaintext(row)) == data
    plain = sealed.to_file(row, tmp_path / "spool")
    assert plain.read_bytes() == data
    assert alarms == []

    # A middle segment altered: the up-front checks (length, first and last segment) pass, the stream
    # releases the segments before it and then fails; the alarm is raised.
    offset, _ = crypto.segment_span(1, len(data))
    _flip(store, at_rest.key, offset + 10)
    source = sealed.open(row)
    released = []
    with pytest.raises(UnreadableDocument) as err:
        for block in source():
            released.append(block)
    assert err.value.tampered and b"".join(released) == data[: crypto.SEGMENT]
    assert alarms and alarms[-1][0] == "1.2.3"

    # The last segment altered: refused before anything is released.
    offset, _ = crypto.segment_span(3, len(data))
    _flip(store, at_rest.key, offset + 1)
    with pytest.raises(UnreadableDocument):
        sealed.open(row)


def test_sealed_store_refuses_a_wrong_length_or_a_wrapped_key_of_another_document(store, tmp_path):
    ring = load_key_ring(Settings(home=tmp_path))
    sealed = SealedStore(store, ring)
    a, b = os.urandom(1000), os.urandom(1000)
    ra, rb = sealed.put(_file(tmp_path, a), len(a)), sealed.put(_file(tmp_path, b), len(b))
    row = _row(ra, a)
    row.wrapped_dek = rb.wrapped_dek
    with pytest.raises(UnreadableDocument, match="does not verify"):
        sealed.open(row)
    row = _row(ra, a)
    row.size = 999
    with pytest.raises(UnreadableDocument, match="bytes where"):
        sealed.open(row)


def test_plaintext_documents_from_before_encryption_are_served_and_checked(store, tmp_path):
    plain_store = SealedStore(store, None, encrypt=False)
    data = os.urandom(2 * crypto.SEGMENT)
    at_rest = plain_store.put(_file(tmp_path, data), len(data))
    assert at_rest.encryption == "none" and at_rest.wrapped_dek is None
    assert b"".join(store.chunks(at_rest.key)) == data
    sealed = SealedStore(store, load_key_ring(Settings(home=tmp_path)), preverify_bytes=0)
    row = _row(at_rest, data)
    assert b"".join(sealed.plaintext(row)) == data
    _flip(store, at_rest.key, 5)
    released = []
    with pytest.raises(UnreadableDocument):
        for block in sealed.open(row)():
            released.append(block)
    assert len(b"".join(released)) < len(data)  # the last chunk is held back until the hash matches
