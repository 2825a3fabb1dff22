"""The PHR-role scenarios judging the reference PHR: clean, every scenario passes; with each fault
switch exactly the scenario that checks that rule fails, with the rule's message, and no other."""

from __future__ import annotations

import time
import uuid

import pytest

from clearinghouse.audit import AuditNode, SyslogTlsSink
from conformance import sessions as api
from conformance.edge import EdgeSimulator
from conformance.faults import PHR_FAULTS, Fault
from conformance.phr import PhrError, PhrSimulator
from conformance.preload import edge_preloader
from conformance.recorder import REFRESH_SECONDS
from conformance.selftest import run_suite

TIMEOUT = 3.0  # what the scenarios wait for what never comes (no audit, a document never retrieved)
SCENARIOS = {
    "rsna": "test_the_phr_computed_the_rsnaid_from_what_the_patient_typed",
    "query": "test_the_phr_uses_a_stored_query_the_profile_allows",
    "retrieve": "test_the_phr_retrieves_every_document_it_found",
    "audit": "test_the_phr_audits_the_import",
}
EXPECTED = {
    Fault.WRONG_RSNA_ID: ("rsna", "the test patient's RSNA-ID"),
    Fault.WRONG_QUERY: ("query", "GetAll"),
    Fault.PARTIAL_RETRIEVE: ("retrieve", "not retrieved"),
    Fault.NO_AUDIT: ("audit", "ITI-43 Import audit message"),
}


def test_every_phr_fault_has_its_scenario():
    assert set(EXPECTED) == set(PHR_FAULTS)


@pytest.fixture(scope="module")
def phr_under_test(clearinghouse):
    return clearinghouse.add_identity(f"sut-phr-{uuid.uuid4().hex[:8]}", ["consumer"])


@pytest.fixture(scope="module")
def preload(clearinghouse, tmp_path_factory):
    """The study every session preloads, through ITI-8 and ITI-41 as the instance's edge."""
    ident = clearinghouse.identities["edge"]
    edge = EdgeSimulator(
        clearinghouse.soap("edge", "/xds/repository"),
        f"mllp+tls://localhost:{clearinghouse.feed_port}",
        ident.context(),
        affinity_domain_oid=clearinghouse.settings.affinity_domain_oid,
        repository_unique_id=clearinghouse.settings.repository_unique_id,
    )
    return edge_preloader(edge, tmp_path_factory.mktemp("preload"))


def _fetch(ch, ident, patient: api.TestPatient, faults, out) -> None:
    ctx = ident.context()
    sink = SyslogTlsSink("localhost", ch.ch.audit.syslog_tls.port, ctx, AuditNode(source_id="SUT-PHR"))
    phr = PhrSimulator(
        ch.soap(ident.name, "/xds/registry"),
        lambda _repository: ch.soap(ident.name, "/xds/repository"),
        affinity_domain_oid=ch.settings.affinity_domain_oid,
        faults=faults,
        audit=sink,
    )
    try:
        phr.fetch(
            patient.access_code.upper(),
            f"{patient.dob[:4]}-{patient.dob[4:6]}-{patient.dob[6:]}",
            patient.password,
            out,
        )
    except PhrError:
        assert Fault.WRONG_RSNA_ID in faults, "a clean PHR failed"
    finally:
        assert sink.flush(30)
        sink.close()


@pytest.mark.parametrize("fault", [None, *PHR_FAULTS], ids=lambda f: f or "clean")
def test_phr_features_judge_the_reference_phr(clearinghouse, phr_under_test, preload, fault, tmp_path):
    db = clearinghouse.ch.sessions
    session = api.open_session(db, clearinghouse.settings, role="phr", participant=phr_under_test.name, preload=preload)
    try:
        assert len(session.test_data.study) == 3
        time.sleep(REFRESH_SECONDS + 0.2)  # the recorder sees a new session within REFRESH_SECONDS
        _fetch(clearinghouse, phr_under_test, session.test_data.patients[0], [fault] if fault else [], tmp_path / "out")
        verdicts = run_suite("phr", db, session.id, TIMEOUT, tmp_path)
    finally:
        api.close_session(db, session.id)
    assert sorted(verdicts.results) == sorted(SCENARIOS.values())
    if fault is None:
        assert verdicts.failed == {}
        return
    scenario, message = EXPECTED[fault]
    assert list(verdicts.failed) == [SCENARIOS[scenario]], verdicts.failed
    assert message in verdicts.failed[SCENARIOS[scenario]]
