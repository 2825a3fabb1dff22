"""ITI-104 Patient Identity Feed FHIR (PIXm 2:3.104) over real HTTPS with client certificates: conditional
update (create, revise), Resolve Duplicate Patient (replaced-by), Remove Patient (conditional delete),
read of the manager's Patient resources, the CapabilityStatement; refusals as OperationOutcomes; the
identifiers fed seen by ITI-9 and ITI-83 (with targetId), by ITI-10 subscribers and by the registry; the
audit records."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import quote, urlencode

import edge
import pytest
from atna_client import events_for
from lxml import etree
from pix_samples import AFFINITY, PixConsumer, Site, add_domain, adt, cx, pid3_of, query, send, uid

from pix_manager import admin
from pix_manager.admin import REGISTRY_DESTINATION
from pix_manager.models import DELIVERED

F = "{http://hl7.org/fhir}"
JSON_TYPE = "application/fhir+json"
XML_TYPE = "application/fhir+xml"


def request(ch, method: str, path: str, body: bytes | dict | None = None, *, who="edge", ctype=JSON_TYPE, headers=None):
    """One HTTPS request with ``who``'s certificate: (status, headers, parsed body)."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    conn = http.client.HTTPSConnection("localhost", ch.https_port, context=ch.identities[who].context())
    try:
        sent = dict(headers or {})
        if body is not None:
            sent.setdefault("Content-Type", ctype)
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        data = resp.read()
        got = {k.lower(): v for k, v in resp.getheaders()}
        kind = got.get("content-type", "")
        if not data:
            return resp.status, got, None
        return resp.status, got, etree.fromstring(data) if kind.startswith(XML_TYPE) else json.loads(data)
    finally:
        conn.close()


def cond(system_oid: str, value: str) -> str:
    return "/fhir/Patient?" + urlencode({"identifier": f"urn:oid:{system_oid}|{value}"})


def patient(*identifiers: tuple[str, str], active: bool = True, link: dict | None = None, **extra) -> dict:
    resource = {
        "resourceType": "Patient",
        "identifier": [{"system": f"urn:oid:{oid}", "value": value} for oid, value in identifiers],
        "active": active,
        "name": [{"family": "MOHR", "given": ["ALICE"]}],
        "gender": "female",
        "birthDate": "1958-01-30",
        **extra,
    }
    if link is not None:
        resource["link"] = [link]
    return resource


def replaced_by(oid: str, value: str) -> dict:
    return {"other": {"identifier": {"system": f"urn:oid:{oid}", "value": value}}, "type": "replaced-by"}


def pixm(ch, oid: str, value: str, *targets: str):
    params = [("sourceIdentifier", f"urn:oid:{oid}|{value}"), *[("targetSystem", f"urn:oid:{t}") for t in targets]]
    return request(ch, "GET", "/fhir/Patient/$ihe-pix?" + urlencode(params), who="phr")


def target_identifiers(resource) -> list[tuple[str, str]]:
    return sorted(
        (p["valueIdentifier"]["system"], p["valueIdentifier"]["value"])
        for p in resource.get("parameter", [])
        if p["name"] == "targetIdentifier"
    )


def target_ids(resource) -> list[str]:
    return [p["valueReference"]["reference"] for p in resource.get("parameter", []) if p["name"] == "targetId"]


def issue(resource) -> tuple[str, str]:
    return resource["issue"][0]["code"], resource["issue"][0]["diagnostics"]


@pytest.fixture
def site(clearinghouse) -> Site:
    return add_domain(clearinghouse, source="edge")


