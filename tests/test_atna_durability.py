"""Nothing lost: a record is acknowledged only once it is durable; a burst the database cannot take is
held in the on-disk spool and drained later; a kill -9 of the server loses no record it had received."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from atna_client import edge_export, now_tag, send_tls, wait_for
from conftest import Identity, running_instance
from OpenSSL import SSL
from serve_output import keep_draining, port_of, wait_for_endpoints
from sqlalchemy import text

from atna import store

CLI = [sys.executable, "-m", "clearinghouse.cli"]


def _patient_count(engine, patient: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM audit_index WHERE kind = 'patient' AND value = :v"), {"v": patient}
        ).scalar_one()


@pytest.fixture
def lone_arr(backend, tmp_path):
    with running_instance(tmp_path, backend) as running:
        yield running


def test_burst_is_acknowledged_from_the_spool_while_the_database_is_locked(lone_arr, backend):
    """The database is locked against writers; senders are still acknowledged (the records are on disk),
    nothing reaches the database until the lock is released, then everything does, chained."""
    engine = lone_arr.ch.engine
    patient = f"burst{now_tag()}^^^&1.2.3&ISO"
    lone_arr.ch.audit.repository.wait_stored(10)
    before = store.count(engine)
    blocker = engine.connect()
    if backend == "sqlite":
        blocker.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        blocker.begin()
        blocker.execute(text("SELECT last_id FROM audit_chain WHERE id = 1 FOR UPDATE"))
    try:
        senders = [
            threading.Thread(
                target=send_tls,
                args=(
                    lone_arr.ch.audit.syslog_tls.port,
                    lone_arr.identities["edge"],
                    [edge_export(patient, f"1.{n}.{i}") for i in range(1500)],
                ),
            )
            for n in range(2)
        ]
        for s in senders:
            s.start()
        for s in senders:
            s.join(60)
            assert not s.is_alive(), "a sender was not acknowledged while the database was locked"
        assert lone_arr.ch.audit.syslog_tls.received >= 3000
        spooled = lone_arr.ch.audit.repository.spool.durable_position()
        assert spooled > lone_arr.ch.audit.repository.position  # waiting on disk, not in the database
    finally:
        blocker.rollback()
        blocker.close()
    assert lone_arr.ch.audit.repository.wait_stored(60)
    assert _patient_count(engine, patient) == 3000
    report = store.verify(engine)
    assert report.intact and report.checked >= before + 3000


def _serve(home: Path, env: dict) -> tuple[subprocess.Popen, int]:
    args = ["serve", "--home", str(home), "--https-port", "0", "--feed-port", "0"]
    args += ["--syslog-tls-port", "0", "--syslog-udp-port", "0"]
    proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    endpoints = wait_for_endpoints(proc)
    keep_draining(proc)
    return proc, port_of(endpoints, "syslog/TLS")


def _stored_ids(db: Path, prefix: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT value FROM audit_index WHERE kind = 'entity' AND value LIKE ?", (prefix + "%",)
        ).fetchall()
    return [r[0] for r in rows]


def test_kill_9_loses_no_record_that_was_received(tmp_path):
    home, certs = tmp_path / "home", tmp_path / "certs"
    env = {
        **os.environ,
        "CLEARINGHOUSE_PIX_PORT": "0",
        "CLEARINGHOUSE_CONSOLE_PORT": "0",
        "CLEARINGHOUSE_LOG_LEVEL": "WARNING",
    }
    subprocess.run(
        [*CLI, "participants", "add", "site", "--role", "source", "--out", str(certs), "--home", str(home)],
        check=True,
        capture_output=True,
        env=env,
    )
    ident = Identity("site", certs / "site.cert.pem", certs / "site.key.pem", certs / "ca.cert.pem")
    db = home / "clearinghouse.db"
    tag = now_tag()
    proc, port = _serve(home, env)
    streaming_error: list[BaseException] = []
    try:
        # A stream that is still sending when the server dies: whatever of it was received must survive.
        def stream() -> None:
            try:
                send_tls(port, ident, [edge_export("stream^^^&1.2.3&ISO", f"9.{tag}.{i:06d}") for i in range(6000)])
            except BaseException as exc:  # noqa: BLE001 - the kill ends it; that is the point
                streaming_error.append(exc)

        streamer = threading.Thread(target=stream)
        streamer.start()
        # Acknowledged records: send_tls returns only after the server's close_notify.
        acked = [edge_export("acked^^^&1.2.3&ISO", f"8.{tag}.{i:06d}") for i in range(2000)]
        send_tls(port, ident, acked)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        streamer.join(30)
        in_database_at_kill = len(_stored_ids(db, f"8.{tag}."))
    finally:
        if proc.poll() is None:
            proc.kill()
    # The kill caught acknowledged records that were in the spool only: their recovery is what is tested.
    assert in_database_at_kill < 2000

    proc, port = _serve(home, env)
    try:

        def drained() -> bool:
            return len(_stored_ids(db, f"8.{tag}.")) == 2000

        wait_for(drained, 60, f"the 2000 acknowledged records (only {in_database_at_kill} were in the database)")
        # The cut stream: what was stored is a gap-free prefix of what was sent, every record whole.
        if not streaming_error:  # the stream finished (and was acknowledged) before the kill: all of it
            wait_for(lambda: len(_stored_ids(db, f"9.{tag}.")) == 6000, 60, "the acknowledged stream")
        stream_ids = sorted(_stored_ids(db, f"9.{tag}."))
        assert stream_ids == [f"9.{tag}.{i:06d}" for i in range(len(stream_ids))]
        with sqlite3.connect(db) as conn:
            invalid = conn.execute("SELECT count(*) FROM audit_record WHERE valid = 0 AND transport = 'tls'").fetchone()
        assert invalid == (0,)
        verify = subprocess.run([*CLI, "audit", "verify", "--home", str(home)], capture_output=True, text=True, env=env)
        assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        finally:
            proc.kill()


def test_spool_repairs_a_torn_tail(tmp_path):
    """A write cut short by a crash (never acknowledged) is cut off; every whole record before it is read."""
    from atna.spool import Spool, encode

    spool = Spool(tmp_path / "spool")
    spool.open()
    spool.append([b"one", b"two"])
    spool.close()
    segment = sorted((tmp_path / "spool").glob("segment-*.log"))[-1]
    with open(segment, "ab") as f:
        f.write(encode(b"three")[:-2])  # the crash
    again = Spool(tmp_path / "spool")
    again.open()
    try:
        records, _ = again.read((1, 0), max_records=10, max_bytes=1 << 20)
        assert records == [b"one", b"two"]
        again.append([b"four"])
        records, _ = again.read((1, 0), max_records=10, max_bytes=1 << 20)
        assert records == [b"one", b"two", b"four"]
    finally:
        again.close()


def test_spool_is_owned_by_one_process(tmp_path):
    from atna.spool import Spool, SpoolError

    first = Spool(tmp_path / "s")
    first.open()
    try:
        with pytest.raises(SpoolError, match="in use"):
            Spool(tmp_path / "s").open()
    finally:
        first.close()


def test_group_commit_under_concurrency_and_segment_rotation(tmp_path):
    from atna.spool import Spool

    spool = Spool(tmp_path / "s", segment_bytes=64 * 1024)
    spool.open()
    try:
        payloads = {n: [f"{n}-{i}".encode() * 20 for i in range(500)] for n in range(8)}
        workers = [
            threading.Thread(target=lambda n=n: [spool.append(payloads[n][i : i + 10]) for i in range(0, 500, 10)])
            for n in range(8)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert spool.syncs < spool.appended_records / 10  # syncs were shared
        assert len(spool.segments()) > 1
        got, pos = [], (spool.segments()[0], 0)
        while True:
            batch, pos = spool.read(pos, max_records=1000, max_bytes=1 << 20)
            if not batch:
                break
            got += batch
        assert sorted(got) == sorted(p for ps in payloads.values() for p in ps)
    finally:
        spool.close()


def test_a_sender_is_told_when_records_are_not_acknowledged(lone_arr):
    """If the spool cannot take the records, the connection is reset instead of closed politely."""
    repository = lone_arr.ch.audit.repository
    repository.spool.close()  # as if the disk had gone away
    try:
        with pytest.raises((ConnectionError, OSError, SSL.Error)):  # a reset, seen while sending or closing
            send_tls(lone_arr.ch.audit.syslog_tls.port, lone_arr.identities["edge"], [edge_export("x", "1")])
    finally:
        repository.spool.open()
