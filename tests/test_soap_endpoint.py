"""The SOAP endpoint's own dispatch over a real TLS listener: the reply's WS-Addressing headers, a body
sent pre-serialised, and a failing handler answered with a Receiver fault and audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from lxml import etree

from clearinghouse.https import HttpsServer
from clearinghouse.soap import envelope as soapenv
from clearinghouse.soap.client import SoapFault, https_client
from clearinghouse.soap.endpoint import Operation, SoapEndpoint, SoapRequest, SoapResult
from clearinghouse.tls import ServerTLS, TrustPolicy

TNS = "urn:example:probe"
ECHO, SPLICED, BROKEN = "urn:example:probe:Echo", "urn:example:probe:Spliced", "urn:example:probe:Broken"


def _echo(req: SoapRequest) -> SoapResult:
    out = etree.Element(f"{{{TNS}}}EchoResponse")
    out.text = req.body.text
    return SoapResult(out)


def _spliced(req: SoapRequest) -> SoapResult:
    body = f'<p:SplicedResponse xmlns:p="{TNS}"><p:item>a &amp; b</p:item><p:item/></p:SplicedResponse>'
    return SoapResult(etree.Element(f"{{{TNS}}}SplicedResponse"), body_xml=body.encode())


def _broken(req: SoapRequest) -> SoapResult:
    raise RuntimeError("handler bug")


def _op(name: str, action: str, handler: Any) -> Operation:
    return Operation(
        name=name,
        transaction=name,
        action=action,
        response_action=action + "Response",
        body_tag=f"{{{TNS}}}{name}",
        response_tag=f"{{{TNS}}}{name}Response",
        role="consumer",
        handler=handler,
    )


@pytest.fixture
def probe(clearinghouse) -> Iterator[tuple[str, list[tuple[str, BaseException | None]]]]:
    endpoint = SoapEndpoint(
        "Probe",
        TNS,
        [_op("Echo", ECHO, _echo), _op("Spliced", SPLICED, _spliced), _op("Broken", BROKEN, _broken)],
        clearinghouse.settings,
    )
    audited: list[tuple[str, BaseException | None]] = []
    endpoint.audit_hook = lambda op, request, result, error: audited.append((op.transaction, error))
    s = clearinghouse.settings
    tls = ServerTLS(s.server_cert_path, s.server_key_path, s.ca_cert_path, TrustPolicy(clearinghouse.ch.sessions))
    server = HttpsServer("localhost", 0, endpoint, tls, threads=2)
    server.start()
    try:
        yield f"https://localhost:{server.port}/probe", audited
    finally:
        server.stop()


def _client(clearinghouse, url: str):  # noqa: ANN001, ANN202
    ident = clearinghouse.identities["phr"]
    return https_client(url, ident.ca, ident.cert, ident.key, spool_dir=clearinghouse.tmp / "client-spool")


def test_reply_carries_action_and_relates_to_the_request(clearinghouse, probe):
    url, audited = probe
    body = etree.Element(f"{{{TNS}}}Echo")
    body.text = "ping"
    # A MessageID with markup characters comes back escaped, as the same value.
    message_id = "urn:uuid:0a6b7f0e-4c1e-4d55-9d0b-000000000001?<&>"
    reply = _client(clearinghouse, url).call(ECHO, body, message_id=message_id)
    assert reply.status == 200
    assert reply.action == ECHO + "Response"
    assert reply.relates_to == message_id
    assert reply.body.tag == f"{{{TNS}}}EchoResponse" and reply.body.text == "ping"
    action = reply.envelope.find(f"{{{soapenv.SOAP}}}Header/{{{soapenv.WSA}}}Action")
    assert action.get(f"{{{soapenv.SOAP}}}mustUnderstand") == "true"
    assert soapenv.header_value(reply.envelope, "MessageID").startswith("urn:uuid:")
    assert audited == [("Echo", None)]


def test_a_pre_serialised_body_is_sent_as_the_only_body_child(clearinghouse, probe):
    url, audited = probe
    reply = _client(clearinghouse, url).call(SPLICED, etree.Element(f"{{{TNS}}}Spliced"))
    assert reply.action == SPLICED + "Response"
    assert reply.body.tag == f"{{{TNS}}}SplicedResponse"
    assert [i.text for i in reply.body] == ["a & b", None]
    assert len(reply.envelope.find(f"{{{soapenv.SOAP}}}Body")) == 1
    assert audited == [("Spliced", None)]


def test_a_failing_handler_is_a_receiver_fault_and_is_audited(clearinghouse, probe):
    url, audited = probe
    client = _client(clearinghouse, url)
    with pytest.raises(SoapFault) as fault:
        client.call(BROKEN, etree.Element(f"{{{TNS}}}Broken"))
    assert (fault.value.code, fault.value.status, fault.value.reason) == ("Receiver", 500, "internal error")
    assert [(t, type(e), str(e)) for t, e in audited] == [("Broken", RuntimeError, "handler bug")]
    # The endpoint keeps answering.
    assert client.call(ECHO, etree.Element(f"{{{TNS}}}Echo")).status == 200


@pytest.mark.parametrize("relates_to", ["urn:uuid:1", "a&b<c>d\"e'f", "x\ry\nz\tw", "é€😀", "]]>", "&amp;"])
@pytest.mark.parametrize("action", ["urn:ihe:iti:2007:RegistryStoredQueryResponse", "a&<>\r"])
def test_reply_bytes_are_the_envelope_lxml_writes(relates_to, action):
    body = f'<p:R xmlns:p="{TNS}"><p:i>a &lt; b</p:i></p:R>'.encode()
    got = soapenv.reply_bytes(body, action=action, relates_to=relates_to)
    message_id = soapenv.header_value(etree.fromstring(got), "MessageID")
    want = soapenv.to_bytes(
        soapenv.envelope(etree.fromstring(body), action=action, message_id=message_id, relates_to=relates_to)
    )
    assert got == want
    assert soapenv.header_value(etree.fromstring(got), "RelatesTo") == relates_to.strip()
