"""ITI-81 Retrieve ATNA Audit Event over HTTPS: each search parameter, their combinations, paging,
single reads, the original XML, and the refusals."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from atna_client import fhir_get, now_tag, resources, search, send_tls, wait_for

from clearinghouse import audit
from clearinghouse.audit import AuditNode, DocumentRef, Party

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SS_TYPE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"


@pytest.fixture(scope="module")
def dataset(clearinghouse):
    """Five events from one audit source, sent over TLS syslog; returns (tag, {name: (id, xml)})."""
    t = now_tag()
    node = AuditNode(source_id=f"SRC-{t}", hostname="sender.example", app_name="sender")
    p1, p2 = f"P1{t}^^^&1.2.3&ISO", f"P2{t}^^^&1.2.3&ISO"
    repo = Party("https://ch.example/xds/repository", "ch.example")
    events = {
        "e1": audit.provide_and_register(
            audit.SOURCE,
            node=node,
            source=Party("edge-1", "10.0.0.1"),
            destination=repo,
            patient_id=p1,
            submission_set_uid=f"1.1.{t}",
            when=datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC),
        ),
        "e2": audit.provide_and_register(
            audit.SOURCE,
            node=node,
            source=Party("edge-2", "10.0.0.2"),
            destination=repo,
            patient_id=p2,
            submission_set_uid=f"1.2.{t}",
            outcome=audit.SERIOUS_FAILURE,
            when=datetime(2001, 2, 4, 0, 0, 0, tzinfo=UTC),
        ),
        "e3": audit.registry_stored_query(
            node=node,
            consumer=Party("phr-1", "10.0.0.3"),
            registry=Party("https://ch.example/xds/registry"),
            query_id="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d",
            query=b"<AdhocQueryRequest/>",
            patient_id=p1,
            when=datetime(2002, 6, 15, 12, 0, 0, tzinfo=UTC),
        ),
        "e4": audit.retrieve_document_set(
            audit.RECIPIENT,
            node=node,
            repository=repo,
            consumer=Party("phr-1", "10.0.0.3"),
            documents=[DocumentRef(f"D1.{t}", "1.9"), DocumentRef(f"D2.{t}", "1.9")],
            patient_id=p1,
            outcome=audit.MINOR_FAILURE,
            when=datetime(2002, 6, 16, 8, 0, 0, tzinfo=UTC),
        ),
        "e5": audit.patient_identity_feed(
            node=node,
            source=Party("HIS|HOSP", "10.0.0.9"),
            destination=Party("CLEARINGHOUSE|ISN"),
            trigger_event="A01",
            patient_ids=[p2],
            message_control_id="42",
            when=datetime(2003, 12, 31, 23, 59, 59, tzinfo=UTC),
        ),
    }
    xml = {name: ev.to_xml() for name, ev in events.items()}
    send_tls(
        clearinghouse.ch.audit.syslog_tls.port,
        clearinghouse.identities["edge"],
        [audit.syslog_message(x, node) for x in xml.values()],
    )

    def stored() -> list | None:
        got = resources(search(clearinghouse, [("source", f"SRC-{t}")]))
        return got if len(got) == 5 else None

    found = wait_for(stored, what="the five events")
    by_patient_and_date = {ev["recorded"][:19]: ev["id"] for ev in found}
    ids = {name: by_patient_and_date[events[name].when.strftime("%Y-%m-%dT%H:%M:%S")] for name in events}
    return t, {name: (ids[name], xml[name]) for name in events}


def names(clearinghouse, dataset, params) -> set[str]:
    t, data = dataset
    by_id = {rid: name for name, (rid, _) in data.items()}
    got = resources(search(clearinghouse, [("source", f"SRC-{t}"), *params]))
    return {by_id[ev["id"]] for ev in got}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([], {"e1", "e2", "e3", "e4", "e5"}),
        ([("date", "2001")], {"e1", "e2"}),
        ([("date", "2001-02-03")], {"e1"}),
        ([("date", "ge2002-01-01")], {"e3", "e4", "e5"}),
        ([("date", "ge2002"), ("date", "lt2003")], {"e3", "e4"}),
        ([("date", "lt2001-02-04")], {"e1"}),
        ([("date", "le2001-02-04")], {"e1", "e2"}),
        ([("date", "gt2002-06-15")], {"e4", "e5"}),
        ([("date", "ne2001")], {"e3", "e4", "e5"}),
        ([("date", "2003-12-31T23:59:59Z")], {"e5"}),
        ([("date", "2004-01-01T00:59:59+01:00")], {"e5"}),
        ([("type", "110106")], {"e1", "e2"}),
        ([("type", f"{DCM}|110112")], {"e3"}),
        ([("type", "110106,110112")], {"e1", "e2", "e3"}),
        ([("type", "urn:other|110106")], set()),
        ([("subtype", "ITI-41")], {"e1", "e2"}),
        ([("subtype", "urn:ihe:event-type-code|ITI-18")], {"e3"}),
        ([("subtype", "ITI-8,ITI-43")], {"e4", "e5"}),
        ([("outcome", "8")], {"e2"}),
        ([("outcome", "0,4")], {"e1", "e3", "e4", "e5"}),
        ([("outcome", "http://terminology.hl7.org/CodeSystem/audit-event-outcome|4")], {"e4"}),
        ([("address", "10.0.0.3")], {"e3", "e4"}),
        ([("agent", "edge-1")], {"e1"}),
        ([("agent", "phr-1")], {"e3", "e4"}),
        ([("agent", "HIS\\|HOSP")], {"e5"}),
        ([("type", "110106"), ("outcome", "0")], {"e1"}),
        ([("subtype", "ITI-43"), ("agent", "phr-1"), ("address", "10.0.0.3")], {"e4"}),
        ([("subtype", "ITI-43"), ("agent", "edge-1")], set()),
    ],
)
def test_search_parameters(clearinghouse, dataset, params, expected):
    assert names(clearinghouse, dataset, params) == expected


def test_patient_and_entity_parameters(clearinghouse, dataset):
    t, _ = dataset
    assert names(clearinghouse, dataset, [("patient.identifier", f"P1{t}^^^&1.2.3&ISO")]) == {"e1", "e3", "e4"}
    assert names(clearinghouse, dataset, [("patient.identifier", f"urn:oid:1.2.3|P2{t}")]) == {"e2", "e5"}
    assert names(clearinghouse, dataset, [("patient.identifier", f"urn:oid:9.9|P2{t}")]) == set()
    assert names(clearinghouse, dataset, [("entity-id", f"D1.{t}")]) == {"e4"}
    assert names(clearinghouse, dataset, [("entity-id", f"1.1.{t}")]) == {"e1"}
    assert names(clearinghouse, dataset, [("entity-id", f"{SS_TYPE}|1.2.{t}")]) == {"e2"}
    combined = [("patient.identifier", f"P1{t}^^^&1.2.3&ISO"), ("date", "2002")]
    assert names(clearinghouse, dataset, combined) == {"e3", "e4"}
    assert names(clearinghouse, dataset, [("source", "SRC-nobody")]) == set()


def test_resource_shape(clearinghouse, dataset):
    t, data = dataset
    rid, _ = data["e4"]
    status, ev = fhir_get(clearinghouse.url(f"/fhir/AuditEvent/{rid}"), clearinghouse.identities["auditor"].context())
    assert status == 200 and ev["resourceType"] == "AuditEvent" and ev["id"] == rid
    assert ev["type"] == {"system": DCM, "code": "110107", "display": "Import"}
    assert ev["subtype"] == [
        {"system": "urn:ihe:event-type-code", "code": "ITI-43", "display": "Retrieve Document Set"}
    ]
    assert (ev["action"], ev["outcome"], ev["recorded"]) == ("C", "4", "2002-06-16T08:00:00.000Z")
    consumer = [a for a in ev["agent"] if a["type"]["coding"][0]["code"] == "110152"][0]
    assert consumer["requestor"] is True and consumer["network"] == {"address": "10.0.0.3", "type": "2"}
    assert ev["source"]["observer"]["identifier"]["value"] == f"SRC-{t}"
    docs = [e for e in ev["entity"] if e["role"]["code"] == "3"]
    assert {d["what"]["identifier"]["value"] for d in docs} == {f"D1.{t}", f"D2.{t}"}
    assert docs[0]["type"] == {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"}


def test_original_xml_is_returned_byte_for_byte(clearinghouse, dataset):
    _, data = dataset
    ctx = clearinghouse.identities["auditor"].context()
    for rid, xml in data.values():
        req = urllib.request.Request(clearinghouse.url(f"/fhir/AuditEvent/{rid}/original"))
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            assert resp.headers["Content-Type"] == "application/xml"
            assert resp.read() == xml


def test_paging_follows_next_links(clearinghouse, dataset):
    t, data = dataset
    ctx = clearinghouse.identities["auditor"].context()
    status, page = fhir_get(clearinghouse.url("/fhir/AuditEvent"), ctx, [("source", f"SRC-{t}"), ("_count", "2")])
    assert status == 200 and page["total"] == 5 and page["type"] == "searchset"
    seen, pages = [], 0
    while True:
        pages += 1
        seen += [ev["id"] for ev in resources(page)]
        assert len(resources(page)) <= 2
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        parts = urlsplit(nxt[0])
        assert parts.path == "/fhir/AuditEvent"
        status, page = fhir_get(clearinghouse.url(f"{parts.path}?{parts.query}"), ctx)
        assert status == 200
        assert any(link["relation"] == "previous" for link in page["link"])
    assert pages == 3 and sorted(seen, key=int) == sorted((rid for rid, _ in data.values()), key=int)


def test_unknown_parameter_is_ignored_with_a_warning_or_refused_when_strict(clearinghouse, dataset):
    t, _ = dataset
    bundle = search(clearinghouse, [("source", f"SRC-{t}"), ("colour", "blue")])
    assert bundle["total"] == 5
    outcome = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "colour" in outcome[0]["issue"][0]["diagnostics"]
    req = urllib.request.Request(
        clearinghouse.url(f"/fhir/AuditEvent?source=SRC-{t}&colour=blue"), headers={"Prefer": "handling=strict"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=clearinghouse.identities["auditor"].context(), timeout=30)
    assert err.value.code == 400


@pytest.mark.parametrize(
    ("params", "status"),
    [([("date", "last-tuesday")], 400), ([("outcome", "5")], 400), ([("_count", "x")], 400)],
)
def test_bad_search_is_400_with_an_operation_outcome(clearinghouse, params, status):
    code, doc = fhir_get(clearinghouse.url("/fhir/AuditEvent"), clearinghouse.identities["auditor"].context(), params)
    assert code == status and doc["resourceType"] == "OperationOutcome" and doc["issue"][0]["severity"] == "error"


def test_only_auditors_may_read_the_audit_trail(clearinghouse):
    for who in ("phr", "edge"):
        code, doc = fhir_get(clearinghouse.url("/fhir/AuditEvent"), clearinghouse.identities[who].context())
        assert code == 403 and doc["issue"][0]["code"] == "forbidden"


def test_missing_record_and_wrong_paths(clearinghouse):
    ctx = clearinghouse.identities["auditor"].context()
    assert fhir_get(clearinghouse.url("/fhir/AuditEvent/999999999"), ctx)[0] == 404
    assert fhir_get(clearinghouse.url("/fhir/AuditEvent/abc"), ctx)[0] == 404
    assert fhir_get(clearinghouse.url("/fhir/AuditEvent/1/other"), ctx)[0] == 404
    req = urllib.request.Request(clearinghouse.url("/fhir/AuditEvent"), data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=ctx, timeout=30)
    assert err.value.code == 405 and json.loads(err.value.read())["resourceType"] == "OperationOutcome"
