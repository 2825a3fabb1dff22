"""PIXm (ITI-83) over HTTPS: GET /fhir/Patient/$ihe-pix answers a FHIR R4 Parameters resource in JSON,
or an OperationOutcome with the status ITI-83 prescribes for each failure."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlencode

from pix_samples import AFFINITY, add_domain, adt, cx, new_oid, send, uid

PATH = "/fhir/Patient/$ihe-pix"


def get(ch, params: list[tuple[str, str]] | str, who: str = "phr", method: str = "GET", headers=None):
    query = params if isinstance(params, str) else urlencode(params)
    conn = http.client.HTTPSConnection("localhost", ch.https_port, context=ch.identities[who].context())
    try:
        conn.request(method, f"{PATH}?{query}", headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.getheader("Content-Type"), json.loads(body) if body else None
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
    status, _, r = get(clearinghouse, [source, ("_format", "xml")])
    assert status == 406
    status, _, r = get(clearinghouse, [source], headers={"Accept": "application/fhir+xml"})
    assert status == 406
    assert get(clearinghouse, [source], headers={"Accept": "application/fhir+json"})[0] == 200
    status, _, r = get(clearinghouse, [source], method="POST")
    assert status == 405 and r["resourceType"] == "OperationOutcome"
    status, _, r = get(clearinghouse, [source], who="edge")
    assert status == 403 and issue(r)[1] == "forbidden"