def test_create_then_revise(clearinghouse, site):
    mrn, rsna = uid(), uid()
    status, headers, created = request(
        clearinghouse, "PUT", cond(site.oid, mrn), patient((site.oid, mrn), (AFFINITY, rsna))
    )
    assert status == 201, created
    logical_id = created["id"]
    assert headers["location"].endswith(f"/fhir/Patient/{logical_id}/_history/1")
    assert headers["location"].startswith("https://")
    assert headers["etag"] == 'W/"1"' and headers["last-modified"].endswith("GMT")
    assert created["resourceType"] == "Patient" and created["meta"]["versionId"] == "1" and created["active"] is True
    assert created["identifier"] == [
        {"system": f"urn:oid:{site.oid}", "value": mrn},
        {"system": f"urn:oid:{AFFINITY}", "value": rsna},
    ]
    assert "name" not in created and "birthDate" not in created  # demographics are accepted, never kept

    # Revise: the same identifier is one match, so 200 and a new version of the same resource.
    rsna2 = uid()
    body = patient((site.oid, mrn), (AFFINITY, rsna), (AFFINITY, rsna2), id=logical_id)
    status, headers, revised = request(clearinghouse, "PUT", cond(site.oid, mrn), body)
    assert status == 200 and revised["id"] == logical_id and headers["etag"] == 'W/"2"'
    assert headers["location"].endswith(f"/Patient/{logical_id}/_history/2")

    # What was fed is cross-referenced: ITI-9 and ITI-83 see it, ITI-83 with the targetId to read.
    assert sorted(pid3_of(query(clearinghouse, site.cx(mrn)))) == sorted(
        [f"{rsna}^^^ISN&{AFFINITY}&ISO", f"{rsna2}^^^ISN&{AFFINITY}&ISO"]
    )
    status, _, found = pixm(clearinghouse, AFFINITY, rsna2)
    assert status == 200
    assert target_identifiers(found) == sorted([(f"urn:oid:{site.oid}", mrn), (f"urn:oid:{AFFINITY}", rsna)])
    assert target_ids(found) == [f"Patient/{logical_id}"]
    # targetSystem restricts targetId like targetIdentifier: the resource is keyed in the site's domain.
    assert target_ids(pixm(clearinghouse, AFFINITY, rsna, AFFINITY)[2]) == []
    assert target_ids(pixm(clearinghouse, site.oid, mrn)[2]) == [f"Patient/{logical_id}"]

    status, headers, read = request(clearinghouse, "GET", f"/fhir/Patient/{logical_id}", who="phr")
    assert status == 200 and read["id"] == logical_id and headers["etag"] == 'W/"2"'
    assert read == revised
    assert request(clearinghouse, "GET", f"/fhir/Patient/{logical_id}/_history/2", who="phr")[0] == 200
    assert request(clearinghouse, "GET", f"/fhir/Patient/{logical_id}/_history/1", who="phr")[0] == 404
    assert request(clearinghouse, "GET", "/fhir/Patient/no-such-patient", who="phr")[0] == 404

    # Prefer: return=minimal leaves the body out, the headers stay.
    status, headers, nothing = request(
        clearinghouse, "PUT", cond(site.oid, mrn), body, headers={"Prefer": "return=minimal"}
    )
    assert status == 200 and nothing is None and headers["etag"] == 'W/"3"'


def test_xml_request_and_answer(clearinghouse, site):
    mrn, rsna = uid(), "R&<" + uid()  # characters XML must escape
    body = (
        '<Patient xmlns="http://hl7.org/fhir">'
        f'<identifier><system value="urn:oid:{site.oid}"/><value value="{mrn}"/></identifier>'
        f'<identifier><system value="urn:oid:{AFFINITY}"/><value value="R&amp;&lt;{rsna[3:]}"/></identifier>'
        '<active value="true"/><name><family value="MOHR"/></name><birthDate value="1958-01-30"/>'
        "</Patient>"
    ).encode()
    status, headers, root = request(
        clearinghouse, "PUT", cond(site.oid, mrn), body, ctype=XML_TYPE, headers={"Accept": XML_TYPE}
    )
    assert status == 201 and headers["content-type"].startswith(XML_TYPE) and root.tag == f"{F}Patient"
    assert [c.tag.removeprefix(F) for c in root] == ["id", "meta", "identifier", "identifier", "active"]
    values = [i.find(f"{F}value").get("value") for i in root.findall(f"{F}identifier")]
    assert values == [mrn, rsna]
    status, _, found = pixm(clearinghouse, site.oid, mrn)
    assert target_identifiers(found) == [(f"urn:oid:{AFFINITY}", rsna)]


