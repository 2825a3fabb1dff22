"""The conformance validators as pure functions: each rule passes what is right and fails, with the
expected value, what arrived and its TF section, what is wrong (the cases the fault matrix does not
reach)."""

from __future__ import annotations

from clearinghouse.audit import AuditNode, Party, provide_and_register, syslog_message, to_xml
from conformance.edge import feed_message
from conformance.validators import audit, feed, query, submission

OID = "1.3.6.1.4.1.19376.3.840.1.1.1"
PID = f"abc123^^^&{OID}&ISO"


def _failed(findings) -> set[str]:
    return {f.rule for f in findings if not f.passed}


def test_feed_rules():
    assert _failed(feed.check_feed(feed_message(PID), OID)) == set()
    assert _failed(feed.check_feed(feed_message(PID, structure=False), OID)) == {"ITI8-MSH-9.3"}
    bare = b"MSH|^~\\&|E|S|C|I|20260101||ADT^A04|c1||2.3.1\rPID|||abc^^^&9.9.9&ISO\r"
    found = feed.check_feed(bare, OID)
    assert _failed(found) == {"ITI8-MSH-11", "ITI8-EVN", "ITI8-PV1", "ITI8-PID-3"}
    pid3 = next(f for f in found if f.rule == "ITI8-PID-3")
    assert "9.9.9" in pid3.actual and OID in pid3.expected and pid3.ref.startswith("ITI TF-2a")
    query_message = b"MSH|^~\\&|E|S|C|I|20260101||QBP^Q23^QBP_Q21|c2|P|2.5\rQPD|IHE PIX Query\r"
    assert "ITI8-MSH-9" in _failed(feed.check_feed(query_message, OID))
    assert _failed(feed.check_feed(b"not hl7", OID)) == {"ITI8-PARSE"}


def _facts(content_type: str, parts: list[str], hrefs: list[str], root_type: str) -> dict:
    return {
        "content_type": content_type,
        "mtom": {
            "root_content_type": root_type,
            "root_content_id": "root@x",
            "parts": [
                {"content_id": p, "content_type": "application/octet-stream", "size": 1, "sha1": "a"} for p in parts
            ],
        },
        "documents": [{"id": f"d{n}", "href": h, "size": 1, "sha1": "a"} for n, h in enumerate(hrefs)],
    }


GOOD_CT = (
    'multipart/related; boundary=b; type="application/xop+xml"; start="<root@x>"; start-info="application/soap+xml"'
)
GOOD_ROOT = 'application/xop+xml; charset=UTF-8; type="application/soap+xml"'


def test_mtom_rules():
    assert _failed(submission.check_mtom("", _facts(GOOD_CT, ["p1@x"], ["cid:p1@x"], GOOD_ROOT))) == set()
    broken = _facts(GOOD_CT.replace("<root@x>", "<other@x>"), ["p1@x", "p2@x"], ["cid:p9@x"], "application/xop+xml")
    assert _failed(submission.check_mtom("", broken)) == {"MTOM-START", "MTOM-ROOT-TYPE", "MTOM-INCLUDE", "MTOM-PARTS"}
    plain = {"content_type": "application/soap+xml", "mtom": None, "documents": []}
    assert _failed(submission.check_mtom("", plain)) == {"MTOM-PACKAGE"}


def test_audit_message_reading():
    node = AuditNode(source_id="EDGE")
    msg = provide_and_register(
        "source",
        node=node,
        source=Party("edge"),
        destination=Party("https://ch/xds/repository"),
        patient_id=PID,
        submission_set_uid="1.2.3",
    )
    text = syslog_message(to_xml(msg), node).decode()
    read = audit.read_audit(text)
    assert read.problem == "" and audit.is_event(read, audit.EXPORT, "ITI-41")
    assert _failed(audit.check_export(read, patient_id=PID, submission_set_uid="1.2.3", succeeded=True)) == set()
    wrong = audit.check_export(read, patient_id="other", submission_set_uid="9.9", succeeded=False)
    assert _failed(wrong) == {"AUDIT-ITI41-PATIENT-ID", "AUDIT-ITI41-SUBMISSION-SET", "AUDIT-ITI41-OUTCOME"}
    # Structured data with escaped characters before the MSG; the RFC 3881 'code' attribute form.
    sd = '<85>1 2026-01-01T00:00:00Z h app 1 IHE+RFC-3881 [x@1 a="q\\"]\\\\" b="]"][y@2 c="d"] '
    rfc3881 = to_xml(msg).decode().replace("csd-code=", "code=")
    assert audit.read_audit(sd + rfc3881).event_id == audit.EXPORT
    assert "no MSG" in audit.read_audit("<85>1 2026-01-01T00:00:00Z h").problem
    assert _failed(audit.check_readable(audit.read_audit(sd + "<nope"))) == {"AUDIT-READ"}


def test_stored_query_rules():
    approved = "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"
    find = {"query_id": "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d", "params": {
        "$XDSDocumentEntryPatientId": [f"'{PID}'"], "$XDSDocumentEntryStatus": [approved]}}  # fmt: skip
    assert _failed(query.check_query(find)) == set()
    assert query.queried_patient(find) == PID and query.check_patient(find, {PID}).passed
    deprecated_only = {**find, "params": {"$XDSDocumentEntryStatus": ["('urn:x:Deprecated')"]}}
    assert _failed(query.check_query(deprecated_only)) == {"ITI18-FIND-APPROVED"}
    get_all = {"query_id": "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3", "params": {"$patientId": [f"'{PID}'"]}}
    found = query.check_query(get_all)
    assert _failed(found) == {"ITI18-STORED-QUERY"} and found[0].actual == "GetAll"
    assert query.unquote("'it''s'") == "it's"
