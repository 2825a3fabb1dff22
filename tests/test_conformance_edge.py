"""The edge-role scenarios judging the reference edge: clean, every scenario passes; with each fault
switch exactly the scenario that checks that rule fails, with the rule's message, and no other."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from clearinghouse.audit import AuditNode, SyslogTlsSink
from conformance import sessions as api
from conformance.edge import EdgeError, EdgeSimulator
from conformance.faults import EDGE_FAULTS, Fault
from conformance.recorder import REFRESH_SECONDS
from conformance.selftest import run_suite
from conformance.study import collect

TIMEOUT = 3.0  # what the scenarios wait for what never comes (the no-audit fault)
SCENARIOS = {
    "feed": "test_the_patient_identity_feed_is_a_valid_iti8_message",
    "rsna": "test_the_edge_computed_the_rsnaid_from_the_test_data",
    "metadata": "test_the_submissions_metadata_is_complete_and_valid",
    "content": "test_declared_hashes_and_sizes_are_those_of_the_documents",
    "mtom": "test_the_submission_is_framed_as_mtomxop",
    "audit": "test_the_edge_audits_the_export",
}
# fault -> (the scenario that must fail, what its failure must say)
EXPECTED = {
    Fault.BAD_FEED: ("feed", "MSH-9.3"),
    Fault.WRONG_RSNA_ID: ("rsna", "RSNA-ID of a test patient"),
    Fault.MISSING_SLOT: ("metadata", "creationTime"),
    Fault.BAD_HASH: ("content", "ITI41-HASH"),
    Fault.BAD_MTOM: ("mtom", "start-info"),
    Fault.NO_AUDIT: ("audit", "ITI-41 Export audit message"),
}


def test_every_edge_fault_has_its_scenario():
    assert set(EXPECTED) == set(EDGE_FAULTS)


@pytest.fixture(scope="module")
def edge_under_test(clearinghouse):
    return clearinghouse.add_identity(f"sut-edge-{uuid.uuid4().hex[:8]}", ["source"])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("edge-study")
    (d / "report.txt").write_text("IMPRESSION: normal.\n")
    return collect([Path(get_testdata_file("CT_small.dcm")), Path(get_testdata_file("MR_small.dcm"))], d / "report.txt")


def _send(ch, ident, study, patient: api.TestPatient, faults) -> None:
    ctx = ident.context()
    sink = SyslogTlsSink("localhost", ch.ch.audit.syslog_tls.port, ctx, AuditNode(source_id="SUT-EDGE"))
    edge = EdgeSimulator(
        ch.soap(ident.name, "/xds/repository"),
        f"mllp+tls://localhost:{ch.feed_port}",
        ctx,
        affinity_domain_oid=ch.settings.affinity_domain_oid,
        repository_unique_id=ch.settings.repository_unique_id,
        faults=faults,
        audit=sink,
    )
    try:
        edge.send(study, dob=patient.dob, password=patient.password, access_code=patient.access_code)
    except EdgeError:
        assert {Fault.WRONG_RSNA_ID, Fault.MISSING_SLOT, Fault.BAD_HASH} & set(faults), "a clean edge was refused"
    finally:
        assert sink.flush(30)
        sink.close()


@pytest.mark.parametrize("fault", [None, *EDGE_FAULTS], ids=lambda f: f or "clean")
def test_edge_features_judge_the_reference_edge(clearinghouse, edge_under_test, study, fault, tmp_path):
    db = clearinghouse.ch.sessions
    session = api.open_session(db, clearinghouse.settings, role="edge", participant=edge_under_test.name)
    try:
        time.sleep(REFRESH_SECONDS + 0.2)  # the recorder sees a new session within REFRESH_SECONDS
        _send(clearinghouse, edge_under_test, study, session.test_data.patients[0], [fault] if fault else [])
        verdicts = run_suite("edge", db, session.id, TIMEOUT, tmp_path)
    finally:
        api.close_session(db, session.id)
    assert sorted(verdicts.results) == sorted(SCENARIOS.values())
    if fault is None:
        assert verdicts.failed == {}
        return
    scenario, message = EXPECTED[fault]
    assert list(verdicts.failed) == [SCENARIOS[scenario]], verdicts.failed
    assert message in verdicts.failed[SCENARIOS[scenario]]
    assert "ITI TF" in verdicts.failed[SCENARIOS[scenario]] or "RSNA" in verdicts.failed[SCENARIOS[scenario]]
