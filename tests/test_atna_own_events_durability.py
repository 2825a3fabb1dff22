"""This node's own audit events survive a crash: an event is written to the durable spool in the thread
of the transaction it records, before that transaction's response is sent, so a kill -9 right after
the last answer loses none of them. With an external Audit Record Repository the event goes to a local
outbox first, then over TLS syslog; events emitted while that repository is down survive a kill -9
too and are sent after the restart."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import edge
from atna_client import events_for, wait_for
from conftest import Identity, running_instance
from serve_output import keep_draining, port_of, wait_for_endpoints

from atna.receivers import SyslogTlsServer
from clearinghouse.mllp import MllpClient

CLI = [sys.executable, "-m", "clearinghouse.cli"]


def _serve(home: Path, env: dict, *extra: str) -> tuple[subprocess.Popen, dict[str, int]]:
    args = ["serve", "--home", str(home), "--https-port", "0", "--feed-port", "0"]
    args += ["--syslog-tls-port", "0", "--syslog-udp-port", "0", *extra]
    proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    endpoints = wait_for_endpoints(proc)
    keep_draining(proc)
    return proc, {"feed": port_of(endpoints, "ITI-8 patient identity feed")}


def _feed_until_killed(port: int, ident: Identity, feeders: int, tag: str, stop: threading.Event) -> list[set[str]]:
    """Feed new patients over ``feeders`` concurrent connections until ``stop``; each set holds the
    patients whose ACK arrived (an ACK is sent only after the event recording the message was emitted)."""
    acked: list[set[str]] = [set() for _ in range(feeders)]

    def feeder(n: int) -> None:
        try:
            with MllpClient("localhost", port, ident.context(), timeout=10) as client:
                i = 0
                while not stop.is_set():
                    patient = edge.patient_for(f"{tag}-{n}-{i}", "19700101")
                    if b"MSA|AA|" in client.send(edge.feed_message(patient)):
                        acked[n].add(patient)
                    i += 1
        except Exception:  # noqa: BLE001, S110 - the kill ends every connection: that is the point
            pass

    threads = [threading.Thread(target=feeder, args=(n,)) for n in range(feeders)]
    for t in threads:
        t.start()
    return acked


def _iti8_patients(db: Path) -> set[str]:
    """The patients (as CX) of every stored ITI-8 event."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT i.value FROM audit_index i JOIN audit_index s ON s.record_id = i.record_id"
            " AND s.kind = 'subtype' AND s.value = 'ITI-8'"
            " WHERE i.kind = 'patient' AND i.system = ''"
        ).fetchall()
    return {r[0] for r in rows}


def _add_participant(home: Path, certs: Path, env: dict, name: str) -> Identity:
    subprocess.run(
        [*CLI, "participants", "add", name, "--role", "source", "--out", str(certs), "--home", str(home)],
        check=True,
        capture_output=True,
        env=env,
    )
    return Identity(name, certs / f"{name}.cert.pem", certs / f"{name}.key.pem", certs / "ca.cert.pem")


def test_kill_9_loses_no_event_of_an_answered_message(tmp_path):
    """Eight connections feed patients as fast as they are answered; the server is killed mid-stream.
    Every message whose ACK arrived has its ITI-8 event stored after the restart."""
    home = tmp_path / "home"
    env = {
        **os.environ,
        "CLEARINGHOUSE_PIX_PORT": "0",
        "CLEARINGHOUSE_CONSOLE_PORT": "0",
        "CLEARINGHOUSE_LOG_LEVEL": "WARNING",
    }
    ident = _add_participant(home, tmp_path / "certs", env, "site")
    proc, ports = _serve(home, env)
    stop = threading.Event()
    try:
        acked = _feed_until_killed(ports["feed"], ident, 8, f"own{time.time_ns()}", stop)
        wait_for(lambda: sum(map(len, acked)) >= 400, 60, "400 answered messages")
        proc.send_signal(signal.SIGKILL)  # mid-stream: events of answered messages may not have reached the spool
        proc.wait(10)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)  # the feeders see their connections end
    expected = set().union(*acked)
    db = home / "clearinghouse.db"
    in_database_at_kill = len(_iti8_patients(db) & expected)

    proc, _ = _serve(home, env)
    try:
        wait_for(
            lambda: _iti8_patients(db) >= expected,
            60,
            f"the {len(expected)} ITI-8 events of answered messages ({in_database_at_kill} were in the database)",
        )
        verify = subprocess.run([*CLI, "audit", "verify", "--home", str(home)], capture_output=True, text=True, env=env)
        assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        finally:
            proc.kill()


def test_events_for_an_external_repository_that_is_down_survive_a_kill_9(tmp_path):
    """Spool first, then send: the external repository is down, the node answers messages and is killed;
    after both come back, every event of an answered message reaches the external repository."""
    with running_instance(tmp_path / "arr") as arr:
        node_b = arr.add_identity("node-b", ["source"])
        port = arr.ch.audit.syslog_tls.port
        arr.ch.audit.syslog_tls.stop()  # the external repository is down
        home = tmp_path / "b"
        env = {
            **os.environ,
            "CLEARINGHOUSE_PIX_PORT": "0",
            "CLEARINGHOUSE_CONSOLE_PORT": "0",
            "CLEARINGHOUSE_LOG_LEVEL": "WARNING",
            "CLEARINGHOUSE_AUDIT_REPOSITORY_URL": f"syslog+tls://localhost:{port}",
            "CLEARINGHOUSE_AUDIT_REPOSITORY_CA": str(arr.settings.ca_cert_path),
            "CLEARINGHOUSE_CLIENT_CERT": str(node_b.cert),
            "CLEARINGHOUSE_CLIENT_KEY": str(node_b.key),
            "CLEARINGHOUSE_AUDIT_SOURCE_ID": "NODE-B-KILLED",
        }
        ident = _add_participant(home, tmp_path / "certs", env, "site")
        proc, ports = _serve(home, env)
        patients = [edge.patient_for(f"outbox{time.time_ns()}-{i}", "19700101") for i in range(20)]
        try:
            with MllpClient("localhost", ports["feed"], ident.context()) as client:
                for p in patients:
                    assert b"MSA|AA|" in client.send(edge.feed_message(p))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert any((home / "audit-spool" / "outbox").glob("segment-*.log"))  # spooled first
        again = SyslogTlsServer(
            arr.settings.bind, port, arr.ch.audit.syslog_tls.tls, arr.ch.audit.repository, max_message_bytes=1 << 20
        )
        again.start()
        proc, _ = _serve(home, env)
        try:
            events = events_for(arr, [("source", "NODE-B-KILLED"), ("subtype", "ITI-8")], n=len(patients), timeout=60)
            got = {e["what"]["identifier"]["value"] for ev in events for e in ev["entity"] if e["role"]["code"] == "1"}
            assert got >= set(patients)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            finally:
                proc.kill()
            again.stop()
