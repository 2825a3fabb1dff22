"""What an audit sender and an auditor do against the clearinghouse: send ITI-20 syslog messages over
TLS (RFC 5425) and UDP (RFC 5426), search ITI-81 over HTTPS. Built from the real client pieces."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from OpenSSL import SSL

from clearinghouse import audit
from clearinghouse.audit import AuditNode, Party

# The older RFC 3881 form of an audit message (as pre-DICOM-schema senders write it).
RFC3881_MESSAGE = b"""<?xml version="1.0"?>
<AuditMessage>
  <EventIdentification EventActionCode="E" EventDateTime="2008-03-14T10:11:12-05:00" EventOutcomeIndicator="0">
    <EventID code="110112" codeSystemName="DCM" displayName="Query"/>
    <EventTypeCode code="ITI-9" codeSystemName="IHE Transactions" displayName="PIX Query"/>
  </EventIdentification>
  <ActiveParticipant UserID="pix-consumer" NetworkAccessPointID="192.168.1.5" NetworkAccessPointTypeCode="2">
    <RoleIDCode code="110153" codeSystemName="DCM" displayName="Source"/>
  </ActiveParticipant>
  <AuditSourceIdentification AuditSourceID="OLD-PIX"><AuditSourceTypeCode code="4"/></AuditSourceIdentification>
  <ParticipantObjectIdentification ParticipantObjectID="123^^^&amp;1.2.3&amp;ISO" ParticipantObjectTypeCode="1"
      ParticipantObjectTypeCodeRole="1">
    <ParticipantObjectIDTypeCode code="2"/>
  </ParticipantObjectIdentification>
</AuditMessage>"""

EDGE_NODE = AuditNode(source_id="SITE-A-EDGE", site_id="SITE-A", hostname="edge.site-a.example", app_name="edge")


def send_tls(port: int, identity: Any, messages: list[bytes], *, framed: bytes | None = None) -> None:
    """Send octet-counted messages on one connection, close it with a TLS close_notify and wait for the
    server's: it comes only once every record sent is durably stored. Anything else (a reset, an alert,
    an EOF without close_notify) raises, so returning means "acknowledged". pyOpenSSL here because the
    standard library cannot tell a close_notify from a bare EOF after unwrap()."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.use_certificate_file(str(identity.cert))
    ctx.use_privatekey_file(str(identity.key))
    ctx.load_verify_locations(str(identity.ca))
    ctx.set_verify(SSL.VERIFY_PEER, lambda _conn, _cert, _err, _depth, ok: bool(ok))
    with socket.create_connection(("localhost", port), timeout=30) as raw:
        raw.setblocking(True)  # pyOpenSSL wants a blocking socket; the kernel bounds the waits
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 30, 0))
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(b"localhost")
        conn.set_connect_state()
        conn.do_handshake()
        conn.sendall(framed if framed is not None else b"".join(audit.octet_frame(m) for m in messages))
        conn.shutdown()
        while True:
            try:
                conn.recv(65536)
            except SSL.ZeroReturnError:
                return
            except SSL.SysCallError as exc:
                raise ConnectionError(f"connection ended without the server's close_notify: {exc}") from exc


def send_udp(port: int, messages: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for m in messages:
            s.sendto(m, ("127.0.0.1", port))


def edge_export(patient: str, submission_set: str, *, outcome: int = audit.SUCCESS) -> bytes:
    """The ITI-41 Export event an edge (Document Source) records, as a syslog message."""
    msg = audit.provide_and_register(
        audit.SOURCE,
        node=EDGE_NODE,
        source=Party("edge-a", "10.1.2.3", "CN=edge-a"),
        destination=Party("https://clearinghouse.example/xds/repository", "clearinghouse.example"),
        patient_id=patient,
        submission_set_uid=submission_set,
        outcome=outcome,
    )
    return audit.syslog_message(msg.to_xml(), EDGE_NODE)


def fhir_get(url: str, ctx: ssl.SSLContext, params: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
    full = url + ("?" + urlencode(params) if params else "")
    req = urllib.request.Request(full, headers={"Accept": "application/fhir+json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            body = resp.read()
            status = resp.status
            ctype = resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        body, status, ctype = exc.read(), exc.code, exc.headers.get("Content-Type", "")
    return status, (json.loads(body) if "json" in ctype else body)


def search(running: Any, params: list[tuple[str, str]], who: str = "auditor") -> dict[str, Any]:
    status, doc = fhir_get(running.url("/fhir/AuditEvent"), running.identities[who].context(), params)
    assert status == 200, doc
    return doc


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def events_for(running: Any, params: list[tuple[str, str]], n: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Wait until at least ``n`` stored records match, and return them (events are recorded asynchronously)."""

    def found() -> list[dict[str, Any]] | None:
        got = resources(search(running, [*params, ("_count", "1000")]))
        return got if len(got) >= n else None

    return wait_for(found, timeout, f"{n} audit record(s) matching {params}")


def subtype_codes(ev: dict[str, Any]) -> list[str]:
    return [c["code"] for c in ev.get("subtype", [])]


def agents_by_role(ev: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a.get("type", {}).get("coding", [{}])[0].get("code", ""): a for a in ev["agent"]}


def entity_ids(ev: dict[str, Any], role: str | None = None) -> list[str]:
    return [
        e["what"]["identifier"]["value"]
        for e in ev.get("entity", [])
        if role is None or e.get("role", {}).get("code") == role
    ]


def now_tag() -> str:
    return datetime.now(UTC).strftime("%H%M%S%f")
