"""Conformance sessions: the Python API (open, list, show, close, recorded transactions with their
findings) and the `conformance session` / `conformance run --role edge` commands, against a running
clearinghouse over its real transports."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from clearinghouse.rsna_id import compute_rsna_id, patient_cx
from conformance import sessions as api
from conformance.edge import EdgeSimulator, feed_message
from conformance.recorder import REFRESH_SECONDS
from conformance.run import run_options
from conformance.study import collect


@pytest.fixture
def edge_sut(clearinghouse):
    return clearinghouse.add_identity(f"sut-{uuid.uuid4().hex[:8]}", ["source"])


def _feed(ch, ident, patient_id: str) -> bytes:
    from clearinghouse.mllp import MllpClient

    client = MllpClient("localhost", ch.feed_port, ident.context())
    try:
        return client.send(feed_message(patient_id))
    finally:
        client.close()


def test_edge_session_test_data_and_sheet(clearinghouse, edge_sut):
    db, settings = clearinghouse.ch.sessions, clearinghouse.settings
    view = api.open_session(db, settings, role="edge", participant=edge_sut.name, timeout=600)
    try:
        assert view.is_open() and view.role == "edge" and len(view.test_data.patients) == 2
        for p in view.test_data.patients:
            assert p.rsna_id == compute_rsna_id(p.access_code, p.dob, p.password)
            assert p.patient_id == patient_cx(p.rsna_id, settings.affinity_domain_oid)
        sheet = api.render_test_data(view)
        for p in view.test_data.patients:
            assert p.access_code in sheet and p.dob in sheet and p.password in sheet
            assert p.rsna_id not in sheet  # computing it is what an edge session tests
        assert api.get_session(db, view.id) == view
        assert view.id in [v.id for v in api.list_sessions(db, open_only=True)]
    finally:
        closed = api.close_session(db, view.id)
    assert not closed.is_open() and view.id not in [v.id for v in api.list_sessions(db, open_only=True)]
    assert view.id in [v.id for v in api.list_sessions(db)]


def test_session_refusals(clearinghouse, edge_sut):
    db, settings = clearinghouse.ch.sessions, clearinghouse.settings
    with pytest.raises(api.SessionError, match="no active participant"):
        api.open_session(db, settings, role="edge", participant="nobody-registered")
    with pytest.raises(api.SessionError, match="lacks the role 'consumer'"):
        api.open_session(db, settings, role="phr", participant=edge_sut.name, preload=lambda p: ["1.2.3"])
    with pytest.raises(api.SessionError, match="needs a study"):
        api.open_session(db, settings, role="phr", participant="phr")
    with pytest.raises(api.SessionError, match="role must be"):
        api.open_session(db, settings, role="registry", participant=edge_sut.name)
    with pytest.raises(api.SessionError, match="positive"):
        api.open_session(db, settings, role="edge", participant=edge_sut.name, timeout=0)
    view = api.open_session(db, settings, role="edge", participant=edge_sut.name)
    try:
        with pytest.raises(api.SessionError, match="already has the open session"):
            api.open_session(db, settings, role="edge", participant=edge_sut.name)
    finally:
        api.close_session(db, view.id)
    with pytest.raises(api.SessionError, match="no conformance session"):
        api.get_session(db, "nosuchsession")
    with pytest.raises(api.SessionError, match="no conformance session"):
        api.close_session(db, "nosuchsession")


def test_a_session_expires(clearinghouse, edge_sut):
    db = clearinghouse.ch.sessions
    view = api.open_session(db, clearinghouse.settings, role="edge", participant=edge_sut.name, timeout=0.5)
    assert view.is_open()
    assert not view.is_open(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    time.sleep(0.6)
    assert view.id not in [v.id for v in api.list_sessions(db, open_only=True)]
    # An expired session does not block a new one.
    api.close_session(db, api.open_session(db, clearinghouse.settings, role="edge", participant=edge_sut.name).id)


def test_recording_only_while_open_with_findings_and_since(clearinghouse, edge_sut):
    db = clearinghouse.ch.sessions
    view = api.open_session(db, clearinghouse.settings, role="edge", participant=edge_sut.name)
    patient = view.test_data.patients[1]
    time.sleep(REFRESH_SECONDS + 0.2)
    assert b"MSA|AA|" in _feed(clearinghouse, edge_sut, patient.patient_id)
    stranger = patient_cx(
        compute_rsna_id("ybndr-fg8ej-kmcpq-xot1u", "19610101"), clearinghouse.settings.affinity_domain_oid
    )
    assert b"MSA|AA|" in _feed(clearinghouse, edge_sut, stranger)
    _feed(clearinghouse, clearinghouse.identities["edge"], stranger)  # another participant: not recorded
    first, second = api.transactions(db, view.id)
    assert first.transaction == second.transaction == "ITI-8" and first.facts["ack"] == "AA"
    assert first.passed, [str(f) for f in first.findings]
    assert {f.rule for f in first.findings} >= {"ITI8-MSH-9", "ITI8-MSH-9.3", "ITI8-PID-3", "RSNA-ID"}
    wrong = [f for f in second.findings if not f.passed]
    assert [f.rule for f in wrong] == ["RSNA-ID"] and stranger in wrong[0].actual and wrong[0].ref
    assert [r.id for r in api.transactions(db, view.id, since_id=first.id)] == [second.id]
    api.close_session(db, view.id)
    time.sleep(REFRESH_SECONDS + 0.2)
    _feed(clearinghouse, edge_sut, patient.patient_id)
    assert len(api.transactions(db, view.id)) == 2  # closed: no longer recorded, still readable


def test_run_needs_a_session_for_the_edge_and_phr_roles():
    from clearinghouse.cli import parser

    for role in ("edge", "phr"):
        args = parser().parse_args(["conformance", "run", "--role", role])
        with pytest.raises(ValueError, match="--session"):
            run_options(args)
    args = parser().parse_args(["conformance", "run", "--role", "phr", "--session", "abc", "--timeout", "9"])
    assert run_options(args) == ["--conformance-session=abc", "--conformance-timeout=9.0"]


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clearinghouse.cli", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_session_and_run_commands(clearinghouse, backend, edge_sut, tmp_path):
    if backend != "sqlite":
        pytest.skip("the commands find the database through --home; the PostgreSQL instance lives in a test schema")
    home = clearinghouse.settings.home
    new = _cli("conformance", "session", "new", "--role", "edge", "--participant", edge_sut.name, home=home)
    assert new.returncode == 0, new.stderr
    sid = new.stdout.split("Conformance session ", 1)[1].split(":", 1)[0]
    view = api.get_session(clearinghouse.ch.sessions, sid)
    assert view.test_data.patients[0].access_code in new.stdout and view.test_data.patients[0].rsna_id not in new.stdout

    # The reference edge acts as the system under test, then `conformance run` judges the session.
    time.sleep(REFRESH_SECONDS + 0.2)
    patient = view.test_data.patients[0]
    d = tmp_path / "study"
    d.mkdir()
    (d / "report.txt").write_text("IMPRESSION: normal.\n")
    EdgeSimulator(
        clearinghouse.soap(edge_sut.name, "/xds/repository"),
        f"mllp+tls://localhost:{clearinghouse.feed_port}",
        edge_sut.context(),
        affinity_domain_oid=clearinghouse.settings.affinity_domain_oid,
        repository_unique_id=clearinghouse.settings.repository_unique_id,
    ).send(
        collect([Path(get_testdata_file("CT_small.dcm"))], d / "report.txt"),
        dob=patient.dob,
        password=patient.password,
        access_code=patient.access_code,
    )
    shown = _cli("conformance", "session", "show", sid, home=home)
    assert "ITI-8" in shown.stdout and "ITI-41" in shown.stdout, shown.stdout + shown.stderr
    run = _cli(
        "conformance", "run", "--role", "edge", "--session", sid, "--timeout", "2", "--out", str(tmp_path / "r"),
        home=home,
    )  # fmt: skip
    suite = ET.parse(tmp_path / "r" / "junit.xml").getroot().find("testsuite")
    # No audit was sent (the edge had no --audit): exactly the audit scenario fails.
    assert run.returncode == 1 and int(suite.get("tests")) == 6 and int(suite.get("failures")) == 1, run.stdout
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["test_the_edge_audits_the_export"]
    assert "<html" in (tmp_path / "r" / "report.html").read_text().lower()

    closed = _cli("conformance", "session", "close", sid, home=home)
    assert closed.returncode == 0 and not api.get_session(clearinghouse.ch.sessions, sid).is_open()


def test_phr_session_command_preloads_a_study(clearinghouse, backend):
    if backend != "sqlite":
        pytest.skip("the commands find the database through --home; the PostgreSQL instance lives in a test schema")
    home = clearinghouse.settings.home
    name = f"sut-phr-{uuid.uuid4().hex[:8]}"
    clearinghouse.add_identity(name, ["consumer"])
    new = _cli(
        "conformance", "session", "new", "--role", "phr", "--participant", name,
        "--server", f"https://localhost:{clearinghouse.https_port}",
        "--feed", f"mllp+tls://localhost:{clearinghouse.feed_port}",
        home=home,
    )  # fmt: skip
    assert new.returncode == 0, new.stderr
    sid = new.stdout.split("Conformance session ", 1)[1].split(":", 1)[0]
    view = api.get_session(clearinghouse.ch.sessions, sid)
    patient = view.test_data.patients[0]
    assert patient.access_code in new.stdout and patient.rsna_id in new.stdout and "3 document(s)" in new.stdout
    assert len(view.test_data.study) == 3
    api.close_session(clearinghouse.ch.sessions, sid)
