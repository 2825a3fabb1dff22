"""S3 bucket creation is idempotent: processes starting at once on an empty store all start.

Against the moto S3 server the tests run (tests/s3_server.py), in a region other than us-east-1:
there S3 answers a second CreateBucket of one's own bucket with BucketAlreadyOwnedByYou (us-east-1
answers 200 for historical reasons, which would hide the race).
"""

from __future__ import annotations

import threading
import uuid
from urllib.parse import urlsplit

import pytest
from minio import Minio
from minio.error import S3Error
from s3_server import s3_server  # noqa: F401 - fixture

from clearinghouse.config import Settings
from repository.store_s3 import S3Store, ensure_bucket

REGION = "eu-west-1"


def _settings(server, tmp_path, bucket: str) -> Settings:
    overrides = server.settings() | {"store_url": f"s3://{bucket}/docs", "s3_region": REGION}
    return Settings(home=tmp_path, **overrides)


def _client(server) -> Minio:
    return Minio(
        urlsplit(server.endpoint).netloc,
        access_key="test-access",
        secret_key="test-secret",
        secure=False,
        region=REGION,
    )


class _LosesTheRace(Minio):
    """A real client whose HEAD is followed, before its CreateBucket, by another process's CreateBucket:
    the window two starting processes race in, made to happen every time."""

    def __init__(self, competitor: Minio, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.competitor = competitor
        self.raced = False

    def bucket_exists(self, bucket_name: str) -> bool:
        exists = super().bucket_exists(bucket_name)
        if not exists and not self.raced:
            self.raced = True
            self.competitor.make_bucket(bucket_name, location=REGION)
        return exists


def test_server_answers_a_second_create_with_already_owned(s3_server):  # noqa: F811
    # The premise of the tests below: without handling, the loser of the race gets this error.
    client, bucket = _client(s3_server), f"b-{uuid.uuid4().hex[:12]}"
    client.make_bucket(bucket, location=REGION)
    with pytest.raises(S3Error) as caught:
        client.make_bucket(bucket, location=REGION)
    assert caught.value.code == "BucketAlreadyOwnedByYou"


def test_losing_the_create_race_is_success(s3_server):  # noqa: F811
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    netloc = urlsplit(s3_server.endpoint).netloc
    client = _LosesTheRace(
        _client(s3_server), netloc, access_key="test-access", secret_key="test-secret", secure=False, region=REGION
    )
    assert ensure_bucket(client, bucket, REGION) is False
    assert client.raced and client.bucket_exists(bucket)
    # Idempotent afterwards too, and the one that finds no bucket creates it.
    assert ensure_bucket(client, bucket, REGION) is False
    other = f"b-{uuid.uuid4().hex[:12]}"
    assert ensure_bucket(_client(s3_server), other, REGION) is True


def test_stores_starting_together_on_an_empty_bucket_all_start(s3_server, tmp_path):  # noqa: F811
    for _ in range(5):
        bucket = f"b-{uuid.uuid4().hex[:12]}"
        starters = 6
        barrier = threading.Barrier(starters)
        stores: list[S3Store] = []
        failures: list[BaseException] = []

        def start(
            bucket: str = bucket,
            barrier: threading.Barrier = barrier,
            stores: list[S3Store] = stores,
            failures: list[BaseException] = failures,
        ) -> None:
            barrier.wait()
            try:
                stores.append(S3Store(_settings(s3_server, tmp_path, bucket)))
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

        threads = [threading.Thread(target=start) for _ in range(starters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert failures == []
        assert len(stores) == starters
        # All of them use the one bucket.
        key = stores[0].put_stream(iter([b"shared"]), 6)
        assert b"".join(stores[-1].chunks(key)) == b"shared"