def test_resolve_duplicate_patient(clearinghouse, site):
    prior, surviving, rsna_p, rsna_s = uid(), uid(), uid(), uid()
    _, _, kept = request(
        clearinghouse, "PUT", cond(site.oid, surviving), patient((site.oid, surviving), (AFFINITY, rsna_s))
    )
    status, _, old = request(
        clearinghouse, "PUT", cond(site.oid, prior), patient((site.oid, prior), (AFFINITY, rsna_p))
    )
    assert status == 201
    merge = patient((site.oid, prior), active=False, link=replaced_by(site.oid, surviving))
    status, _, merged = request(clearinghouse, "PUT", cond(site.oid, prior), merge)
    assert status == 200 and merged["id"] == old["id"] and merged["active"] is False
    assert merged["link"] == [{"other": {"reference": f"Patient/{kept['id']}"}, "type": "replaced-by"}]

    # As an A40: the prior identifier is gone from queries, its RSNA-ID now with the surviving one.
    assert pixm(clearinghouse, site.oid, prior)[0] == 404
    status, _, found = pixm(clearinghouse, site.oid, surviving)
    assert target_identifiers(found) == sorted([(f"urn:oid:{AFFINITY}", rsna_p), (f"urn:oid:{AFFINITY}", rsna_s)])
    assert target_ids(found) == [f"Patient/{kept['id']}"]
    # The same merge again changes nothing; a revise of the retired identifier is refused.
    assert request(clearinghouse, "PUT", cond(site.oid, prior), merge)[0] == 200
    status, _, refused = request(clearinghouse, "PUT", cond(site.oid, prior), patient((site.oid, prior)))
    assert status == 422 and refused["issue"][0]["code"] == "not-found"

    # The survivor named by a reference to its Patient resource works the same way.
    other = uid()
    request(clearinghouse, "PUT", cond(site.oid, other), patient((site.oid, other)))
    by_ref = patient(
        (site.oid, other), active=False, link={"other": {"reference": f"Patient/{kept['id']}"}, "type": "replaced-by"}
    )
    assert request(clearinghouse, "PUT", cond(site.oid, other), by_ref)[0] == 200
    assert pixm(clearinghouse, site.oid, other)[0] == 404
    # Refused merges: an unknown prior, another domain, an unknown reference.
    status, _, r = request(
        clearinghouse, "PUT", cond(site.oid, uid()), patient(active=False, link=replaced_by(site.oid, surviving))
    )
    assert status == 422 and r["issue"][0]["code"] == "not-found"
    status, _, r = request(
        clearinghouse, "PUT", cond(site.oid, surviving), patient(active=False, link=replaced_by(AFFINITY, rsna_s))
    )
    assert status == 422 and r["issue"][0]["code"] == "invalid"
    dangling = {"other": {"reference": "Patient/unknown-id"}, "type": "replaced-by"}
    assert request(clearinghouse, "PUT", cond(site.oid, surviving), patient(link=dangling))[0] == 422
    assert pixm(clearinghouse, site.oid, surviving)[0] == 200  # nothing refused changed anything


def test_remove_patient(clearinghouse, site):
    mrn, rsna = uid(), uid()
    _, _, created = request(clearinghouse, "PUT", cond(site.oid, mrn), patient((site.oid, mrn), (AFFINITY, rsna)))
    status, _, body = request(clearinghouse, "DELETE", cond(site.oid, mrn))
    assert status == 204 and body is None
    # Not returned by PIX queries any more; the RSNA-ID it was linked to stays (it is not the one removed).
    assert pixm(clearinghouse, site.oid, mrn)[0] == 404
    assert b"QAK|" in query(clearinghouse, site.cx(mrn)) and b"|AE|" in query(clearinghouse, site.cx(mrn))
    status, _, found = pixm(clearinghouse, AFFINITY, rsna)
    assert status == 200 and target_identifiers(found) == [] and target_ids(found) == []
    status, _, gone = request(clearinghouse, "GET", f"/fhir/Patient/{created['id']}", who="phr")
    assert status == 410 and gone["issue"][0]["code"] == "deleted"
    # Deleting what is not there is still a success (http.html conditional delete: no match).
    assert request(clearinghouse, "DELETE", cond(site.oid, mrn))[0] == 204
    # The identifier may be fed again: a new resource.
    status, _, again = request(clearinghouse, "PUT", cond(site.oid, mrn), patient((site.oid, mrn)))
    assert status == 201 and again["id"] != created["id"]
    assert pixm(clearinghouse, site.oid, mrn)[0] == 200


