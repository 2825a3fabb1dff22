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
    # Edge and PHR roles: the session whose recorded transactions the scenarios judge, in the database
    # of the clearinghouse that recorded them.
    g.addoption("--conformance-session", help="edge/PHR roles: the conformance session to judge")
    g.addoption(
        "--conformance-timeout",
        type=float,
        default=300.0,
        help="edge/PHR roles: seconds a scenario waits for the system under test to act (default 300)",
    )
    g.addoption("--ch-home", help="edge/PHR roles: the clearinghouse's data directory (default: configured)")
    g.addoption("--ch-database-url", help="edge/PHR roles: the clearinghouse's database (default: configured)")


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


# A process that runs the suite in process (our own tests) hands over its clearinghouse's database here.
DATABASE_KEY = pytest.StashKey[object]()


class InProcessDatabase:
    """A pytest plugin object: ``pytest.main([...], plugins=[InProcessDatabase(sessionmaker)])``."""

    def __init__(self, sessions: object) -> None:
        self.sessions = sessions

    def pytest_configure(self, config: pytest.Config) -> None:
        config.stash[DATABASE_KEY] = self.sessions


@pytest.fixture(scope="session")
def conformance_db(request: pytest.FixtureRequest):  # noqa: ANN201 - a sessionmaker
    """The database holding the recorded sessions (the clearinghouse's own)."""
    from clearinghouse import db
    from clearinghouse.config import load_settings

    handed_over = request.config.stash.get(DATABASE_KEY, None)
    if handed_over is not None:
        yield handed_over
        return
    opt = request.config.getoption
    settings = load_settings({"home": opt("--ch-home"), "database_url": opt("--ch-database-url")})
    engine = db.make_engine(settings.effective_database_url)
    yield db.session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def conformance_session_id(request: pytest.FixtureRequest) -> str:
    sid = request.config.getoption("--conformance-session")
    if not sid:
        raise pytest.UsageError(
            "the edge and PHR roles need --conformance-session ID (clearinghouse conformance session new)"
        )
    return sid


@pytest.fixture(scope="session")
def conformance_timeout(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("--conformance-timeout"))
