"""ITI-20 on the real ports: syslog over mutual TLS with octet counting, syslog over UDP; malformed,
oversized, cut-short and mis-framed input is stored and flagged, never dropped."""

from __future__ import annotations

import base64
import socket
from datetime import UTC, datetime, timedelta

import pytest
from atna_client import (
    EDGE_NODE,
    RFC3881_MESSAGE,
    edge_export,
    events_for,
    fhir_get,
    now_tag,
    resources,
    search,
    send_tls,
    send_udp,
    wait_for,
)
from conftest import running_instance
from OpenSSL import SSL

from clearinghouse import audit, pki

LIMIT = 8192


@pytest.fixture(scope="module")
def arr(backend, tmp_path_factory):
    with running_instance(tmp_path_factory.mktemp("arr"), backend, max_syslog_message_bytes=LIMIT) as running:
        yield running


def _ext(ev: dict, name: str) -> list:
    return [
        next(v for k, v in e.items() if k.startswith("value")) for e in ev["extension"] if e["url"].endswith("/" + name)
    ]


def _original(arr, ev: dict) -> bytes:
    status, body = fhir_get(arr.url(f"/fhir/AuditEvent/{ev['id']}/original"), arr.identities["auditor"].context())
    assert status == 200
    return body


def _since() -> str:
    return (datetime.now(UTC) - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _flagged_containing(arr, needle: bytes, since: str) -> dict:
    """The record received since ``since``, flagged invalid, whose original bytes contain ``needle``."""

    def find() -> dict | None:
        for ev in resources(search(arr, [("_count", "1000"), ("date", f"ge{since}")])):
            if ev["type"]["code"] != "110101" and not _ext(ev, "valid")[0] and needle in _original(arr, ev):
                return ev
        return None

    return wait_for(find, what=f"a flagged record containing {needle!r}")


def test_tls_records_are_stored_with_the_sender_identity(arr):
    tag = now_tag()
    messages = [edge_export(f"p{tag}^^^&1.2.3&ISO", f"1.2.{tag}.{i}") for i in range(50)]
    send_tls(arr.ch.audit.syslog_tls.port, arr.identities["edge"], messages)
    events = events_for(arr, [("patient.identifier", f"p{tag}^^^&1.2.3&ISO")], n=50)
    assert len(events) == 50
    for ev in events:
        assert _ext(ev, "valid") == [True] and _ext(ev, "transport") == ["tls"]
        assert _ext(ev, "sender-certificate-subject")[0].startswith("CN=edge,")
        assert ev["source"]["observer"]["identifier"]["value"] == EDGE_NODE.source_id
    assert {_original(arr, ev) for ev in events} == {m[m.index(b"<?xml") :] for m in messages}


def test_udp_records_are_stored(arr):
    tag = now_tag()
    send_udp(arr.ch.audit.syslog_udp.port, [edge_export(f"u{tag}^^^&1.2.3&ISO", f"9.{tag}.{i}") for i in range(5)])
    events = events_for(arr, [("patient.identifier", f"u{tag}^^^&1.2.3&ISO")], n=5)
    assert all(_ext(ev, "transport") == ["udp"] and _ext(ev, "valid") == [True] for ev in events)


def test_rfc3881_messages_are_accepted(arr):
    send_tls(
        arr.ch.audit.syslog_tls.port,
        arr.identities["edge"],
        [b"<85>1 - old-pix pix 1 IHE+RFC-3881 - " + RFC3881_MESSAGE],
    )
    (ev,) = events_for(arr, [("source", "OLD-PIX")])
    assert _ext(ev, "valid") == [True]
    assert ev["type"]["code"] == "110112" and ev["subtype"][0]["code"] == "ITI-9"
    assert ev["recorded"].startswith("2008-03-14T15:11:12")


def test_malformed_messages_are_stored_and_flagged(arr):
    since = _since()
    tag = now_tag().encode()
    bad = {
        b"not an acceptable XML document": b"<85>1 2026-01-01T00:00:00Z host app 1 IHE+RFC-3881 - not XML a" + tag,
        b"no <PRI>": b"no syslog header at all <AuditMessage/> b" + tag,
        b"EventOutcomeIndicator is required": b"<85>1 2026-01-01T00:00:00Z host app 1 IHE+RFC-3881 - "
        b"<AuditMessage><EventIdentification/><!-- c" + tag + b"--></AuditMessage>",
    }
    send_tls(arr.ch.audit.syslog_tls.port, arr.identities["edge"], list(bad.values()))
    for (finding, message), marker in zip(bad.items(), (b"a", b"b", b"c"), strict=True):
        assert marker + tag in message
        ev = _flagged_containing(arr, marker + tag, since)
        assert any(finding.decode() in f for f in _ext(ev, "finding")), _ext(ev, "finding")


def test_oversized_message_is_kept_truncated_and_the_stream_stays_in_step(arr):
    since = _since()
    tag = now_tag()
    big = edge_export(f"big{tag}^^^&1.2.3&ISO", "1.1") + b"<!--" + b"x" * (LIMIT * 2) + b"-->"
    after = edge_export(f"after{tag}^^^&1.2.3&ISO", "1.2")
    send_tls(arr.ch.audit.syslog_tls.port, arr.identities["edge"], [big, after])
    (ok,) = events_for(arr, [("patient.identifier", f"after{tag}^^^&1.2.3&ISO")])
    assert _ext(ok, "valid") == [True]
    cut = _flagged_containing(arr, f"big{tag}".encode(), since)
    assert any(f"{LIMIT} of {len(big)} declared bytes kept" in f for f in _ext(cut, "finding"))
    assert len(_original(arr, cut)) < LIMIT


def test_broken_framing_is_stored_and_the_connection_closed(arr):
    since = _since()
    tag = now_tag()
    good = edge_export(f"frame{tag}^^^&1.2.3&ISO", "1.3")
    garbage = f"<85>1 - h a p m - not-counted-{tag}\n".encode()
    with socket.create_connection(("localhost", arr.ch.audit.syslog_tls.port), timeout=10) as raw:
        tls = arr.identities["edge"].context().wrap_socket(raw, server_hostname="localhost")
        tls.sendall(audit.octet_frame(good) + garbage)
        assert tls.recv(10) == b""  # the server stored both and closed
    events_for(arr, [("patient.identifier", f"frame{tag}^^^&1.2.3&ISO")])
    broken = _flagged_containing(arr, f"not-counted-{tag}".encode(), since)
    assert _original(arr, broken) == f"not-counted-{tag}\n".encode()  # the MSG part, after the header
    assert any("octet-counting" in f for f in _ext(broken, "finding"))


def test_frame_cut_short_by_the_sender_is_stored_flagged(arr):
    since = _since()
    tag = now_tag().encode()
    with socket.create_connection(("localhost", arr.ch.audit.syslog_tls.port), timeout=10) as raw:
        tls = arr.identities["edge"].context().wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"500 <85>1 - h a p m - partial-" + tag)
        tls.unwrap()

    ev = _flagged_containing(arr, b"partial-" + tag, since)
    findings = _ext(ev, "finding")
    assert any("ended inside a syslog frame" in f for f in findings)
    assert any("of 500 declared bytes kept" in f for f in findings)


def test_unregistered_certificate_cannot_send_and_is_audited(arr):
    ca = pki.load_ca(arr.settings.pki_dir)
    issued = pki.issue_certificate(ca, "stray-syslog")
    stray = arr.write_identity("stray-syslog", issued, ca.cert_pem)
    with pytest.raises((SSL.Error, ConnectionError, OSError)):
        send_tls(arr.ch.audit.syslog_tls.port, stray, [edge_export("x", "1")])
    subject = pki.subject_of(issued.certificate).replace(",", "\\,")
    (alert, *_) = events_for(arr, [("type", "110113"), ("agent", subject)])
    entity = alert["entity"][0]
    assert entity["what"]["identifier"]["value"].startswith("tls://")
    assert (
        base64.b64decode(entity["detail"][0]["valueBase64Binary"])
        == b"certificate is not registered to any participant"
    )
