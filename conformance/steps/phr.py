"""Steps for features/phr: the PHR under test pulls the preloaded study; the steps judge what it sent."""

from __future__ import annotations

from pytest_bdd import given, then

from conformance import judge
from conformance.expect import expect
from conformance.steps.observed import (
    Observed,
    expect_acted,
    expect_findings,
    expect_role,
    findings,
    observed_fixture,  # noqa: F401 - the fixture, for the suites
)


@given("an open PHR conformance session with a preloaded study")
def phr_session(observed: Observed) -> None:
    expect_role(observed, "phr")
    expect(
        bool(observed.session.test_data.study),
        expected="a study preloaded for the test patient",
        actual="no document",
        ref="docs/conformance.md",
    )


@given("the PHR has queried the registry")
def phr_queried(observed: Observed) -> None:
    expect_acted(observed, {"ITI-18": "registry stored query"})


@then("the PHR queried with the test patient's RSNA-ID")
def queried_rsna_id(observed: Observed) -> None:
    expect_findings(findings(observed.recorded(), "ITI-18", ("RSNA-ID",)), "the queried patient ID")


@then("the registry returned the preloaded study to the PHR")
def found_study(observed: Observed) -> None:
    data = observed.session.test_data
    found = judge.found_documents(observed.recorded(), data)
    expect(
        found == set(data.study),
        expected=f"the PHR's queries to find the {len(data.study)} documents of the preloaded study",
        actual=f"{len(found)} found",
        ref="ITI TF-2a 3.18.4.1.3; RSNA Image Share PHR",
    )


@then("every query is a stored query the profile allows")
def allowed_queries(observed: Observed) -> None:
    expect_findings(findings(observed.recorded(), "ITI-18", ("ITI18-",)), "the stored queries")


@then("the PHR retrieved every document it found")
def retrieved_all(observed: Observed) -> None:
    data = observed.session.test_data
    recorded = observed.wait_for(lambda rec: all(f.passed for f in judge.phr_retrievals(rec, data)))
    expect_findings(judge.phr_retrievals(recorded, data), "the retrievals")


@then("the PHR audited every retrieval with an ITI-43 import event")
def import_audited(observed: Observed) -> None:
    data = observed.session.test_data

    def done(rec: list) -> bool:  # retrieved what it found, and audited those retrievals
        return all(f.passed for f in judge.phr_retrievals(rec, data) + judge.phr_imports(rec))

    recorded = observed.wait_for(done)
    found = judge.phr_imports(recorded)
    if not judge.of(recorded, "ITI-43"):
        return  # nothing retrieved, nothing to audit (the retrieval scenario judges that)
    expect_findings(found, "the ITI-43 import audit")
