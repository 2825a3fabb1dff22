"""A real S3-compatible server for the tests: moto's ThreadedMotoServer (HTTP on 127.0.0.1, any
credentials accepted), one per test module; see docs/storage.md for why this one."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from moto.server import ThreadedMotoServer


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def settings(self, prefix: str = "docs") -> dict[str, object]:
        """Settings overrides for a store in a bucket of its own on this server."""
        return {
            "store_url": f"s3://b-{uuid.uuid4().hex[:12]}/{prefix}",
            "s3_endpoint": self.endpoint,
            "s3_access_key": "test-access",
            "s3_secret_key": "test-secret",
            "s3_region": "us-east-1",
            "s3_part_size": 5 * 1024 * 1024,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