def test_unknown_domain(clearinghouse, site):
    mrn, unknown = uid(), "1.2.826.0.1.3680043.10.1045.999999999"
    status, _, r = request(clearinghouse, "PUT", cond(unknown, mrn), patient((unknown, mrn)))
    assert status == 422 and r["resourceType"] == "OperationOutcome"
    assert r["issue"][0]["code"] == "code-invalid" and r["issue"][0]["expression"] == ["identifier"]
    url = "/fhir/Patient?" + urlencode({"identifier": f"http://fhir.example.org|{mrn}"})
    assert request(clearinghouse, "PUT", url, patient())[0] == 422
    assert request(clearinghouse, "DELETE", cond(unknown, mrn))[0] == 422
    # Identifiers of unknown systems in the body are not cross-referenced (as HL7 v3 asOtherIDs).
    body = patient((site.oid, mrn), (unknown, "X1"))
    body["identifier"].append({"system": "http://ns.example/ssn", "value": "123"})
    status, _, created = request(clearinghouse, "PUT", cond(site.oid, mrn), body)
    assert status == 201 and created["identifier"] == [{"system": f"urn:oid:{site.oid}", "value": mrn}]
    assert target_identifiers(pixm(clearinghouse, site.oid, mrn)[2]) == []


def test_malformed_requests(clearinghouse, site):
    mrn = uid()
    url = cond(site.oid, mrn)
    status, _, r = request(clearinghouse, "PUT", url, b'{"resourceType": "Patient", ')
    assert status == 400 and r["issue"][0]["code"] == "structure"
    status, _, r = request(clearinghouse, "PUT", url, b"<Patient xmlns='http://hl7.org/fhir'><id", ctype=XML_TYPE)
    assert status == 400 and r["issue"][0]["code"] == "structure"
    doctype = b'<!DOCTYPE x [<!ENTITY e "e">]><Patient xmlns="http://hl7.org/fhir"/>'
    assert request(clearinghouse, "PUT", url, doctype, ctype=XML_TYPE)[0] == 400
    assert request(clearinghouse, "PUT", url, b"<Patient/>", ctype=XML_TYPE)[0] == 400  # not the FHIR namespace
    assert request(clearinghouse, "PUT", url, {"resourceType": "Observation"})[0] == 400
    assert request(clearinghouse, "PUT", url, {"resourceType": "Patient", "identifier": {"value": "x"}})[0] == 400
    assert request(clearinghouse, "PUT", url, {"resourceType": "Patient", "active": "yes"})[0] == 400
    assert request(clearinghouse, "PUT", url, {"resourceType": "Patient", "link": [{"type": "replaced-by"}]})[0] == 400
    assert request(clearinghouse, "PUT", url, b"")[0] == 400
    assert request(clearinghouse, "PUT", url, patient((site.oid, mrn)), ctype="text/plain")[0] == 415
    status, _, r = request(clearinghouse, "PUT", "/fhir/Patient", patient((site.oid, mrn)))
    assert status == 400 and r["issue"][0]["code"] == "required"
    assert request(clearinghouse, "PUT", "/fhir/Patient?identifier=" + quote(mrn), patient())[0] == 400
    assert request(clearinghouse, "PUT", url + "&name=MOHR", patient())[0] == 400
    # A client-chosen id is refused: this server assigns ids (update as create is not supported).
    status, _, r = request(clearinghouse, "PUT", url, patient((site.oid, mrn), id="my-own-id"))
    assert status == 400 and r["issue"][0]["expression"] == ["id"]
    assert request(clearinghouse, "GET", "/fhir/Patient?identifier=x", who="phr")[0] == 405
    # Nothing refused was stored.
    assert pixm(clearinghouse, site.oid, mrn)[0] == 404


