"""Test harness: a real clearinghouse on real TLS sockets, on SQLite and (when
CLEARINGHOUSE_TEST_DATABASE_URL is set) on PostgreSQL, with participants holding real certificates."""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from clearinghouse import db, participants, pki
from clearinghouse.app import Clearinghouse, build, prepare_home
from clearinghouse.config import Settings
from clearinghouse.mllp import MllpClient
from clearinghouse.soap.client import SoapClient, https_client
from clearinghouse.tls import client_context

pytest_plugins = ["conformance.plugin"]

PG_URL = os.environ.get("CLEARINGHOUSE_TEST_DATABASE_URL", "")
# Servers the tests start as `clearinghouse serve` take an ephemeral PIX port, so that parallel test
# workers never compete for the default 8888.
os.environ.setdefault("CLEARINGHOUSE_PIX_PORT", "0")
# Likewise the ITI-20 syslog ports (defaults 6514 and 5514, which a host's own syslog daemon may hold).
os.environ.setdefault("CLEARINGHOUSE_SYSLOG_TLS_PORT", "0")
os.environ.setdefault("CLEARINGHOUSE_SYSLOG_UDP_PORT", "0")
# And the web console's port (default 9443).
os.environ.setdefault("CLEARINGHOUSE_CONSOLE_PORT", "0")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


@dataclass
class Identity:
    name: str
    cert: Path
    key: Path
    ca: Path

    def context(self) -> ssl.SSLContext:
        return client_context(self.ca, self.cert, self.key)


@dataclass
class Running:
    ch: Clearinghouse
    settings: Settings
    tmp: Path
    identities: dict[str, Identity]

    @property
    def https_port(self) -> int:
        return self.ch.https.port

    @property
    def feed_port(self) -> int:
        return self.ch.feed.port

    def url(self, path: str) -> str:
        return f"https://localhost:{self.https_port}{path}"

    def soap(self, who: str, path: str) -> SoapClient:
        ident = self.identities[who]
        return https_client(self.url(path), ident.ca, ident.cert, ident.key, spool_dir=self.tmp / "client-spool")

    def feed_client(self, who: str = "edge") -> MllpClient:
        return MllpClient("localhost", self.feed_port, self.identities[who].context())

    @property
    def pix_port(self) -> int:
        return self.ch.pix.server.port  # type: ignore[union-attr]

    def pix_client(self, who: str = "edge") -> MllpClient:
        return MllpClient("localhost", self.pix_port, self.identities[who].context())

    def add_identity(self, name: str, roles: list[str], **issue_kwargs: object) -> Identity:
        ca = pki.load_ca(self.settings.pki_dir)
        issued = pki.issue_certificate(ca, name, client=True, **issue_kwargs)  # type: ignore[arg-type]
        with db.transaction(self.ch.sessions) as session:
            participants.register(session, name, roles, issued.certificate, "issued")
        return self.write_identity(name, issued, ca.cert_pem)

    def write_identity(self, name: str, issued: pki.IssuedIdentity, ca_pem: bytes | None = None) -> Identity:
        out = self.tmp / "clients"
        out.mkdir(exist_ok=True)
        (out / f"{name}.cert.pem").write_bytes(issued.cert_pem)
        pki.write_private(out / f"{name}.key.pem", issued.key_pem)
        ident = Identity(name, out / f"{name}.cert.pem", out / f"{name}.key.pem", self.settings.ca_cert_path)
        self.identities[name] = ident
        return ident


def _engine_for(backend: str):  # noqa: ANN202
    if backend == "postgresql":
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = db.make_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        return db.make_engine(PG_URL, schema=schema), (admin, schema)
    return None, None


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@contextmanager
def running_instance(tmp: Path, backend: str = "sqlite", **overrides: object) -> Iterator[Running]:
    """A started clearinghouse on ephemeral ports with participants edge (source), phr (consumer), auditor."""
    overrides = {"syslog_tls_port": 0, "syslog_udp_port": 0, **overrides}
    overrides = {"pix_port": 0, **overrides}
    overrides = {"console_port": 0, **overrides}
    settings = Settings(home=tmp / "home", https_port=0, feed_port=0, http_threads=8, **overrides)  # type: ignore[arg-type]
    prepare_home(settings)
    engine, cleanup = _engine_for(backend)
    ch = build(settings, engine=engine)
    ch.start()
    running = Running(ch, settings, tmp, {})
    running.add_identity("edge", ["source"])
    running.add_identity("phr", ["consumer"])
    running.add_identity("auditor", ["auditor"])
    try:
        yield running
    finally:
        ch.stop()
        if cleanup:
            admin, schema = cleanup
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


@pytest.fixture(scope="session")
def clearinghouse(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_instance(tmp_path_factory.mktemp(f"ch-{backend}"), backend) as running:
        yield running
