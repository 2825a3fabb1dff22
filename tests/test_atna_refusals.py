"""Requests refused before they reach a transaction are audited: each hostile or malformed SOAP request
sent over HTTPS (mutual TLS) and each unreadable HL7 message over MLLP gives a Security Alert
("Malformed request refused") naming the peer's certificate subject, the endpoint and what was wrong,
found through ITI-81."""

from __future__ import annotations

import http.client
import socket
import uuid

import edge
import pytest
from atna_client import agents_by_role, events_for, subtype_codes
from conftest import running_instance

ENVELOPE_LIMIT = 64 * 1024
SOAP12 = "application/soap+xml; charset=utf-8"
ITI18_ACTION = "urn:ihe:iti:2007:RegistryStoredQuery"


@pytest.fixture(scope="module")
def small(backend, tmp_path_factory):
    with running_instance(tmp_path_factory.mktemp("refusals"), backend, max_envelope_bytes=ENVELOPE_LIMIT) as running:
        yield running


def _envelope(action: str | None, body: str = "<x/>", ns: str = "http://www.w3.org/2003/05/soap-envelope") -> bytes:
    headers = f'<a:Action s:mustUnderstand="1">{action}</a:Action>' if action else ""
    headers += f"<a:MessageID>urn:uuid:{uuid.uuid4()}</a:MessageID>"
    return (
        f'<s:Envelope xmlns:s="{ns}" xmlns:a="http://www.w3.org/2005/08/addressing">'
        f"<s:Header>{headers}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE s:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>&xxe;</s:Body></s:Envelope>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<lolz>&lol2;</lolz>"""

BAD_MIME = (
    b"--not-the-boundary\r\nContent-Type: application/xop+xml\r\n\r\n<broken",
    'multipart/related; type="application/xop+xml"; boundary="MIMEBoundary"; start-info="application/soap+xml"',
)

# (what is sent, content type, the status expected, a fragment of the reason the audit record must carry)
CASES = {
    "not-xml": (b"this is not XML at all", SOAP12, 400, ""),
    "xxe": (XXE, SOAP12, 400, "DTD"),
    "billion-laughs": (BILLION_LAUGHS, SOAP12, 400, "DTD"),
    "oversized": (b"<a>" + b"x" * (ENVELOPE_LIMIT + 10) + b"</a>", SOAP12, 413, "exceeds the limit"),
    "soap11": (_envelope(ITI18_ACTION, ns="http://schemas.xmlsoap.org/soap/envelope/"), SOAP12, 400, "SOAP 1.1"),
    "soap11-content-type": (_envelope(ITI18_ACTION), "text/xml; charset=utf-8", 400, "SOAP 1.1"),
    "no-action": (_envelope(None), SOAP12, 400, "Action header is required"),
    "unknown-action": (_envelope("urn:example:NotATransaction"), SOAP12, 400, "is not supported"),
    "wrong-body": (_envelope(ITI18_ACTION, "<wrong/>"), SOAP12, 400, "expects exactly one"),
    "mime": (BAD_MIME[0], BAD_MIME[1], 400, "MTOM"),
}


def _post(running, path: str, body: bytes, content_type: str) -> int:
    conn = http.client.HTTPSConnection(
        "localhost", running.https_port, context=running.identities["edge"].context(), timeout=30
    )
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        return conn.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        return 0  # the server may close while a too-large body is still being sent
    finally:
        conn.close()


def test_malformed_soap_requests_are_security_alerts(small):
    statuses = {name: _post(small, "/xds/registry", body, ctype) for name, (body, ctype, _, _) in CASES.items()}
    for name, (_, _, status, _) in CASES.items():
        assert statuses[name] in (status, 0 if name == "oversized" else status), (name, statuses[name])

    events = events_for(small, [("subtype", "malformed-request"), ("agent", "edge")], n=len(CASES))
    for ev in events:
        assert ev["type"]["code"] == "110113" and ev["action"] == "E" and ev["outcome"] == "4"
        offender = agents_by_role(ev)["110153"]
        assert offender["who"]["identifier"]["value"] == "edge" and offender["name"].startswith("CN=edge,")
        assert offender["requestor"] is True and offender["network"]["address"] == "127.0.0.1"
        assert ev["entity"][0]["what"]["identifier"]["value"].endswith("/xds/registry")
    descriptions = [ev["outcomeDesc"] for ev in events]
    for name, (_, _, _, fragment) in CASES.items():
        assert any(fragment in d for d in descriptions), (name, fragment, descriptions)
    # A request that named a known transaction carries its EventTypeCode too.
    wrong_body = [ev for ev in events if "expects exactly one" in ev["outcomeDesc"]]
    assert wrong_body and "ITI-18" in subtype_codes(wrong_body[0])


def test_unreadable_hl7_is_a_security_alert(small):
    garbage = b"this is not an HL7 message " + uuid.uuid4().hex.encode()
    client = small.feed_client()
    try:
        ack = client.send(garbage)
    finally:
        client.close()
    assert b"MSA|AR" in ack
    (ev,) = events_for(small, [("subtype", "malformed-request"), ("agent", "edge"), ("entity-id", _feed_endpoint())])
    assert ev["type"]["code"] == "110113"
    assert "unreadable HL7 message" in ev["outcomeDesc"] and "does not begin with an MSH" in ev["outcomeDesc"]
    assert agents_by_role(ev)["110153"]["name"].startswith("CN=edge,")
    patient = edge.patient_for(edge.new_access_code(), "19800101")
    client = small.feed_client()  # the listener still serves after the refusal
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()


def _feed_endpoint() -> str:
    return f"mllp+tls://{socket.getfqdn()}/feed"
