"""The retention sweep of a repository whose registry is another process (CLEARINGHOUSE_REGISTRY_URL):
it asks that registry by ITI-18 GetDocuments which stored documents a DocumentEntry still names, over
mutual TLS, and removes the others with ITI-86; it removes nothing when the registry cannot answer.

A registry node runs as a real `clearinghouse serve` process; the repository node runs in this process
(conftest.running_instance) with registry_url pointing at it, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import edge
import pytest
import xds_samples as xs
from conftest import PG_URL, running_instance
from serve_output import keep_draining, port_of, wait_for_endpoints
from sqlalchemy import select, text

from clearinghouse import db
from clearinghouse.mllp import MllpClient
from clearinghouse.retention import RemoteRegistryLookup
from clearinghouse.retention_policy import RETENTION_SLOT
from clearinghouse.tls import client_context
from clearinghouse.xmlsafe import NS, qname
from repository.models import StoredDocument

CLI = [sys.executable, "-m", "clearinghouse.cli"]
NODE_REPOSITORY_ID = "1.3.6.1.4.1.21367.2026.1.77"  # not the registry node's own repository


@dataclass
class RegistryNode:
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen
    registry_url: str
    feed_port: int

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, *args], env=self.env, capture_output=True, text=True, timeout=120)

    def participant(self, name: str, *roles: str) -> tuple[Path, Path, Path]:
        out = self.home.parent / f"{name}-identity"
        role_args = [a for r in roles for a in ("--role", r)]
        done = self.cli("participants", "add", name, *role_args, "--out", str(out))
        assert done.returncode == 0, done.stderr
        return out / f"{name}.cert.pem", out / f"{name}.key.pem", out / "ca.cert.pem"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(60) == 0


@pytest.fixture
def registry_node(tmp_path: Path, backend: str) -> Iterator[RegistryNode]:
    home = tmp_path / "registry-node" / "home"
    env = {
        **os.environ,
        "CLEARINGHOUSE_HOME": str(home),
        "CLEARINGHOUSE_RETENTION_PURGE_INTERVAL_SECONDS": "0",  # purged below, when the test says
    }
    schema = None
    if backend == "postgresql":
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = db.make_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        env["CLEARINGHOUSE_DATABASE_URL"] = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    args = [*CLI, "serve", "--https-port", "0", "--feed-port", "0", "--pix-port", "0"]
    args += ["--syslog-tls-port", "0", "--syslog-udp-port", "0", "--console-port", "-1"]
    log_path = tmp_path / "registry-node.log"
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=log_path.open("wb"), text=True)
    try:
        detail = lambda: log_path.read_text()[-5000:]  # noqa: E731
        endpoints = wait_for_endpoints(proc, 120, name="registry node", exit_detail=detail)
        keep_draining(proc)
        (registry_url,) = [u for u in endpoints.values() if u.endswith("/xds/registry")]
        node = RegistryNode(home, env, proc, registry_url, port_of(endpoints, "patient identity feed"))
        yield node
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        if schema is not None:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def _report(title: str) -> tuple[xs.DocSpec, bytes]:
    data = f"FINDINGS of {title}: {uuid.uuid4()}\n".encode()
    spec = xs.DocSpec(
        unique_id=xs.new_oid(),
        mime_type="text/plain",
        content=data,
        title=title,
        class_code=xs.CLASS_REPORTS,
        format_code=edge.FORMAT_TEXT_REPORT,
    )
    return spec, data


def _submit(repository_node, patient: str, specs: list[xs.DocSpec], retention_days: str | None = None) -> None:
    request = xs.provide_and_register(patient, specs)
    if retention_days is not None:
        package = xs.find(request, "RegistryPackage", xs.submission_set_id(request))
        slot = etree_slot(retention_days)
        package.insert(0, slot)
    reply = repository_node.soap("edge", "/xds/repository").call(
        edge.ITI41, request, attachments=edge.to_mtom(request), mtom=True
    )
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)


def etree_slot(value: str):  # noqa: ANN201
    from lxml import etree

    slot = etree.Element(qname("rim", "Slot"), name=RETENTION_SLOT)
    etree.SubElement(etree.SubElement(slot, qname("rim", "ValueList")), qname("rim", "Value")).text = value
    return slot


def _held(repository_node) -> set[str]:
    with repository_node.ch.sessions() as session:
        return set(session.scalars(select(StoredDocument.unique_id)))


def _retrieve_errors(repository_node, uid: str) -> list[str]:
    reply = edge.retrieve(repository_node.soap("phr", "/xds/repository"), [uid], NODE_REPOSITORY_ID)
    try:
        return [code for code, _ in edge.errors_of(reply.body.find("rs:RegistryResponse", NS))]
    finally:
        reply.close()


def test_sweep_asks_the_remote_registry_and_removes_only_what_it_no_longer_names(registry_node, backend, tmp_path):
    node_cert, node_key, registry_ca = registry_node.participant("repository-node", "source", "consumer")
    feeder = registry_node.participant("site-feed", "source")
    overrides = {
        "registry_url": registry_node.registry_url,
        "registry_ca": str(registry_ca),
        "client_cert": str(node_cert),
        "client_key": str(node_key),
        "repository_unique_id": NODE_REPOSITORY_ID,
        "retention_purge_interval_seconds": 0,
    }
    with running_instance(tmp_path / "repository-node", backend, **overrides) as repo:
        # Two patients, so that one GetDocuments naming all the documents spans two patients.
        patients = [edge.patient_for(edge.new_access_code(), "19700412") for _ in range(2)]
        mllp = MllpClient("localhost", registry_node.feed_port, client_context(feeder[2], feeder[0], feeder[1]))
        try:
            for p in patients:
                assert b"MSA|AA|" in mllp.send(edge.feed_message(p))
        finally:
            mllp.close()
        (a, _), (b, _) = _report("short-lived A"), _report("short-lived B")
        c, c_data = _report("kept C")
        _submit(repo, patients[0], [a, b], retention_days="1")
        _submit(repo, patients[1], [c])
        assert _held(repo) == {a.unique_id, b.unique_id, c.unique_id}

        coordinator = repo.ch.retention.coordinator  # type: ignore[union-attr]
        lookup = coordinator.registered
        assert isinstance(lookup, RemoteRegistryLookup)
        later = datetime.now(UTC) + timedelta(days=2)  # past the sweep's grace period and A's and B's expiry

        # Still registered at the registry node: the sweep keeps everything.
        report = coordinator.run(later)
        assert report.ok, report.errors
        assert report.swept == 0 and _held(repo) == {a.unique_id, b.unique_id, c.unique_id}
        # The registry refused the batch spanning two patients (XDSResultNotSinglePatient): it was halved.
        assert lookup.queries > 1

        # The registry node purges its expired submission (metadata only: the bytes are this node's).
        purged = registry_node.cli("purge", "--now", later.isoformat())
        assert purged.returncode == 0, purged.stdout + purged.stderr
        assert "left to them: 2" in purged.stdout

        report = coordinator.run(later)
        assert report.ok, report.errors
        assert report.swept == 2
        assert _held(repo) == {c.unique_id}
        assert _retrieve_errors(repo, a.unique_id) == ["XDSDocumentUniqueIdError"]
        got = edge.retrieve(repo.soap("phr", "/xds/repository"), [c.unique_id], NODE_REPOSITORY_ID)
        try:
            assert edge.retrieved_documents(got) == {c.unique_id: c_data}
        finally:
            got.close()

        # The registry node is gone: the sweep cannot ask, reports it, and removes nothing.
        registry_node.stop()
        report = coordinator.run(datetime.now(UTC) + timedelta(days=60))
        assert not report.ok and any("sweep" in e and "GetDocuments" in e for e in report.errors), report.errors
        assert report.swept == 0 and _held(repo) == {c.unique_id}
