"""PIXm (ITI-83) over HTTPS: GET /fhir/Patient/$ihe-pix answers a FHIR R4 Parameters resource in JSON or
XML (``_format`` or Accept), or an OperationOutcome with the status ITI-83 prescribes for each failure."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlencode

import pytest
from lxml import etree
from pix_samples import AFFINITY, add_domain, adt, cx, new_oid, send, uid

from pix_manager.fhir import JSON, XML, negotiate

PATH = "/fhir/Patient/$ihe-pix"


def get(ch, params: list[tuple[str, str]] | str, who: str = "phr", method: str = "GET", headers=None):
    query = params if isinstance(params, str) else urlencode(params)
    conn = http.client.HTTPSConnection("localhost", ch.https_port, context=ch.identities[who].context())
    try:
        conn.request(method, f"{PATH}?{query}", headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        ctype = resp.getheader("Content-Type")
        if ctype.startswith("application/fhir+xml"):
            return resp.status, ctype, etree.fromstring(body)
        return resp.status, ctype, json.loads(body) if body else None
    finally:
        conn.close()


def identifiers(resource) -> list[tuple[str, str]]:
    return sorted(
        (p["valueIdentifier"]["system"], p["valueIdentifier"]["value"])
        for p in resource.get("parameter", [])
        if p["name"] == "targetIdentifier"
    )


def issue(resource) -> tuple[str, str, str]:
    i = resource["issue"][0]
    return i["severity"], i["code"], i["diagnostics"]


def test_cross_referenced_identifiers(clearinghouse):
    site = add_domain(clearinghouse)
    mrn, rsna = uid(), uid()
    assert b"MSA|AA|" in send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(rsna)}"))
    status, ctype, resource = get(clearinghouse, [("sourceIdentifier", f"urn:oid:{site.oid}|{mrn}")])
    assert status == 200 and ctype.startswith("application/fhir+json")
    assert resource["resourceType"] == "Parameters"
    assert identifiers(resource) == [(f"urn:oid:{AFFINITY}", rsna)]
    assert resource["parameter"][0]["valueIdentifier"]["use"] == "official"

    both = [("sourceIdentifier", f"urn:oid:{AFFINITY}|{rsna}"), ("targetSystem", f"urn:oid:{site.oid}")]
    assert identifiers(get(clearinghouse, both)[2]) == [(f"urn:oid:{site.oid}", mrn)]
    other = add_domain(clearinghouse)
    status, _, resource = get(clearinghouse, [*both[:1], ("targetSystem", f"urn:oid:{other.oid}")])
    assert status == 200 and resource == {"resourceType": "Parameters"}
    comma = f"sourceIdentifier=urn:oid:{AFFINITY}|{rsna}&targetSystem=urn:oid:{site.oid},urn:oid:{AFFINITY}"
    assert identifiers(get(clearinghouse, comma)[2]) == [(f"urn:oid:{site.oid}", mrn)]


def test_failures(clearinghouse):
    site = add_domain(clearinghouse)
    known = uid()
    send(clearinghouse, adt("A04", site.cx(known)))
    status, _, r = get(clearinghouse, [("sourceIdentifier", f"urn:oid:{site.oid}|NOBODY{uid()}")])
    assert status == 404 and issue(r) == ("error", "not-found", "sourceIdentifier Patient Identifier not found")
    status, _, r = get(clearinghouse, [("sourceIdentifier", f"urn:oid:{new_oid()}|{known}")])
    assert status == 400 and issue(r) == ("error", "code-invalid", "sourceIdentifier Assigning Authority not found")
    status, _, r = get(clearinghouse, [("sourceIdentifier", f"http://fhir.example.org|{known}")])
    assert status == 400 and issue(r)[1] == "code-invalid"
    source = ("sourceIdentifier", f"urn:oid:{site.oid}|{known}")
    status, _, r = get(clearinghouse, [source, ("targetSystem", f"urn:oid:{new_oid()}")])
    assert status == 403 and issue(r) == ("error", "code-invalid", "targetSystem not found")
    status, _, r = get(clearinghouse, [])
    assert status == 400 and issue(r)[1] == "required"
    status, _, r = get(clearinghouse, [source, source])
    assert status == 400
    status, _, r = get(clearinghouse, [("sourceIdentifier", known)])
    assert status == 400 and issue(r)[1] == "invalid"
    status, _, r = get(clearinghouse, [source, ("_format", "text/html")])
    assert status == 406 and issue(r)[1] == "not-supported"
    status, _, r = get(clearinghouse, [source], headers={"Accept": "text/html"})
    assert status == 406
    assert get(clearinghouse, [source], headers={"Accept": "application/fhir+json"})[0] == 200
    status, _, r = get(clearinghouse, [source], method="POST")
    assert status == 405 and r["resourceType"] == "OperationOutcome"
    status, _, r = get(clearinghouse, [source], who="edge")
    assert status == 403 and issue(r)[1] == "forbidden"


F = "{http://hl7.org/fhir}"


def test_xml_answers(clearinghouse):
    site = add_domain(clearinghouse)
    mrn, rsna = uid(), "R&<" + uid()  # characters XML must escape
    escaped = rsna.replace("&", "\\T\\")  # HL7 escape of the subcomponent separator
    send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(escaped)}"))
    source = ("sourceIdentifier", f"urn:oid:{site.oid}|{mrn}")
    for request in ([source, ("_format", "xml")], [source, ("_format", "application/fhir+xml")]):
        status, ctype, root = get(clearinghouse, request, headers={"Accept": "application/fhir+json"})
        assert status == 200 and ctype.startswith("application/fhir+xml") and root.tag == f"{F}Parameters"
        (param,) = root.findall(f"{F}parameter")
        assert [c.tag for c in param] == [f"{F}name", f"{F}valueIdentifier"]
        assert param.find(f"{F}name").get("value") == "targetIdentifier"
        ident = param.find(f"{F}valueIdentifier")
        assert [c.tag.removeprefix(F) for c in ident] == ["use", "system", "value"]
        assert ident.find(f"{F}system").get("value") == f"urn:oid:{AFFINITY}"
        assert ident.find(f"{F}value").get("value") == rsna
    status, ctype, root = get(clearinghouse, [source], headers={"Accept": "application/fhir+xml"})
    assert status == 200 and root.tag == f"{F}Parameters"
    # Errors in XML too, OperationOutcome.issue elements in their FHIR order.
    status, _, root = get(clearinghouse, [("sourceIdentifier", f"urn:oid:{site.oid}|NOBODY"), ("_format", "xml")])
    assert status == 404 and root.tag == f"{F}OperationOutcome"
    issue_el = root.find(f"{F}issue")
    assert [c.tag.removeprefix(F) for c in issue_el] == ["severity", "code", "details", "diagnostics"]
    assert issue_el.find(f"{F}code").get("value") == "not-found"
    assert issue_el.find(f"{F}diagnostics").get("value") == "sourceIdentifier Patient Identifier not found"
    status, _, root = get(clearinghouse, [source, ("_format", "xml")], who="edge")
    assert status == 403 and root.find(f"{F}issue/{F}code").get("value") == "forbidden"


@pytest.mark.parametrize(
    "formats, accept, expected",
    [
        ([], "", JSON),
        ([], "*/*", JSON),
        ([], "application/fhir+xml", XML),
        ([], "application/xml;q=0.9, application/fhir+json", JSON),
        ([], "application/fhir+json;q=0.2, application/fhir+xml;q=0.8", XML),
        ([], "text/html, application/xml;q=0.1", XML),
        ([], "text/html", None),
        ([], "application/fhir+xml;q=0", None),
        (["xml"], "application/fhir+json", XML),
        (["json"], "application/fhir+xml", JSON),
        (["text/xml"], "", XML),
        (["turtle"], "", None),
        (["json", "xml"], "", None),
    ],
)
def test_format_negotiation(formats, accept, expected):
    assert negotiate(formats, accept) == expected
