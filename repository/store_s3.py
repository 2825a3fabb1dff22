"""The S3-compatible document store (MinIO, or any S3 service) through the ``minio`` client.

Selected by ``store_url = s3://BUCKET/PREFIX``. Objects are written with a known length (the sealed
size is known before the first byte, see repository/crypto.py), as one PUT when small and as a
multipart upload of ``s3_part_size`` parts otherwise; the client buffers one part at a time, so
memory is bounded by the part size, never by the document. Reads are ranged GETs streamed in chunks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import S3Error

from clearinghouse.config import Settings
from repository.store import CHUNK, StoredObjectMissing, check_key, new_key

log = logging.getLogger("repository.store_s3")

MIN_PART = 5 * 1024 * 1024  # S3's smallest multipart part
MAX_PARTS = 10000  # S3's most parts per upload
NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @staticmethod
    def parse(url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"store_url {url!r} is not s3://BUCKET[/PREFIX]")
        prefix = parts.path.strip("/")
        return S3Location(parts.netloc, prefix + "/" if prefix else "")


class _ChunkReader:
    """A read(n) view of a chunk iterator, as the minio client reads its upload source."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._rest = b""

    def read(self, n: int = -1) -> bytes:
        parts, have = [self._rest], len(self._rest)
        while n < 0 or have < n:
            block = next(self._it, None)
            if block is None:
                break
            parts.append(block)
            have += len(block)
        data = b"".join(parts)
        if 0 <= n < len(data):
            data, self._rest = data[:n], data[n:]
        else:
            self._rest = b""
        return data


def part_size_for(length: int, configured: int) -> int:
    """The configured part size, grown (in MiB steps) only when the object would need over 10,000 parts."""
    need = math.ceil(length / MAX_PARTS)
    size = max(configured, MIN_PART, need)
    return math.ceil(size / (1 << 20)) * (1 << 20)


def _client(settings: Settings) -> Minio:
    endpoint = settings.s3_endpoint or "https://s3.amazonaws.com"
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
        raise ValueError(f"s3_endpoint {endpoint!r} is not http(s)://HOST[:PORT]")
    if parts.scheme == "http":
        log.warning("s3_endpoint %s is plain HTTP: documents are sealed, credentials are not protected", endpoint)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=300),  # completing a large multipart upload takes a while
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=settings.s3_ca or certifi.where(),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        parts.netloc,
        access_key=settings.s3_access_key or None,
        secret_key=settings.s3_secret_key or None,
        secure=parts.scheme == "https",
        region=settings.s3_region or None,
        http_client=http,
    )


# Answers to CreateBucket when the bucket appeared meanwhile. S3 answers BucketAlreadyOwnedByYou when
# it is ours (outside us-east-1); BucketAlreadyExists means "someone's" and some S3-compatible services
# say it for our own bucket too, so that one is taken as success only once a HEAD shows we can use it.
ALREADY_OURS = "BucketAlreadyOwnedByYou"
ALREADY_SOMEONES = "BucketAlreadyExists"


class BucketUnavailable(RuntimeError):
    """The bucket exists but belongs to someone else (or these credentials may not use it)."""


def _usable(client: Minio, bucket: str) -> bool:
    try:
        return client.bucket_exists(bucket)
    except S3Error:  # AccessDenied: another account's bucket
        return False


def ensure_bucket(client: Minio, bucket: str, region: str | None) -> bool:
    """Create ``bucket`` unless it exists; True when this call created it.

    Idempotent, so that several processes starting at once on an empty store all succeed: the HEAD
    first keeps credentials without s3:CreateBucket working on a bucket made beforehand, and a
    CreateBucket lost to a concurrent one is success when the bucket is ours.
    """
    if client.bucket_exists(bucket):
        return False
    log.info("creating bucket %s", bucket)
    try:
        client.make_bucket(bucket, location=region)
    except S3Error as exc:
        if exc.code == ALREADY_OURS:
            log.info("bucket %s was created meanwhile by another process", bucket)
            return False
        if exc.code == ALREADY_SOMEONES and _usable(client, bucket):
            log.info("bucket %s was created meanwhile by another process", bucket)
            return False
        if exc.code == ALREADY_SOMEONES:
            raise BucketUnavailable(f"bucket {bucket!r} exists and is not usable with these credentials") from exc
        raise
    return True


class S3Store:
    """Documents as objects ``PREFIX/ab/KEY`` in one bucket (created on first start when absent)."""

    def __init__(self, settings: Settings) -> None:
        self.location = S3Location.parse(settings.store_url)
        self.client = _client(settings)
        self.part_size = settings.s3_part_size
        ensure_bucket(self.client, self.location.bucket, settings.s3_region or None)

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.location.prefix}{key[:2]}/{key}"

    def put(self, source: Path) -> str:
        length = source.stat().st_size
        with open(source, "rb") as fh:
            key = self.put_stream(iter(lambda: fh.read(CHUNK), b""), length)
        source.unlink()
        return key

    def put_stream(self, chunks: Iterable[bytes], length: int) -> str:
        key = new_key()
        self.client.put_object(
            self.location.bucket,
            self._name(key),
            _ChunkReader(chunks),  # type: ignore[arg-type]
            length,
            part_size=part_size_for(length, self.part_size),
            num_parallel_uploads=1,  # one part in memory at a time
        )
        return key

    def chunks(self, key: str, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        if length == 0:
            return iter(())
        try:
            response = self.client.get_object(self.location.bucket, self._name(key), offset=offset, length=length or 0)
        except S3Error as exc:
            if exc.code in NOT_FOUND:
                raise StoredObjectMissing(key) from None
            raise
        return self._stream(response)

    @staticmethod
    def _stream(response) -> Iterator[bytes]:  # noqa: ANN001
        try:
            yield from response.stream(CHUNK)
        finally:
            response.close()
            response.release_conn()

    def size(self, key: str) -> int:
        try:
            return self.client.stat_object(self.location.bucket, self._name(key)).size or 0
        except S3Error as exc:
            if exc.code in NOT_FOUND:
                raise StoredObjectMissing(key) from None
            raise

    def delete(self, key: str) -> None:
        self.client.remove_object(self.location.bucket, self._name(key))  # absent objects are not an error in S3

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except StoredObjectMissing:
            return False
        return True