def test_roles(clearinghouse, site):
    mrn = uid()
    status, _, r = request(clearinghouse, "PUT", cond(site.oid, mrn), patient((site.oid, mrn)), who="phr")
    assert status == 403 and r["issue"][0]["code"] == "forbidden"
    assert request(clearinghouse, "DELETE", cond(site.oid, mrn), who="phr")[0] == 403
    # A source, but not this domain's source (ITI-104: one Patient Identity Source per domain).
    clearinghouse.identities.get("edge-b") or clearinghouse.add_identity("edge-b", ["source"])
    status, _, r = request(clearinghouse, "PUT", cond(site.oid, mrn), patient((site.oid, mrn)), who="edge-b")
    assert status == 403 and r["issue"][0]["code"] == "forbidden"
    assert pixm(clearinghouse, site.oid, mrn)[0] == 404
    # Reading needs consumer or source; the auditor has neither.
    _, _, created = request(clearinghouse, "PUT", cond(site.oid, mrn), patient((site.oid, mrn)))
    assert request(clearinghouse, "GET", f"/fhir/Patient/{created['id']}", who="auditor")[0] == 403
    assert request(clearinghouse, "GET", f"/fhir/Patient/{created['id']}", who="edge")[0] == 200
    refused = events_for(clearinghouse, [("subtype", "ITI-104"), ("type", "110113")])
    assert any(e["outcome"] != "0" for e in refused)


def test_capability_statement(clearinghouse):
    status, _, cap = request(clearinghouse, "GET", "/fhir/metadata", who="phr")
    assert status == 200 and cap["resourceType"] == "CapabilityStatement" and cap["fhirVersion"] == "4.0.1"
    (resource,) = cap["rest"][0]["resource"]
    assert resource["type"] == "Patient" and resource["conditionalUpdate"] is True
    assert resource["conditionalDelete"] == "single"
    status, _, root = request(clearinghouse, "GET", "/fhir/metadata?_format=xml", who="auditor")
    assert status == 200 and root.tag == f"{F}CapabilityStatement"


def test_audit_records(clearinghouse, site):
    mrn, other = uid(), uid()
    request(clearinghouse, "PUT", cond(site.oid, mrn), patient((site.oid, mrn)))
    request(clearinghouse, "PUT", cond(site.oid, mrn), patient((site.oid, mrn)))
    request(clearinghouse, "DELETE", cond(site.oid, mrn))
    request(clearinghouse, "PUT", cond(site.oid, other), {"resourceType": "Observation"})
    events = events_for(
        clearinghouse, [("subtype", "ITI-104"), ("patient.identifier", f"{mrn}^^^&{site.oid}&ISO")], n=3
    )
    assert sorted(e["action"] for e in events) == ["C", "D", "U"]
    for e in events:
        assert e["type"]["code"] == "110110" and e["outcome"] == "0"
        assert any(
            ent.get("what", {}).get("identifier", {}).get("value", "").startswith("Patient/") for ent in e["entity"]
        )
    (failed,) = events_for(
        clearinghouse, [("subtype", "ITI-104"), ("patient.identifier", f"{other}^^^&{site.oid}&ISO")]
    )
    assert failed["outcome"] == "8" and "structure" in failed.get("outcomeDesc", "")


def _wait(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (got := predicate()) is not None:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_new_identifiers_reach_subscribers_and_registry(clearinghouse, site):
    consumer = PixConsumer(clearinghouse.settings.pki_dir).start()
    name = "fhir-feed-" + uid().lower()
    with clearinghouse.ch.engine.begin() as conn:
        admin.subscribe(conn, name, consumer.url, [site.namespace])
    try:
        mrn = uid()
        rsna_cx = edge.patient_for(edge.new_access_code(), "19700412")
        rsna = rsna_cx.split("^^^")[0]
        status, _, _ = request(clearinghouse, "PUT", cond(site.oid, mrn), patient((site.oid, mrn), (AFFINITY, rsna)))
        assert status == 201
        (notice,) = consumer.wait_for(1)
        assert f"{mrn}^^^{site.namespace}&{site.oid}&ISO" in pid3_of(notice.message)

        def delivered():
            with clearinghouse.ch.engine.connect() as conn:
                rows = [
                    e
                    for e in admin.outbox(conn)
                    if e.destination == REGISTRY_DESTINATION and rsna.encode() in e.message
                ]
            return rows if rows and all(e.status == DELIVERED for e in rows) else None

        (registration,) = _wait(delivered, "the registry feed")
        assert b"ADT^A01" in registration.message and mrn.encode() not in registration.message
        # The registry now knows the RSNA-ID: a submission for it is accepted.
        reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), edge.study(rsna_cx, report=False))
        assert reply.body.get("status") == edge.SUCCESS

        # Removing the site's identifier tells the subscriber what the person has left (nothing of its domain).
        more = uid()
        request(clearinghouse, "PUT", cond(site.oid, more), patient((site.oid, more), (AFFINITY, rsna)))
        received = consumer.wait_for(2)
        assert sorted(pid3_of(received[1].message)) == sorted(
            [f"{mrn}^^^{site.namespace}&{site.oid}&ISO", f"{more}^^^{site.namespace}&{site.oid}&ISO"]
        )
        assert request(clearinghouse, "DELETE", cond(site.oid, mrn))[0] == 204
        received = consumer.wait_for(3)
        assert pid3_of(received[2].message) == [f"{more}^^^{site.namespace}&{site.oid}&ISO"]
    finally:
        consumer.stop()
        with clearinghouse.ch.engine.begin() as conn:
            admin.unsubscribe(conn, name)


