"""Security refusals on the real ports: TLS client authentication, roles, hostile XML and bad SOAP."""

from __future__ import annotations

import datetime as dt
import http.client
import logging
import socket
import ssl
import time

import edge
import pytest
import xds_samples as xs

from clearinghouse import db, participants, pki
from clearinghouse.mllp import MllpClient
from clearinghouse.soap.client import SoapFault, https_client
from clearinghouse.tls import client_context


def _handshake(port: int, ctx: ssl.SSLContext) -> None:
    """Connect and force the server to finish judging the client (TLS 1.3 reports refusals on first read)."""
    with socket.create_connection(("localhost", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /xds/registry?wsdl HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = tls.recv(100)
            if not data:
                raise ConnectionResetError("closed by server")


def _refused(port: int, ctx: ssl.SSLContext) -> bool:
    try:
        _handshake(port, ctx)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return False


def _logged(caplog, *needles: str, timeout: float = 5.0) -> bool:
    """The server thread may log a refusal just after the client has seen it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(all(n in r.getMessage() for n in needles) for r in caplog.records):
            return True
        time.sleep(0.02)
    return False


def test_registered_client_is_accepted(clearinghouse):
    assert not _refused(clearinghouse.https_port, clearinghouse.identities["phr"].context())


def test_no_client_certificate_is_refused(clearinghouse, caplog):
    caplog.set_level(logging.WARNING, "clearinghouse.tls")
    assert _refused(clearinghouse.https_port, client_context(clearinghouse.settings.ca_cert_path))
    assert _logged(caplog, "TLS refused", "no client certificate")


def test_certificate_from_another_ca_is_refused_and_logged_with_subject(clearinghouse, caplog):
    caplog.set_level(logging.WARNING, "clearinghouse.tls")
    other_ca = pki.create_ca("Some Other CA")
    rogue = clearinghouse.write_identity("rogue", pki.issue_certificate(other_ca, "rogue-edge"))
    assert _refused(clearinghouse.https_port, rogue.context())
    assert _logged(caplog, "CN=rogue-edge")


def test_unregistered_certificate_from_our_ca_is_refused(clearinghouse, caplog):
    caplog.set_level(logging.WARNING, "clearinghouse.tls")
    ca = pki.load_ca(clearinghouse.settings.pki_dir)
    stray = clearinghouse.write_identity("stray", pki.issue_certificate(ca, "stray-edge"), ca.cert_pem)
    assert _refused(clearinghouse.https_port, stray.context())
    assert _logged(caplog, "CN=stray-edge", "not registered")


def test_expired_certificate_is_refused(clearinghouse, caplog):
    caplog.set_level(logging.WARNING, "clearinghouse.tls")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    old = clearinghouse.add_identity(
        "expired-edge", ["source"], not_before=past - dt.timedelta(days=10), not_after=past
    )
    assert _refused(clearinghouse.https_port, old.context())
    assert _logged(caplog, "CN=expired-edge", "expired")


def test_revoked_certificate_is_refused_on_every_port(clearinghouse, caplog):
    caplog.set_level(logging.WARNING, "clearinghouse.tls")
    ident = clearinghouse.add_identity("soon-revoked", ["source", "consumer"])
    assert not _refused(clearinghouse.https_port, ident.context())
    with db.transaction(clearinghouse.ch.sessions) as session:
        participants.revoke(session, "soon-revoked")
    assert _refused(clearinghouse.https_port, ident.context())
    assert _refused(clearinghouse.feed_port, ident.context())
    assert _logged(caplog, "CN=soon-revoked", "revoked")


def test_imported_certificate_from_a_site_ca_is_accepted(clearinghouse):
    site_ca = pki.create_ca("Site A Issuing CA")
    issued = pki.issue_certificate(site_ca, "site-a-edge")
    with db.transaction(clearinghouse.ch.sessions) as session:
        participants.register(session, "site-a", ["consumer"], issued.certificate, "imported")
    ident = clearinghouse.write_identity("site-a", issued)
    assert not _refused(clearinghouse.https_port, ident.context())


def test_old_tls_versions_are_refused(clearinghouse):
    ctx = clearinghouse.identities["phr"].context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    assert _refused(clearinghouse.https_port, ctx)


def test_weak_cipher_suites_are_refused(clearinghouse):
    ctx = clearinghouse.identities["phr"].context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("AES128-SHA")  # RSA key exchange, CBC: not BCP 195
    assert _refused(clearinghouse.https_port, ctx)


def test_consumer_may_not_submit_and_source_may_not_query(clearinghouse, caplog):
    caplog.set_level(logging.WARNING)
    patient = edge.patient_for(edge.new_access_code(), "19900101")
    with pytest.raises(SoapFault) as exc:
        edge.submit(clearinghouse.soap("phr", "/xds/repository"), edge.study(patient, samples=[]))
    assert exc.value.status == 403 and "role 'source'" in exc.value.reason
    with pytest.raises(SoapFault) as exc:
        edge.find_documents(clearinghouse.soap("edge", "/xds/registry"), patient)
    assert exc.value.status == 403 and "role 'consumer'" in exc.value.reason
    with pytest.raises(SoapFault):
        edge.retrieve(clearinghouse.soap("edge", "/xds/repository"), ["1.2.3"])
    with pytest.raises(SoapFault):
        clearinghouse.soap("phr", "/xds/registry").call(
            "urn:ihe:iti:2007:RegisterDocumentSet-b", xs.submission(patient)
        )
    assert _logged(caplog, "CN=phr")


def test_consumer_may_not_feed(clearinghouse):
    client = MllpClient("localhost", clearinghouse.feed_port, clearinghouse.identities["phr"].context())
    try:
        ack = client.send(edge.feed_message(edge.patient_for(edge.new_access_code(), "19900101")))
    finally:
        client.close()
    assert b"MSA|AR|" in ack


def _post(
    clearinghouse, path: str, body: bytes, content_type: str = "application/soap+xml; charset=UTF-8", who: str = "phr"
) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(
        "localhost", clearinghouse.https_port, context=clearinghouse.identities[who].context(), timeout=30
    )
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


ENV = (
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://www.w3.org/2005/08/addressing">'
    "<s:Header><a:Action>urn:ihe:iti:2007:RegistryStoredQuery</a:Action><a:MessageID>urn:uuid:1</a:MessageID>"
    "</s:Header><s:Body>{body}</s:Body></s:Envelope>"
)


@pytest.mark.parametrize(
    "payload, needle",
    [
        (
            '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>' + ENV.format(body="&xxe;"),
            b"DTD",
        ),
        (
            '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            + ENV.format(body="&b;"),
            b"DTD",
        ),
        (ENV.format(body="<a>" * 500 + "</a>" * 500), b"depth"),
        (ENV.format(body="<unclosed>"), b"well-formed"),
    ],
)
def test_hostile_xml_gets_a_sender_fault(clearinghouse, payload, needle):
    status, body = _post(clearinghouse, "/xds/registry", payload.encode())
    assert status == 400
    assert b"s:Sender" in body and needle in body
    assert b"root:" not in body  # nothing from /etc/passwd


def test_oversized_envelope_is_refused_before_it_is_read(clearinghouse):
    limit = clearinghouse.settings.max_envelope_bytes
    ctx = clearinghouse.identities["phr"].context()
    with socket.create_connection(("localhost", clearinghouse.https_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"POST /xds/registry HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/soap+xml\r\nContent-Length: %d\r\n\r\n<x>" % (limit + 10)
            )
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
    assert response.startswith(b"HTTP/1.1 413") and b"exceeds the limit" in response


@pytest.mark.parametrize(
    "envelope, content_type, code, needle",
    [
        (
            ENV.replace("http://www.w3.org/2003/05/soap-envelope", "http://schemas.xmlsoap.org/soap/envelope/"),
            "application/soap+xml",
            b"VersionMismatch",
            b"SOAP 1.1",
        ),
        (ENV.format(body="<x/>"), "text/xml", b"VersionMismatch", b"SOAP 1.2"),
        (
            ENV.replace("<a:Action>urn:ihe:iti:2007:RegistryStoredQuery</a:Action>", "").format(body="<x/>"),
            "application/soap+xml",
            b"MessageAddressingHeaderRequired",
            b"Action",
        ),
        (
            ENV.replace("<a:MessageID>urn:uuid:1</a:MessageID>", "").format(body="<x/>"),
            "application/soap+xml",
            b"MessageAddressingHeaderRequired",
            b"MessageID",
        ),
        (
            ENV.replace("RegistryStoredQuery", "NoSuchThing").format(body="<x/>"),
            "application/soap+xml",
            b"ActionNotSupported",
            b"NoSuchThing",
        ),
        (ENV.format(body="<x/>"), "application/soap+xml", b"Sender", b"AdhocQueryRequest"),
        (ENV.format(body="<x/>"), "multipart/related; boundary=zzz", b"Sender", b"MTOM"),
        (ENV.format(body="<x/>"), "application/json", b"Sender", b"Content-Type"),
    ],
)
def test_bad_soap_gets_the_right_fault(clearinghouse, envelope, content_type, code, needle):
    status, body = _post(clearinghouse, "/xds/registry", envelope.encode(), content_type)
    assert status in (400, 415)
    assert code in body and needle in body, body


def test_wsdl_is_published_with_the_ihe_messages_and_actions(clearinghouse):
    from lxml import etree

    conn = http.client.HTTPSConnection(
        "localhost", clearinghouse.https_port, context=clearinghouse.identities["phr"].context(), timeout=30
    )
    expected = {
        "/xds/registry": {
            "DocumentRegistry_RegisterDocumentSet-b": (
                "urn:ihe:iti:2007:RegisterDocumentSet-b",
                "SubmitObjectsRequest",
            ),
            "DocumentRegistry_RegistryStoredQuery": ("urn:ihe:iti:2007:RegistryStoredQuery", "AdhocQueryRequest"),
        },
        "/xds/repository": {
            "DocumentRepository_ProvideAndRegisterDocumentSet-b": (
                "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
                "ProvideAndRegisterDocumentSetRequest",
            ),
            "DocumentRepository_RetrieveDocumentSet": (
                "urn:ihe:iti:2007:RetrieveDocumentSet",
                "RetrieveDocumentSetRequest",
            ),
        },
    }
    w = {"w": "http://schemas.xmlsoap.org/wsdl/", "s12": "http://schemas.xmlsoap.org/wsdl/soap12/"}
    for path, ops in expected.items():
        conn.request("GET", path + "?wsdl")
        resp = conn.getresponse()
        assert resp.status == 200
        doc = etree.fromstring(resp.read())
        address = doc.find("w:service/w:port/s12:address", w).get("location")
        assert address == f"https://localhost:{clearinghouse.https_port}{path}"
        for name, (action, element) in ops.items():
            op = doc.find(f"w:binding/w:operation[@name='{name}']/s12:operation", w)
            assert op.get("soapAction") == action
            part = doc.find(f"w:message[@name='{name}_Message']/w:part", w)
            assert part.get("element").endswith(":" + element)
            pt = doc.find(f"w:portType/w:operation[@name='{name}']/w:output", w)
            assert pt.get("{http://www.w3.org/2006/05/addressing/wsdl}Action") == action + "Response"
    conn.close()


def test_in_process_peer_cannot_be_claimed_over_the_network(clearinghouse):
    # The environ key that carries the peer is set only by the TLS adapter; a header cannot forge it.
    status, body = _post(clearinghouse, "/xds/registry", ENV.format(body="<x/>").encode())
    assert status == 400


def test_https_client_helper_refuses_plain_http_urls(clearinghouse):
    with pytest.raises(ValueError):
        https_client(
            "http://localhost/xds/registry",
            clearinghouse.settings.ca_cert_path,
            clearinghouse.identities["phr"].cert,
            clearinghouse.identities["phr"].key,
        )
