"""``clearinghouse audit search|export|verify`` as an auditor runs them, the audit events of participant
changes made at the command line, tamper evidence, and sending this node's events to an external
Audit Record Repository over TLS syslog (with retry while it is down)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import edge
import pytest
from atna_client import events_for, wait_for
from conftest import running_instance

from atna.receivers import SyslogTlsServer
from clearinghouse.cli import main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*args: str, home: Path, check: bool = True) -> Result:
    """The ``clearinghouse`` command, run in this process (the same entry point, without a Python start)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*args, "--home", str(home)])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    result = Result(code, out.getvalue(), err.getvalue())
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A clearinghouse home whose audit trail holds the CLI's own participant changes."""
    home = tmp_path_factory.mktemp("cli") / "home"
    out = home.parent / "certs"
    run("participants", "add", "site-one", "--role", "source", "--out", str(out), home=home)
    run("participants", "add", "auditor-x", "--role", "auditor", "--out", str(out), home=home)
    run("participants", "revoke", "site-one", home=home)
    return home


def test_participant_changes_are_audited(home):
    out = run("audit", "search", "--type", "110113", "--format", "json", home=home).stdout
    bundle = json.loads(out)
    events = [e["resource"] for e in bundle["entry"]]
    changes = {
        (e["entity"][0]["what"]["identifier"]["value"], e["subtype"][0]["code"]): e for e in events if "entity" in e
    }
    assert ("site-one", "110136") in changes  # added with roles: Security Roles Changed
    assert ("auditor-x", "110136") in changes
    assert ("site-one", "110137") in changes  # revoked: User Security Attributes Changed
    revoked = changes[("site-one", "110137")]
    details = {d["type"] for d in revoked["entity"][0]["detail"]}
    assert {"change", "certificate-sha256", "certificate-subject"} <= details
    operator = [a for a in revoked["agent"] if a["type"]["coding"][0]["code"] == "110151"][0]
    assert operator["requestor"] is True and "@" in operator["who"]["identifier"]["value"]


def test_search_table_csv_and_paging(home):
    table = run("audit", "search", "--type", "110113", home=home).stdout
    assert table.startswith("3 record(s)") and "Security Alert" in table
    first = run("audit", "search", "--type", "110113", "--count", "2", "--format", "csv", home=home).stdout
    second = run("audit", "search", "--type", "110113", "--count", "2", "--offset", "2", "--format", "csv", home=home)
    rows = list(csv.DictReader(io.StringIO(first))) + list(csv.DictReader(io.StringIO(second.stdout)))
    assert len(rows) == 3 and len({r["id"] for r in rows}) == 3
    assert all(r["event_id"] == "110113" and r["valid"] == "true" for r in rows)
    assert run("audit", "search", "--agent", "nobody-at-all", home=home).stdout.startswith("0 record(s)")


def test_export_csv_and_json(home, tmp_path):
    run("audit", "export", "--format", "csv", "--out", str(tmp_path / "a.csv"), "--subtype", "110136", home=home)
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert {r["entities"] for r in rows} == {"site-one", "auditor-x"}
    assert all(r["subtypes"] == "110136" and len(r["hash"]) == 64 for r in rows)
    run("audit", "export", "--format", "json", "--out", str(tmp_path / "a.json"), "--date", "ge2020", home=home)
    bundle = json.loads((tmp_path / "a.json").read_text())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert all(e["resource"]["resourceType"] == "AuditEvent" for e in bundle["entry"])
    assert len(bundle["entry"]) >= 3


def test_bad_parameters_are_usage_errors(home):
    bad = run("audit", "search", "--date", "someday", home=home, check=False)
    assert bad.returncode == 2 and "someday" in bad.stderr
    assert run("audit", "search", "--outcome", "7", home=home, check=False).returncode == 2


def test_verify_reports_the_first_broken_link(tmp_path):
    home = tmp_path / "home"
    for n in range(4):
        run("participants", "add", f"p{n}", "--role", "consumer", "--out", str(tmp_path / "c"), home=home)
    ok = run("audit", "verify", home=home)
    assert "intact" in ok.stdout
    db = home / "clearinghouse.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_record SET event_outcome = 8 WHERE id = 3")
    broken = run("audit", "verify", home=home, check=False)
    assert broken.returncode == 1 and "BROKEN at record 3" in broken.stdout and "content" in broken.stdout
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_record SET event_outcome = 0 WHERE id = 3")
        conn.execute("UPDATE audit_record SET raw = CAST('forged' AS BLOB) WHERE id = 2")
    broken = run("audit", "verify", home=home, check=False)
    assert broken.returncode == 1 and "BROKEN at record 2" in broken.stdout and "SHA-256" in broken.stdout
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_record WHERE id = 2")
    broken = run("audit", "verify", home=home, check=False)
    assert broken.returncode == 1 and "BROKEN at record 2" in broken.stdout and "missing" in broken.stdout


def test_events_go_to_an_external_repository_with_retry(tmp_path):
    with running_instance(tmp_path / "arr") as arr:
        node_b = arr.add_identity("node-b", ["source"])
        port = arr.ch.audit.syslog_tls.port
        arr.ch.audit.syslog_tls.stop()  # the external repository is down
        with running_instance(
            tmp_path / "b",
            audit_repository_url=f"syslog+tls://localhost:{port}",
            audit_repository_ca=str(arr.settings.ca_cert_path),
            client_cert=str(node_b.cert),
            client_key=str(node_b.key),
            audit_source_id="NODE-B",
        ) as b:
            patient = edge.patient_for(edge.new_access_code(), "19700101")
            feed = b.feed_client()
            assert b"MSA|AA|" in feed.send(edge.feed_message(patient))
            feed.close()
            wait_for(lambda: b.ch.audit.sink.delivered == 0 and b.ch.audit.sink.pending >= 2, 5, "queued events")
            # The repository comes back on the same port; the queued events follow.
            again = SyslogTlsServer(
                arr.settings.bind, port, arr.ch.audit.syslog_tls.tls, arr.ch.audit.repository, max_message_bytes=1 << 20
            )
            again.start()
            try:
                (ev,) = events_for(arr, [("source", "NODE-B"), ("patient.identifier", patient)], timeout=30)
                assert ev["subtype"][0]["code"] == "ITI-8"
                sender = [x["valueString"] for x in ev["extension"] if x["url"].endswith("sender-certificate-subject")]
                assert sender and sender[0].startswith("CN=node-b,")
                assert b.ch.audit.sink.flush(10)
            finally:
                again.stop()
