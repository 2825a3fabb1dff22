"""PIXv3 over SOAP 1.2 on the HTTPS port (/pix/v3): ITI-44 feed (add, revise, merge) acknowledged by
MCCI_IN000002UV01, ITI-45 query answered by PRPA_IN201310UV02, with the IHE response cases."""

from __future__ import annotations

import pytest
from pix_samples import AFFINITY, add_domain, cx, new_oid, pid3_of, query, uid, v3_feed, v3_query

from clearinghouse.soap.client import SoapFault

V3 = {"hl7": "urn:hl7-org:v3"}
ADD, REVISE, MERGE, QUERY = "PRPA_IN201301UV02", "PRPA_IN201302UV02", "PRPA_IN201304UV02", "PRPA_IN201309UV02"


def call(ch, interaction: str, body, who: str = "edge"):
    return ch.soap(who, "/pix/v3").call(f"urn:hl7-org:v3:{interaction}", body)


def ack_of(reply) -> tuple[str, list[tuple[str, str]]]:
    body = reply.body
    code = body.find("hl7:acknowledgement/hl7:typeCode", V3).get("code")
    details = [
        (d.find("hl7:code", V3).get("code"), d.findtext("hl7:location", default="", namespaces=V3))
        for d in body.findall("hl7:acknowledgement/hl7:acknowledgementDetail", V3)
    ]
    return code, details


def ids_of(reply) -> list[tuple[str, str]]:
    path = "hl7:controlActProcess/hl7:subject/hl7:registrationEvent/hl7:subject1/hl7:patient/hl7:id"
    return sorted((i.get("root"), i.get("extension")) for i in reply.body.findall(path, V3))


def status_of(reply) -> str:
    return reply.body.find("hl7:controlActProcess/hl7:queryAck/hl7:queryResponseCode", V3).get("code")


def test_feed_then_query(clearinghouse):
    site = add_domain(clearinghouse)
    mrn, rsna = uid(), uid()
    feed = v3_feed(ADD, [(site.oid, mrn)], others=[(AFFINITY, rsna), ("2.16.840.1.113883.4.1", "111-22-3333")])
    reply = call(clearinghouse, ADD, feed)
    assert reply.action == "urn:hl7-org:v3:MCCI_IN000002UV01"
    assert reply.body.tag == "{urn:hl7-org:v3}MCCI_IN000002UV01" and ack_of(reply) == ("AA", [])
    target = reply.body.find("hl7:acknowledgement/hl7:targetMessage/hl7:id", V3)
    assert target.get("extension") == feed.find("hl7:id", V3).get("extension")
    receiver = reply.body.find("hl7:receiver/hl7:device/hl7:id", V3)
    assert receiver.get("root") == "1.2.840.114350.1.13.99997.2.7788"  # the sender's device

    answer = call(clearinghouse, QUERY, v3_query(site.oid, mrn), who="phr")
    assert answer.action == "urn:hl7-org:v3:PRPA_IN201310UV02"
    assert ack_of(answer) == ("AA", []) and status_of(answer) == "OK"
    assert ids_of(answer) == [(AFFINITY, rsna)]  # the SSN root is not a domain here: not linked
    qbp = answer.body.find("hl7:controlActProcess/hl7:queryByParameter", V3)
    value = qbp.find("hl7:parameterList/hl7:patientIdentifier/hl7:value", V3)
    assert (value.get("root"), value.get("extension")) == (site.oid, mrn)  # the query is echoed
    # What the v3 feed stored, the v2 query finds.
    assert pid3_of(query(clearinghouse, cx(rsna))) == [site.full(mrn)]


def test_query_cases(clearinghouse):
    site, other = add_domain(clearinghouse), add_domain(clearinghouse)
    mrn, rsna = uid(), uid()
    assert ack_of(call(clearinghouse, ADD, v3_feed(ADD, [(site.oid, mrn), (AFFINITY, rsna)])))[0] == "AA"

    filtered = call(clearinghouse, QUERY, v3_query(AFFINITY, rsna, [site.oid]), who="phr")
    assert status_of(filtered) == "OK" and ids_of(filtered) == [(site.oid, mrn)]
    nothing = call(clearinghouse, QUERY, v3_query(AFFINITY, rsna, [other.oid]), who="phr")
    assert ack_of(nothing) == ("AA", []) and status_of(nothing) == "NF" and ids_of(nothing) == []

    base = f"/{QUERY}/controlActProcess/queryByParameter/parameterList"
    unknown = call(clearinghouse, QUERY, v3_query(site.oid, "NOBODY" + uid()), who="phr")
    assert ack_of(unknown) == ("AE", [("204", f"{base}/patientIdentifier/value")]) and status_of(unknown) == "AE"
    domains = call(clearinghouse, QUERY, v3_query(site.oid, mrn, [new_oid(), site.oid, new_oid()]), who="phr")
    assert ack_of(domains) == ("AE", [("204", f"{base}/dataSource[1]/value"), ("204", f"{base}/dataSource[3]/value")])
    assert status_of(domains) == "AE" and ids_of(domains) == []


