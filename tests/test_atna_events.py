"""Every transaction the clearinghouse serves is audited with the event the IHE ITI TF requires, and
every refusal too: checked through ITI-81 on the running server, after real transactions over TLS."""

from __future__ import annotations

import base64
import socket
import ssl
from datetime import UTC, datetime, timedelta

import edge
import pytest
import xds_samples as xs
from atna_client import agents_by_role, entity_ids, events_for, search, subtype_codes, wait_for

from clearinghouse import pki
from clearinghouse.soap.client import SoapFault
from clearinghouse.tls import client_context
from clearinghouse.xmlsafe import NS

SUBMISSION_SET_UID_SCHEME = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"


def _one(events: list[dict], subtype: str, type_code: str) -> dict:
    matches = [e for e in events if subtype in subtype_codes(e) and e["type"]["code"] == type_code]
    assert len(matches) == 1, [(e["type"], subtype_codes(e)) for e in events]
    return matches[0]


def _feed(clearinghouse, patient: str, event: str = "A04") -> bytes:
    client = clearinghouse.feed_client()
    try:
        return client.send(edge.feed_message(patient, event))
    finally:
        client.close()


def test_patient_identity_feed_is_a_patient_record_event(clearinghouse):
    patient = edge.patient_for(edge.new_access_code(), "19800101")
    assert b"MSA|AA|" in _feed(clearinghouse, patient, "A04")
    assert b"MSA|AA|" in _feed(clearinghouse, patient, "A08")
    events = events_for(clearinghouse, [("patient.identifier", patient), ("subtype", "ITI-8")], n=2)
    assert {e["action"] for e in events} == {"C", "U"}  # A04 creates, A08 updates
    for ev in events:
        assert ev["type"] == {
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110110",
            "display": "Patient Record",
        }
        assert ev["outcome"] == "0"
        roles = agents_by_role(ev)
        assert roles["110153"]["who"]["identifier"]["value"] == "EDGE|SITE-A"  # MSH-3|MSH-4
        assert roles["110153"]["name"].startswith("CN=edge,")
        assert roles["110153"]["network"]["address"] == "127.0.0.1"
        assert roles["110152"]["who"]["identifier"]["value"] == "CLEARINGHOUSE|ISN"  # MSH-5|MSH-6
        patient_entity = [e for e in ev["entity"] if e["role"]["code"] == "1"][0]
        assert patient_entity["what"]["identifier"]["value"] == patient
        assert patient_entity["type"]["code"] == "1"
        assert patient_entity["detail"][0]["type"] == "MSH-10"


def test_refused_feed_message_is_audited_as_a_failure(clearinghouse):
    patient = edge.patient_for(edge.new_access_code(), "19800101")
    wrong_domain = patient.replace("1.3.6.1.4.1.19376.3.840.1.1.1", "1.2.3.4.5")
    assert b"MSA|AE|" in _feed(clearinghouse, wrong_domain)
    (ev,) = events_for(clearinghouse, [("patient.identifier", wrong_domain)])
    assert ev["outcome"] == "8" and "ACK AE" in ev["outcomeDesc"]


def test_submission_query_and_retrieval_are_audited_on_every_side(clearinghouse):
    patient = edge.patient_for(edge.new_access_code(), "19650303")
    assert b"MSA|AA|" in _feed(clearinghouse, patient)
    st = edge.study(patient, samples=["CT_small.dcm"])
    request = xs.provide_and_register(st.patient_id, st.documents)
    ss_uid = request.find(f".//rim:ExternalIdentifier[@identificationScheme='{SUBMISSION_SET_UID_SCHEME}']", NS).get(
        "value"
    )
    attachments = edge.to_mtom(request)
    reply = clearinghouse.soap("edge", "/xds/repository").call(edge.ITI41, request, attachments=attachments, mtom=True)
    assert reply.body.get("status") == edge.SUCCESS
    found = edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), patient)
    assert found.body.get("status") == edge.SUCCESS
    got = edge.retrieve(clearinghouse.soap("phr", "/xds/repository"), st.unique_ids)
    assert edge.retrieved_documents(got) == st.contents

    events = events_for(clearinghouse, [("patient.identifier", patient)], n=5)
    # ITI-43 names no patient (a retrieval is by document uniqueId): found by its documents instead.
    events += events_for(clearinghouse, [("entity-id", st.unique_ids[0]), ("subtype", "ITI-43")])

    # ITI-41 at the Document Repository: Import, Create; the edge is the Source, the patient and the
    # submission set are the objects.
    iti41 = _one(events, "ITI-41", "110107")
    assert iti41["action"] == "C" and iti41["outcome"] == "0"
    source = agents_by_role(iti41)["110153"]
    assert source["who"]["identifier"]["value"] == "edge" and source["name"].startswith("CN=edge,")
    assert agents_by_role(iti41)["110152"]["who"]["identifier"]["value"].endswith("/xds/repository")
    assert entity_ids(iti41, "20") == [ss_uid]
    assert entity_ids(iti41, "1") == [patient]

    # ITI-42 on both sides: the repository exports, the registry imports.
    export42 = _one(events, "ITI-42", "110106")
    import42 = _one(events, "ITI-42", "110107")
    assert export42["action"] == "R" and import42["action"] == "C"
    assert entity_ids(export42, "20") == entity_ids(import42, "20") == [ss_uid]
    assert agents_by_role(export42)["110152"]["who"]["identifier"]["value"] == "in-process:/xds/registry"

    # ITI-18: Query, Execute, with the query itself (base64 AdhocQueryRequest) and the patient.
    iti18 = _one(events, "ITI-18", "110112")
    assert iti18["action"] == "E"
    assert agents_by_role(iti18)["110153"]["requestor"] is True
    query = [e for e in iti18["entity"] if e["role"]["code"] == "24"][0]
    assert query["what"]["identifier"]["value"] == xs.FIND_DOCUMENTS
    sent_query = base64.b64decode(query["query"])
    assert b"AdhocQueryRequest" in sent_query and patient.split("^")[0].encode() in sent_query
    assert {d["type"] for d in query["detail"]} >= {"QueryEncoding"}

    # ITI-43 at the repository: Export, Read; each document retrieved, with its repository.
    iti43 = _one(events, "ITI-43", "110106")
    assert iti43["action"] == "R"
    assert sorted(entity_ids(iti43, "3")) == sorted(st.unique_ids)
    doc = [e for e in iti43["entity"] if e["role"]["code"] == "3"][0]
    assert base64.b64decode(doc["detail"][0]["valueBase64Binary"]).decode() == edge.REPOSITORY_ID
    assert agents_by_role(iti43)["110152"]["requestor"] is True  # the consumer asked


