"""Steps for features/edge: the edge under test has sent, the clearinghouse recorded, the steps judge."""

from __future__ import annotations

from pytest_bdd import given, then

from conformance import judge
from conformance.steps.observed import (
    Observed,
    expect_acted,
    expect_findings,
    expect_role,
    findings,
    observed_fixture,  # noqa: F401 - the fixture, for the suites
)


@given("an open edge conformance session")
def edge_session(observed: Observed) -> None:
    expect_role(observed, "edge")


@given("the edge has fed a test patient and submitted a study")
def edge_acted(observed: Observed) -> None:
    expect_acted(observed, {"ITI-8": "patient identity feed", "ITI-41": "provide and register"})


@then("every feed message follows the ITI-8 rules")
def feed_rules(observed: Observed) -> None:
    expect_findings(findings(observed.recorded(), "ITI-8", ("ITI8-",)), "the ITI-8 feed")


@then("every patient ID the edge sent is the RSNA-ID of a test patient")
def rsna_ids(observed: Observed) -> None:
    recorded = observed.recorded()
    expect_findings(
        findings(recorded, "ITI-8", ("RSNA-ID",)) + findings(recorded, "ITI-41", ("RSNA-ID",)), "the patient IDs"
    )


@then("every submission follows the ITI-41 metadata rules")
def metadata_rules(observed: Observed) -> None:
    expect_findings(findings(observed.recorded(), "ITI-41", ("ITI41-METADATA",)), "the ITI-41 metadata")


@then("every declared hash and size is that of the document sent")
def content_rules(observed: Observed) -> None:
    expect_findings(
        findings(observed.recorded(), "ITI-41", ("ITI41-HASH", "ITI41-SIZE", "ITI41-DOCUMENT")), "hash and size"
    )


@then("every submission is an MTOM/XOP package framed as the profile requires")
def mtom_rules(observed: Observed) -> None:
    expect_findings(findings(observed.recorded(), "ITI-41", ("MTOM-",)), "the MTOM framing")


@then("the edge audited every submission with an ITI-41 export event")
def export_audited(observed: Observed) -> None:
    recorded = observed.wait_for(lambda rec: all(f.passed for f in judge.edge_audits(rec)))
    expect_findings(judge.edge_audits(recorded), "the ITI-41 export audit")