def test_revise_links_and_merge_retires(clearinghouse):
    site = add_domain(clearinghouse)
    old, new, rsna = uid(), uid(), uid()
    call(clearinghouse, ADD, v3_feed(ADD, [(site.oid, old)]))
    assert ack_of(call(clearinghouse, REVISE, v3_feed(REVISE, [(site.oid, old), (AFFINITY, rsna)])))[0] == "AA"
    assert ids_of(call(clearinghouse, QUERY, v3_query(site.oid, old), who="phr")) == [(AFFINITY, rsna)]

    merge = v3_feed(MERGE, [(site.oid, new)], prior=[(site.oid, old)])
    assert ack_of(call(clearinghouse, MERGE, merge)) == ("AA", [])
    assert ids_of(call(clearinghouse, QUERY, v3_query(AFFINITY, rsna), who="phr")) == [(site.oid, new)]
    retired = call(clearinghouse, QUERY, v3_query(site.oid, old), who="phr")
    assert ack_of(retired)[0] == "AE" and status_of(retired) == "AE"


def test_feed_refusals_and_duplicates(clearinghouse):
    site = add_domain(clearinghouse)
    path = f"/{ADD}/controlActProcess/subject/registrationEvent/subject1/patient"
    unknown = call(clearinghouse, ADD, v3_feed(ADD, [(new_oid(), uid())]))
    assert ack_of(unknown) == ("AE", [("204", f"{path}/id[1]/@root")])
    empty = call(clearinghouse, ADD, v3_feed(ADD, [(site.oid, "")]))
    assert ack_of(empty) == ("AE", [("101", f"{path}/id[1]/@extension")])
    merge_unknown = call(clearinghouse, MERGE, v3_feed(MERGE, [(site.oid, uid())], prior=[(site.oid, uid())]))
    code, details = ack_of(merge_unknown)
    assert code == "AE" and details[0][0] == "204" and "priorRegisteredRole/id[1]" in details[0][1]

    message_id = "DUP" + uid()
    first = call(clearinghouse, ADD, v3_feed(ADD, [(site.oid, uid())], message_id=message_id))
    again = call(clearinghouse, ADD, v3_feed(ADD, [(site.oid, uid())], message_id=message_id))
    assert ack_of(first) == ("AA", []) and ack_of(again) == ("AE", [("205", f"/{ADD}/id")])
    same = v3_feed(ADD, [(site.oid, uid())], message_id="SAME" + uid())
    ack1, ack2 = call(clearinghouse, ADD, same), call(clearinghouse, ADD, same)
    one = ack1.body.find("hl7:id", V3).get("root")
    assert ack_of(ack2) == ("AA", []) and ack2.body.find("hl7:id", V3).get("root") == one  # the stored answer


def test_roles_and_wsdl(clearinghouse):
    with pytest.raises(SoapFault) as exc:
        call(clearinghouse, ADD, v3_feed(ADD, [(AFFINITY, uid())]), who="phr")
    assert exc.value.status == 403
    with pytest.raises(SoapFault) as exc:
        call(clearinghouse, QUERY, v3_query(AFFINITY, uid()), who="edge")
    assert exc.value.status == 403

    import http.client

    conn = http.client.HTTPSConnection(
        "localhost", clearinghouse.https_port, context=clearinghouse.identities["phr"].context()
    )
    conn.request("GET", "/pix/v3?wsdl")
    wsdl = conn.getresponse().read()
    conn.close()
    for op in (ADD, REVISE, MERGE, QUERY):
        assert f"PIXManager_{op}".encode() in wsdl and f"urn:hl7-org:v3:{op}".encode() in wsdl
