"""Two `clearinghouse serve` processes on one PostgreSQL database and one shared home (PKI, document
store) behave as one clearinghouse, as they do behind a TCP load balancer (docs/operations.md,
"Several processes"): what one accepts, the other serves; the audit trail stays one unbroken chain;
a PIX notification is delivered once; a revocation holds on both.

Both processes start at the same moment on an empty database and an empty home, so their migrations
and the creation of the development PKI race as they would in a real rollout."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import edge
import pix_samples
import pytest
from atna_client import EDGE_NODE, send_tls, wait_for
from conftest import PG_URL, Identity
from prometheus_client.parser import text_string_to_metric_families
from serve_output import wait_for_endpoints
from sqlalchemy import Engine, func, select, text

from atna import store as atna_store
from atna.models import AuditRecord
from atna.record import Received, derive
from clearinghouse import audit, db, participants, pki
from clearinghouse.config import load_settings
from clearinghouse.mllp import MllpClient
from clearinghouse.soap.client import SoapClient, https_client
from clearinghouse.xmlsafe import NS
from pix_manager import admin as pix_admin

pytestmark = pytest.mark.skipif(not PG_URL, reason="needs PostgreSQL (CLEARINGHOUSE_TEST_DATABASE_URL)")

CLI = [sys.executable, "-m", "clearinghouse.cli"]
AUDIT_MESSAGES_PER_NODE = 150


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    endpoints: dict[str, str]
    log_path: Path

    def port(self, key: str) -> int:
        url = next(v for k, v in self.endpoints.items() if key in k)
        return int(url.rsplit(":", 1)[1].split("/", 1)[0])

    @property
    def https(self) -> str:
        return f"https://localhost:{self.port('ITI-41/ITI-43')}"


@dataclass
class Cluster:
    home: Path
    tmp: Path
    env: dict[str, str]
    a: Node
    b: Node
    identities: dict[str, Identity]
    engine: Engine

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=self.env)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def add(self, name: str, *roles: str) -> Identity:
        """A participant issued by the shared CA, as `participants add` does (without a process start)."""
        out = self.tmp / "clients"
        ca = pki.load_ca(self.home / "pki")
        issued = pki.issue_certificate(ca, name, client=True)
        with db.transaction(db.session_factory(self.engine)) as session:
            participants.register(session, name, list(roles), issued.certificate, "issued")
        out.mkdir(exist_ok=True)
        (out / f"{name}.cert.pem").write_bytes(issued.cert_pem)
        pki.write_private(out / f"{name}.key.pem", issued.key_pem)
        (out / "ca.cert.pem").write_bytes(ca.cert_pem)
        ident = Identity(name, out / f"{name}.cert.pem", out / f"{name}.key.pem", out / "ca.cert.pem")
        self.identities[name] = ident
        return ident

    def soap(self, node: Node, who: str, path: str) -> SoapClient:
        i = self.identities[who]
        return https_client(node.https + path, i.ca, i.cert, i.key, spool_dir=self.tmp / "client-spool")

    def mllp(self, port: int, who: str) -> MllpClient:
        return MllpClient("localhost", port, self.identities[who].context())


def _start(name: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    args = [*CLI, "serve", "--https-port", "0", "--feed-port", "0", "--pix-port", "0"]
    args += ["--syslog-tls-port", "0", "--syslog-udp-port", "0", "--console-port", "-1"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=log_path.open("wb"), text=True)


def _node(name: str, proc: subprocess.Popen, log_path: Path) -> Node:
    endpoints = wait_for_endpoints(proc, 120, name=name, exit_detail=lambda: log_path.read_text()[-5000:])
    return Node(name, proc, endpoints, log_path)


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("two-processes")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = db.make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    env = {
        **os.environ,
        "CLEARINGHOUSE_HOME": str(tmp / "shared-home"),
        "CLEARINGHOUSE_DATABASE_URL": url,
        # Production practice for several processes: the KEKs come from configuration, the same for all.
        "CLEARINGHOUSE_KEK_KEYS": f"kek-test={base64.b64encode(secrets.token_bytes(32)).decode()}",
        "CLEARINGHOUSE_KEK_CURRENT": "kek-test",
        "CLEARINGHOUSE_PIX_NOTIFY_RETRY_MS": "200",
        "CLEARINGHOUSE_LOG_LEVEL": "INFO",
    }
    procs: list[subprocess.Popen] = []
    engine: Engine | None = None
    try:
        env_a = {**env, "CLEARINGHOUSE_AUDIT_SPOOL_PATH": str(tmp / "a-spool"), "CLEARINGHOUSE_LOG_FORMAT": "json"}
        env_b = {**env, "CLEARINGHOUSE_AUDIT_SPOOL_PATH": str(tmp / "b-spool")}
        # Started together: both migrate an empty schema and find an empty home.
        procs = [_start("a", env_a, tmp / "a.log"), _start("b", env_b, tmp / "b.log")]
        a, b = (_node(name, proc, tmp / f"{name}.log") for name, proc in zip("ab", procs, strict=True))
        engine = db.make_engine(url)
        c = Cluster(tmp / "shared-home", tmp, env, a, b, {}, engine)
        c.add("edge", "source")
        c.add("phr", "consumer")
        c.add("auditor", "auditor")
        c.add("monitor", "monitor")
        yield c
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                assert p.wait(60) == 0, f"serve exited with {p.returncode}"
            except subprocess.TimeoutExpired:
                p.kill()
                raise
        if engine is not None:
            engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def both_started_on_one_pki_and_one_schema(cluster: Cluster) -> None:
    ca = (cluster.home / "pki" / "ca.cert.pem").read_bytes()
    for node in (cluster.a, cluster.b):
        ctx = ssl.create_default_context(cadata=ca.decode())
        ctx.load_cert_chain(cluster.identities["phr"].cert, cluster.identities["phr"].key)
        with urllib.request.urlopen(node.https + "/xds/registry?wsdl", context=ctx, timeout=30) as resp:
            assert resp.status == 200  # the server certificate chains to the one shared CA
    with cluster.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() >= 5


def an_edge_submits_through_one_and_a_phr_finds_and_retrieves_through_the_other(cluster: Cluster) -> None:
    patient = edge.patient_for(edge.new_access_code(), "19880808")
    feed = cluster.mllp(cluster.a.port("ITI-8 patient identity feed"), "edge")
    try:
        assert b"MSA|AA|" in feed.send(edge.feed_message(patient))
    finally:
        feed.close()
    st = edge.study(patient, samples=["CT_small.dcm", "MR_small.dcm"])
    reply = edge.submit(cluster.soap(cluster.a, "edge", "/xds/repository"), st)
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)

    found = edge.find_documents(cluster.soap(cluster.b, "phr", "/xds/registry"), patient)
    entries = found.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)
    assert len(entries) == len(st.contents)
    got = edge.retrieve(cluster.soap(cluster.b, "phr", "/xds/repository"), st.unique_ids)
    assert edge.retrieved_documents(got) == st.contents


def pix_feed_through_one_query_through_the_other_and_each_notification_delivered_once(cluster: Cluster) -> None:
    local_oid = pix_samples.new_oid()
    with cluster.engine.begin() as conn:
        pix_admin.set_domain(conn, local_oid, "HOSP2P")
    lock = threading.Lock()

    def slow_answer(_msg: object) -> str:
        # A slow consumer keeps each delivery in flight long enough for the other process's notifier
        # to look at the outbox meanwhile.
        with lock:
            time.sleep(0.05)
        return "AA"

    consumer = pix_samples.PixConsumer(cluster.home / "pki", answer=slow_answer).start()
    try:
        with cluster.engine.begin() as conn:
            pix_admin.subscribe(conn, "two-process-consumer", consumer.url, [])
        pix_a = cluster.mllp(cluster.a.port("PIX Manager"), "edge")
        fed = []
        try:
            for _ in range(20):
                local, affinity = pix_samples.uid(), pix_samples.uid()
                pid3 = f"{pix_samples.cx(local, local_oid, 'HOSP2P')}~{pix_samples.cx(affinity)}"
                ack = pix_a.send(pix_samples.adt("A01", pid3).encode())
                assert pix_samples.msa(ack) == "AA", ack
                fed.append((local, affinity))
        finally:
            pix_a.close()

        pix_b = cluster.mllp(cluster.b.port("PIX Manager"), "phr")
        try:
            local, affinity = fed[-1]
            answer = pix_b.send(pix_samples.qbp(pix_samples.cx(local, local_oid, "HOSP2P")))
        finally:
            pix_b.close()
        assert pix_samples.msa(answer) == "AA"
        assert affinity in "".join(pix_samples.pid3_of(answer))

        received = consumer.wait_for(len(fed), timeout=30)
        time.sleep(3)  # both notifiers poll every second: time for a duplicate to show up if there were one
        messages = [r.message for r in consumer.received]
        assert len(received) >= len(fed)
        assert len(messages) == len(set(messages)) == len(fed), "a notification was delivered twice"
    finally:
        consumer.stop()
        with cluster.engine.begin() as conn:
            pix_admin.unsubscribe(conn, "two-process-consumer")


def one_message_sent_to_both_at_once_is_applied_once(cluster: Cluster) -> None:
    """A sender that resends to the other node (the balancer moved it) while the first attempt is in
    flight: both get AA, the message is stored once, its identifiers are one patient."""
    domain = pix_samples.new_oid()
    with cluster.engine.begin() as conn:
        pix_admin.set_domain(conn, domain, "HOSPDUP")
    clients = [cluster.mllp(n.port("PIX Manager"), "edge") for n in (cluster.a, cluster.b)]
    answers: dict[tuple[int, int], bytes] = {}
    sent = []
    try:
        for i in range(15):
            control, local, affinity = pix_samples.uid(), pix_samples.uid(), pix_samples.uid()
            pid3 = f"{pix_samples.cx(local, domain, 'HOSPDUP')}~{pix_samples.cx(affinity)}"
            message = pix_samples.adt("A01", pid3, control=control).encode()
            barrier = threading.Barrier(2)

            def send(k: int, i: int = i, message: bytes = message, barrier: threading.Barrier = barrier) -> None:
                barrier.wait(10)
                answers[(i, k)] = clients[k].send(message)

            threads = [threading.Thread(target=send, args=(k,)) for k in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            sent.append((control, local, affinity))
    finally:
        for c in clients:
            c.close()
    assert all(pix_samples.msa(a) == "AA" for a in answers.values()), [
        a for a in answers.values() if b"MSA|AA" not in a
    ]
    with cluster.engine.connect() as conn:
        for control, local, affinity in sent:
            stored = conn.execute(text("SELECT count(*) FROM pix_message WHERE control_id = :c"), {"c": control})
            assert stored.scalar() == 1
            patients = conn.execute(
                text("SELECT count(DISTINCT patient_id) FROM pix_identifier WHERE value IN (:l, :a)"),
                {"l": local, "a": affinity},
            )
            assert patients.scalar() == 1


def audit_records_sent_to_both_form_one_unbroken_chain(cluster: Cluster) -> None:
    tag = uuid.uuid4().hex[:12]
    node = audit.AuditNode(source_id=f"EDGE-{tag}", site_id="SITE-A", hostname=EDGE_NODE.hostname, app_name="edge")

    def messages(n: int) -> list[bytes]:
        return [
            audit.syslog_message(
                audit.user_authentication(node=node, user=audit.Party(f"user-{i}", "10.0.0.1")).to_xml(), node
            )
            for i in range(n)
        ]

    def send(port: int) -> None:
        for _ in range(3):  # three connections per node, sent while the other node receives too
            send_tls(port, cluster.identities["edge"], messages(AUDIT_MESSAGES_PER_NODE // 3))

    threads = [
        threading.Thread(target=send, args=(n.port("ITI-20 audit record repository (syslog/TLS)"),))
        for n in (cluster.a, cluster.b)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    def stored() -> int | None:
        with cluster.engine.connect() as conn:
            n = conn.execute(
                select(func.count()).select_from(AuditRecord).where(AuditRecord.audit_source_id == node.source_id)
            ).scalar_one()
        return n if n == 2 * AUDIT_MESSAGES_PER_NODE else None

    wait_for(stored, 60, "every record sent to both processes to be stored")
    verify = cluster.cli("audit", "verify")
    assert "audit chain intact" in verify.stdout


def a_revocation_holds_on_both_processes_from_the_next_connection(cluster: Cluster) -> None:
    cluster.add("short-lived-phr", "consumer")
    for node in (cluster.a, cluster.b):
        client = cluster.soap(node, "short-lived-phr", "/xds/registry")
        edge.find_documents(client, edge.patient_for(edge.new_access_code(), "19700101"))
    with db.transaction(db.session_factory(cluster.engine)) as session:
        participants.revoke(session, "short-lived-phr")  # what `participants revoke` does, without a process start
    for node in (cluster.a, cluster.b):
        client = cluster.soap(node, "short-lived-phr", "/xds/registry")
        with pytest.raises(Exception):  # noqa: B017 - the handshake is refused: any TLS/connection error
            edge.find_documents(client, edge.patient_for(edge.new_access_code(), "19700101"))


def each_process_has_its_metrics_and_json_logs_with_request_ids(cluster: Cluster) -> None:
    ident = cluster.identities["monitor"]
    totals = {}
    for node in (cluster.a, cluster.b):
        with urllib.request.urlopen(node.https + "/metrics", context=ident.context(), timeout=30) as resp:
            families = text_string_to_metric_families(resp.read().decode())
        totals[node.name] = {
            s.labels["transaction"]: s.value
            for f in families
            if f.name == "clearinghouse_transactions"
            for s in f.samples
            if s.name == "clearinghouse_transactions_total"
        }
    # Per-process registries: the submission was counted where it arrived, the retrieval where it was served.
    assert totals["a"].get("ITI-41", 0) >= 1 and totals["a"].get("ITI-43", 0) == 0
    assert totals["b"].get("ITI-43", 0) >= 1 and totals["b"].get("ITI-41", 0) == 0

    lines = [json.loads(line) for line in cluster.a.log_path.read_text().splitlines() if line.startswith("{")]
    assert lines, "process a logs JSON lines"
    with_ids = [line for line in lines if line["request_id"]]
    assert with_ids and all(re.fullmatch(r"[0-9a-f]{32}", line["request_id"]) for line in with_ids)
    assert {"time", "level", "logger", "message", "thread"} <= set(lines[0])


def test_two_serve_processes_behave_as_one_clearinghouse(cluster):
    # One test, in order, so that one pytest-xdist worker starts the two processes once; each step is
    # a function named for what it shows.
    both_started_on_one_pki_and_one_schema(cluster)
    an_edge_submits_through_one_and_a_phr_finds_and_retrieves_through_the_other(cluster)
    pix_feed_through_one_query_through_the_other_and_each_notification_delivered_once(cluster)
    one_message_sent_to_both_at_once_is_applied_once(cluster)
    audit_records_sent_to_both_form_one_unbroken_chain(cluster)
    a_revocation_holds_on_both_processes_from_the_next_connection(cluster)
    each_process_has_its_metrics_and_json_logs_with_request_ids(cluster)


def test_concurrent_migrations_of_one_empty_schema_take_turns_and_all_succeed():
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = db.make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engines = [db.make_engine(PG_URL, schema=schema) for _ in range(3)]
    errors: list[BaseException] = []

    def upgrade(engine: Engine) -> None:
        try:
            db.upgrade(engine)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=upgrade, args=(e,), daemon=True) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # Without the lock they block each other on the first CREATE TABLE, or fail on "already exists".
        assert not any(t.is_alive() for t in threads), "migrations did not finish"
        assert not errors, errors
        heads = {frozenset(db.current_revisions(e)) for e in engines}
        assert len(heads) == 1 and len(next(iter(heads))) >= 5
    finally:
        for e in engines:
            e.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_pool_settings_come_from_the_environment_and_reach_the_engine():
    settings = load_settings(
        environ={
            "CLEARINGHOUSE_DATABASE_URL": PG_URL,
            "CLEARINGHOUSE_DB_POOL_SIZE": "3",
            "CLEARINGHOUSE_DB_POOL_MAX_OVERFLOW": "2",
            "CLEARINGHOUSE_DB_POOL_TIMEOUT_SECONDS": "7",
            "CLEARINGHOUSE_DB_POOL_PRE_PING": "false",
            "CLEARINGHOUSE_DB_POOL_RECYCLE_SECONDS": "600",
        }
    )
    engine = db.engine_for(settings)
    try:
        pool = engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout, pool._recycle, pool._pre_ping) == (
            3,
            2,
            7.0,
            600,
            False,
        )
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    with pytest.raises(ValueError, match="CLEARINGHOUSE_DB_POOL_PRE_PING='maybe'"):
        load_settings(environ={"CLEARINGHOUSE_DB_POOL_PRE_PING": "maybe"})
    # SQLite keeps its own pooling whatever the pool settings say.
    sqlite = db.engine_for(settings.replace(database_url="sqlite://"))
    assert sqlite.dialect.name == "sqlite"
    sqlite.dispose()


def test_audit_verify_holds_while_another_process_appends():
    """`audit verify` run from the command line while servers append: it checks the chain up to the head
    it read first and accepts records appended meanwhile, instead of calling them unchained."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = db.make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    writer, reader = db.make_engine(PG_URL, schema=schema), db.make_engine(PG_URL, schema=schema)
    db.upgrade(writer)
    node = audit.AuditNode(source_id="VERIFY-TEST")
    message = audit.syslog_message(audit.application_activity(node=node, start=True).to_xml(), node)
    batch = [derive(Received(datetime.now(UTC), "local", "", "in-process", message, len(message)))] * 20
    done = threading.Event()

    def append() -> None:
        while not done.wait(0.005):
            atna_store.store(writer, batch)

    appender = threading.Thread(target=append, daemon=True)
    try:
        atna_store.store(writer, batch)
        appender.start()
        reports = [atna_store.verify(reader, batch=25) for _ in range(6)]
        done.set()
        appender.join(30)
        assert all(r.intact for r in reports), [r.reason for r in reports if not r.intact]
        assert reports[-1].checked > reports[0].checked  # it really ran beside the appends
        final = atna_store.verify(reader)
        assert final.intact and final.checked == atna_store.count(reader)
        # A record the head does not cover (inserted outside the chain) is still reported.
        with writer.begin() as conn:
            last = conn.execute(select(AuditRecord).where(AuditRecord.id == final.checked)).mappings().one()
            conn.execute(AuditRecord.__table__.insert().values({**last, "id": final.checked + 1}))
        report = atna_store.verify(reader)
        assert not report.intact and "beyond the chain head" in report.reason
    finally:
        done.set()
        writer.dispose()
        reader.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