def test_iti8_identifiers_have_no_target_id(clearinghouse, site):
    mrn, rsna = uid(), uid()
    assert b"MSA|AA|" in send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(rsna)}"))
    status, _, found = pixm(clearinghouse, site.oid, mrn)
    assert status == 200 and target_ids(found) == []


def test_xml_merge_and_link_rules(clearinghouse, site):
    prior, surviving = uid(), uid()
    request(clearinghouse, "PUT", cond(site.oid, surviving), patient((site.oid, surviving)))
    request(clearinghouse, "PUT", cond(site.oid, prior), patient((site.oid, prior)))
    link = (
        '<link><other><identifier><system value="urn:oid:{oid}"/><value value="{value}"/></identifier></other>'
        '<type value="replaced-by"/></link>'
    )
    two = (
        '<Patient xmlns="http://hl7.org/fhir"><active value="false"/>'
        + link.format(oid=site.oid, value=surviving)
        + link.format(oid=site.oid, value=uid())
        + "</Patient>"
    ).encode()
    status, _, r = request(clearinghouse, "PUT", cond(site.oid, prior), two, ctype=XML_TYPE)
    assert status == 422 and r["issue"][0]["code"] == "invalid"  # one survivor, not several
    seealso = '<link><other><reference value="Patient/x"/></other><type value="seealso"/></link>'
    one = (
        '<Patient xmlns="http://hl7.org/fhir"><active value="false"/>'
        + link.format(oid=site.oid, value=surviving)
        + seealso
        + "</Patient>"
    ).encode()
    status, _, root = request(
        clearinghouse, "PUT", cond(site.oid, prior), one, ctype=XML_TYPE, headers={"Accept": XML_TYPE}
    )
    assert status == 200 and root.find(f"{F}active").get("value") == "false"
    assert root.find(f"{F}link/{F}type").get("value") == "replaced-by"
    assert pixm(clearinghouse, site.oid, prior)[0] == 404
    assert pixm(clearinghouse, site.oid, surviving)[0] == 200


def test_remove_a_survivor_removes_what_was_merged_into_it(clearinghouse, site):
    prior, surviving = uid(), uid()
    request(clearinghouse, "PUT", cond(site.oid, surviving), patient((site.oid, surviving)))
    request(clearinghouse, "PUT", cond(site.oid, prior), patient((site.oid, prior)))
    merge = patient((site.oid, prior), active=False, link=replaced_by(site.oid, surviving))
    assert request(clearinghouse, "PUT", cond(site.oid, prior), merge)[0] == 200
    assert request(clearinghouse, "DELETE", cond(site.oid, surviving))[0] == 204
    assert pixm(clearinghouse, site.oid, surviving)[0] == 404
    # The retired identifier was a reference to the removed one: it went too, so it is no longer refused.
    status, _, revived = request(clearinghouse, "PUT", cond(site.oid, prior), patient((site.oid, prior)))
    assert status == 200 and revived["active"] is True and "link" not in revived
    assert pixm(clearinghouse, site.oid, prior)[0] == 200
