"""pytest plugin of the conformance suite: options naming the system under test, and its fixture.

``pytest -p conformance.plugin features/...`` (or ``clearinghouse conformance run``) with
``--ch-target https://host:port --ch-feed mllp+tls://host:port --ch-ca ... --ch-source-cert ...``
tests a remote clearinghouse; without ``--ch-target`` the suite starts this project's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.local import local_clearinghouse
from conformance.target import Identity, Target

DEFAULT_OID = "1.3.6.1.4.1.19376.3.840.1.1.1"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("conformance", "ISN conformance suite: the system under test")
    g.addoption("--ch-target", help="clearinghouse HTTPS base URL (default: start this project's own)")
    g.addoption("--ch-feed", help="its ITI-8 feed, mllp+tls://host:port")
    g.addoption("--ch-ca", help="CA certificate of the clearinghouse's server certificate")
    g.addoption("--ch-cert", help="one certificate registered at the target with roles source and consumer")
    g.addoption("--ch-key")
    g.addoption("--ch-source-cert", help="certificate registered at the target with role source")
    g.addoption("--ch-source-key")
    g.addoption("--ch-consumer-cert", help="certificate registered at the target with role consumer")
    g.addoption("--ch-consumer-key")
    g.addoption("--ch-affinity-domain-oid", default=DEFAULT_OID)
    g.addoption("--ch-repository-unique-id", default="1.3.6.1.4.1.21367.2026.1.1")


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    opt = request.config.getoption
    if not opt("--ch-target"):
        with local_clearinghouse(tmp_path_factory.mktemp("conformance-target")) as local:
            yield local
        return

    def identity(role: str) -> Identity:
        cert, key = opt(f"--ch-{role}-cert") or opt("--ch-cert"), opt(f"--ch-{role}-key") or opt("--ch-key")
        if not cert or not key:
            raise pytest.UsageError(f"--ch-target needs --ch-cert/--ch-key or --ch-{role}-cert/--ch-{role}-key")
        return Identity(Path(cert), Path(key))

    missing = [o for o in ("--ch-feed", "--ch-ca") if not opt(o)]
    if missing:
        raise pytest.UsageError(f"--ch-target needs {', '.join(missing)}")
    yield Target(
        base_url=opt("--ch-target"),
        feed_url=opt("--ch-feed"),
        ca=Path(opt("--ch-ca")),
        source=identity("source"),
        consumer=identity("consumer"),
        affinity_domain_oid=opt("--ch-affinity-domain-oid"),
        repository_unique_id=opt("--ch-repository-unique-id"),
        spool=tmp_path_factory.mktemp("conformance-spool"),
    )