def test_failed_submission_is_audited_with_the_error(clearinghouse):
    stranger = edge.patient_for(edge.new_access_code(), "19650303")  # never fed
    reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), edge.study(stranger, samples=["MR_small.dcm"]))
    assert reply.body.get("status") == edge.FAILURE
    events = events_for(clearinghouse, [("patient.identifier", stranger), ("subtype", "ITI-41")])
    assert events[0]["outcome"] == "8" and "XDSUnknownPatientId" in events[0]["outcomeDesc"]


def test_refused_authorization_is_a_security_alert(clearinghouse):
    patient = edge.patient_for(edge.new_access_code(), "19650303")
    with pytest.raises(SoapFault):
        edge.submit(clearinghouse.soap("phr", "/xds/repository"), edge.study(patient, samples=["CT_small.dcm"]))
    events = events_for(clearinghouse, [("type", "110113"), ("subtype", "110132"), ("subtype", "ITI-41")])
    ev = [e for e in events if any(a.get("name", "").startswith("CN=phr,") for a in e["agent"])][-1]
    assert ev["outcome"] == "4"
    assert "role 'source' required" in ev["outcomeDesc"]


def test_refused_feed_peer_is_a_security_alert(clearinghouse):
    patient = edge.patient_for(edge.new_access_code(), "19650303")
    client = clearinghouse.feed_client("phr")
    try:
        assert b"MSA|AR|" in client.send(edge.feed_message(patient))
    finally:
        client.close()
    events = events_for(clearinghouse, [("type", "110113"), ("subtype", "ITI-8"), ("agent", "phr")])
    assert events[-1]["subtype"][0]["code"] == "110132"


def test_refused_tls_connection_is_a_security_alert_and_failed_authentication(clearinghouse):
    ca = pki.load_ca(clearinghouse.settings.pki_dir)
    issued = pki.issue_certificate(ca, "stray-audited")
    stray = clearinghouse.write_identity("stray-audited", issued, ca.cert_pem)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # noqa: PT012 - TLS 1.3 refuses on first read
        with socket.create_connection(("localhost", clearinghouse.https_port), timeout=10) as raw:
            with stray.context().wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                if not tls.recv(10):
                    raise ConnectionResetError
    subject = pki.subject_of(issued.certificate).replace(",", "\\,")  # FHIR escapes commas in values
    alerts = events_for(clearinghouse, [("type", "110113"), ("subtype", "110126"), ("agent", subject)])
    assert alerts[-1]["outcome"] == "4" and "not registered" in alerts[-1]["outcomeDesc"]
    logins = events_for(clearinghouse, [("type", "110114"), ("agent", subject)])
    assert logins[-1]["subtype"][0]["code"] == "110122" and logins[-1]["outcome"] == "4"
    # A certificate that is not even offered is a node authentication failure too.
    local_port = 0
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # noqa: PT012
        with socket.create_connection(("localhost", clearinghouse.https_port), timeout=10) as raw:
            local_port = raw.getsockname()[1]
            with client_context(clearinghouse.settings.ca_cert_path).wrap_socket(raw, server_hostname="localhost") as t:
                t.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                if not t.recv(10):
                    raise ConnectionResetError
    (alert,) = events_for(clearinghouse, [("type", "110113"), ("agent", f"127.0.0.1:{local_port}")])
    assert alert["subtype"][0]["code"] == "110126" and "no client certificate" in alert["outcomeDesc"]


def test_searching_the_audit_log_is_itself_audited(clearinghouse):
    probe = f"audit-log-used-probe-{edge.new_access_code()}"
    since = (datetime.now(UTC) - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    search(clearinghouse, [("entity-id", probe)])

    def the_probe() -> dict | None:
        for ev in events_for(clearinghouse, [("type", "110101"), ("agent", "auditor"), ("date", f"ge{since}")]):
            if any(probe.encode() in base64.b64decode(e.get("query", "")) for e in ev.get("entity", [])):
                return ev
        return None

    ev = wait_for(the_probe, what="the Audit Log Used event of the probe search")
    assert ev["action"] == "R" and "ITI-81" in subtype_codes(ev) and ev["outcome"] == "0"
    auditor = [a for a in ev["agent"] if a.get("requestor")][0]
    assert auditor["who"]["identifier"]["value"] == "auditor"
