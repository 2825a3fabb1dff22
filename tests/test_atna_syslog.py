"""The pure parts of the Audit Record Repository: RFC 5424 headers, RFC 5425 framing, the DICOM and
RFC 3881 audit message rules, the record codec and the hash chain, the FHIR search parameters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from atna_client import RFC3881_MESSAGE

from atna import fhir, syslog
from atna.message import DICOM, RFC3881, UNKNOWN, parse_audit
from atna.record import GENESIS_HASH, Received, derive, link_hash, split_cx
from clearinghouse import audit
from clearinghouse.audit import AuditNode, Party

NODE = AuditNode(source_id="TEST-SRC", hostname="host.example", app_name="tester", process_id="42")


def _iti41() -> audit.AuditMessage:
    return audit.provide_and_register(
        audit.RECIPIENT,
        node=NODE,
        source=Party("edge", "10.0.0.1", "CN=edge"),
        destination=Party("https://ch/xds/repository", "ch.example"),
        patient_id="abc^^^&1.2.3&ISO",
        submission_set_uid="1.2.3.4",
        when=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_rfc5424_header_is_read_field_by_field():
    msg = audit.syslog_message(b"<AuditMessage/>", NODE, datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    h = syslog.parse_header(msg)
    assert (h.priority, h.facility, h.severity) == (85, 10, 5)
    assert (h.version, h.timestamp, h.hostname, h.app_name, h.procid, h.msgid) == (
        "1",
        "2026-01-02T03:04:05.678Z",
        "host.example",
        "tester",
        "42",
        "IHE+RFC-3881",
    )
    assert msg[h.msg_offset :] == b"<AuditMessage/>" and not h.findings


def test_rfc5424_structured_data_bom_and_nil_values():
    data = b'<13>1 - - - - - [ex@1 a="x\\"] y" b="c"][other@2] \xef\xbb\xbf<AuditMessage/>'
    h = syslog.parse_header(data)
    assert h.timestamp == h.hostname == h.app_name == h.procid == h.msgid == ""
    assert h.structured_data == '[ex@1 a="x\\"] y" b="c"][other@2]'
    assert data[h.msg_offset :] == b"<AuditMessage/>"  # the BOM is not part of the XML
    assert not h.findings


@pytest.mark.parametrize(
    ("data", "finding"),
    [
        (b"<AuditMessage/>", "PRI is not a number"),
        (b"AuditMessage", "no <PRI>"),
        (b"<192>1 - h a p m - x", "PRI is not a number from 0 to 191"),
        (b"<13>2 - h a p m - x", "VERSION is '2'"),
        (b"<13>1 2026-13-01T00:00:00Z h a p m - x", "not an RFC 5424 timestamp"),
        (b"<13>1 - " + b"h" * 300 + b" a p m - x", "HOSTNAME is longer than 255"),
        (b"<13>1 - h a p " + b"m" * 40 + b" - x", "MSGID is longer than 32"),
        (b"<13>1 - h a p m [unclosed x", "SD-ELEMENT is not closed"),
        (b"<13>1 - h", "header ends before APP-NAME"),
    ],
)
def test_bad_headers_are_described_not_refused(data, finding):
    h = syslog.parse_header(data)
    assert any(finding in f for f in h.findings), h.findings


def test_octet_counting_frames_across_reads_and_truncation():
    splitter = syslog.FrameSplitter(max_bytes=10)
    stream = b"5 hello3 abc15 0123456789abcde2 ok"
    frames = []
    for i in range(0, len(stream), 3):  # delivered in small pieces
        frames += splitter.feed(stream[i : i + 3])
    assert [(f.data, f.declared_length) for f in frames] == [
        (b"hello", 5),
        (b"abc", 3),
        (b"0123456789", 15),  # kept to the limit, the rest skipped, the stream still in step
        (b"ok", 2),
    ]
    assert splitter.close() is None


def test_broken_framing_keeps_the_bytes_and_stops():
    splitter = syslog.FrameSplitter(max_bytes=100)
    frames = splitter.feed(b"3 abc<13>1 not counted\n")
    assert frames[0].data == b"abc" and not frames[0].broken
    assert frames[1].data == b"<13>1 not counted\n" and "octet-counting" in frames[1].broken
    assert splitter.broken


def test_frame_cut_short_by_the_end_of_the_connection():
    splitter = syslog.FrameSplitter(max_bytes=100)
    assert splitter.feed(b"20 only-part") == []
    tail = splitter.close()
    assert tail is not None and (tail.data, tail.declared_length) == (b"only-part", 20)


def test_builders_produce_schema_valid_dicom_messages():
    for msg in (
        _iti41(),
        audit.registry_stored_query(
            node=NODE,
            consumer=Party("phr"),
            registry=Party("reg"),
            query_id="urn:uuid:1",
            query=b"<q/>",
            patient_id="p",
        ),
        audit.retrieve_document_set(
            audit.SOURCE,
            node=NODE,
            repository=Party("repo"),
            consumer=Party("phr"),
            documents=[audit.DocumentRef("1.2", "1.3", "urn:oid:1.4")],
        ),
        audit.retrieve_imaging_document_set(
            audit.RECIPIENT, node=NODE, source=Party("src"), consumer=Party("c"), studies=[audit.StudyRef("1.2.3")]
        ),
        audit.patient_identity_feed(
            node=NODE,
            source=Party("A|B"),
            destination=Party("C|D"),
            trigger_event="A40",
            patient_ids=["x", "y"],
            message_control_id="123",
        ),
        audit.pix_query(node=NODE, consumer=Party("c"), manager=Party("m"), query=b"QPD|...", message_control_id="9"),
        audit.pix_update_notification(
            node=NODE, manager=Party("m"), consumer=Party("c"), patient_ids=["p"], message_control_id="7"
        ),
        audit.update_document_set(
            audit.SOURCE, node=NODE, source=Party("s"), destination=Party("d"), patient_id="p", submission_set_uid="1"
        ),
        audit.delete_document_set(node=NODE, source=Party("s"), registry=Party("r"), object_ids=["urn:uuid:9"]),
        audit.purge(node=NODE, document_unique_ids=["1.2"], patient_ids=["p"], reason="retention period over"),
        audit.node_authentication_failure(node=NODE, endpoint="tls://h:1", peer=Party("CN=x\x00y"), reason="nope"),
        audit.restricted_function(node=NODE, endpoint="e", peer=Party("p"), transaction="ITI-41", reason="role"),
        audit.user_authentication(node=NODE, user=Party("u"), login=False),
        audit.participant_change(node=NODE, change="add", participant="site", roles=["source"], fingerprint="ab"),
        audit.application_activity(node=NODE, start=True),
        audit.audit_log_used(node=NODE, auditor=Party("a"), log_uri="https://h/fhir/AuditEvent", query=b"type=1"),
    ):
        parsed = parse_audit(msg.to_xml())
        assert parsed.form == DICOM
        assert parsed.findings == [], (msg.event_id, parsed.findings)
        assert parsed.event_id is not None and parsed.event_id.code == msg.event_id.code


def test_iti41_message_reads_back():
    parsed = parse_audit(_iti41().to_xml())
    assert (parsed.event_id.code, parsed.action, parsed.outcome) == ("110107", "C", 0)
    assert parsed.event_time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert [t.code for t in parsed.event_types] == ["ITI-41"]
    assert parsed.patients() == ["abc^^^&1.2.3&ISO"]
    src = parsed.participants[0]
    assert (src.user_id, src.user_name, src.address, src.address_type, src.requestor) == (
        "edge",
        "CN=edge",
        "10.0.0.1",
        "2",
        False,
    )
    assert parsed.source_id == "TEST-SRC"


def test_rfc3881_form_is_accepted():
    parsed = parse_audit(RFC3881_MESSAGE)
    assert parsed.form == RFC3881 and parsed.findings == []
    assert parsed.event_id.code == "110112" and parsed.event_id.display == "Query"
    assert parsed.event_time == datetime(2008, 3, 14, 15, 11, 12, tzinfo=UTC)  # -05:00 normalised to UTC
    assert parsed.participants[0].requestor is None  # optional in RFC 3881
    assert parsed.patients() == ["123^^^&1.2.3&ISO"]


@pytest.mark.parametrize(
    ("xml", "finding"),
    [
        (b"not xml at all", "not an acceptable XML document"),
        (b'<!DOCTYPE x [<!ENTITY e "b">]><AuditMessage/>', "DTD"),
        (b"<Other/>", "root element is 'Other'"),
        (b"<AuditMessage/>", "neither csd-code (DICOM) nor code (RFC 3881)"),
        (
            b'<AuditMessage><EventIdentification EventActionCode="X" EventDateTime="yesterday" '
            b'EventOutcomeIndicator="3"><EventID csd-code="1" codeSystemName="DCM"/></EventIdentification>'
            b"</AuditMessage>",
            "EventActionCode='X' is not one of",
        ),
    ],
)
def test_invalid_messages_get_findings(xml, finding):
    parsed = parse_audit(xml)
    assert any(finding in f for f in parsed.findings), parsed.findings


def test_every_schema_violation_is_listed():
    xml = (
        b'<AuditMessage><EventIdentification EventActionCode="X" EventDateTime="yesterday" EventOutcomeIndicator="3">'
        b'<EventID csd-code="1" codeSystemName="DCM"/></EventIdentification>'
        b'<ActiveParticipant NetworkAccessPointTypeCode="9"/>'
        b"<AuditSourceIdentification/>"
        b'<ParticipantObjectIdentification ParticipantObjectTypeCodeRole="99">'
        b"<ParticipantObjectName>n</ParticipantObjectName><ParticipantObjectQuery>***</ParticipantObjectQuery>"
        b'<ParticipantObjectDetail type="t" value="%%%"/></ParticipantObjectIdentification>'
        b"</AuditMessage>"
    )
    found = "\n".join(parse_audit(xml).findings)
    for needle in (
        "EventActionCode='X'",
        "EventOutcomeIndicator='3'",
        "EventDateTime='yesterday'",
        "EventID: coded value lacks originalText",
        "UserID is required",
        "UserIsRequestor is required",
        "NetworkAccessPointTypeCode='9'",
        "AuditSourceID is required",
        "ParticipantObjectID is required",
        "ParticipantObjectTypeCodeRole='99'",
        "exactly one ParticipantObjectIDTypeCode",
        "mutually exclusive",
        "ParticipantObjectQuery is not xsd:base64Binary",
        "value is not xsd:base64Binary",
    ):
        assert needle in found, needle


def test_received_record_codec_and_derivation():
    data = audit.syslog_message(_iti41().to_xml(), NODE)
    rec = Received(datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), "tls", "10.9.8.7", "CN=x,O=y", data, len(data))
    assert Received.decode(rec.encode()) == rec
    d = derive(rec)
    assert d.row["valid"] and d.row["form"] == DICOM and d.row["event_id"] == "110107"
    assert d.row["received_at"] == "2026-05-06T07:08:09.123456Z"
    assert ("patient", "urn:oid:1.2.3", "abc") in d.index and ("patient", "", "abc^^^&1.2.3&ISO") in d.index
    assert ("subtype", "IHE Transactions", "ITI-41") in d.index
    assert ("agent", "", "CN=edge") in d.index and ("address", "", "10.0.0.1") in d.index


def test_unreadable_record_is_derived_with_findings():
    rec = Received(datetime.now(UTC), "udp", "1.2.3.4", "", b"\x00\xffgarbage", 9, "")
    d = derive(rec)
    assert not d.row["valid"] and d.row["form"] == UNKNOWN and "no <PRI>" in d.row["findings"]
    assert d.row["declared_length"] == 9 and d.index == []


def test_chain_hash_depends_on_every_field_and_the_previous_hash():
    data = audit.syslog_message(_iti41().to_xml(), NODE)
    row = dict(derive(Received(datetime.now(UTC), "tls", "a", "s", data, len(data))).row, id=1)
    h = link_hash(GENESIS_HASH, row)
    assert link_hash(GENESIS_HASH, row) == h
    assert link_hash("1" * 64, row) != h
    for key, value in (("event_outcome", 8), ("peer_subject", "CN=other"), ("raw_sha256", "0" * 64), ("id", 2)):
        assert link_hash(GENESIS_HASH, dict(row, **{key: value})) != h, key


def test_cx_split():
    assert split_cx("abc^^^&1.2.3&ISO") == ("abc", "1.2.3")
    assert split_cx("plain") == ("", "")


@pytest.mark.parametrize(
    ("value", "bounds"),
    [
        ("2026", [("ge", "2026-01-01T00:00:00.000000Z"), ("lt", "2027-01-01T00:00:00.000000Z")]),
        ("eq2026-02", [("ge", "2026-02-01T00:00:00.000000Z"), ("lt", "2026-03-01T00:00:00.000000Z")]),
        ("ge2026-12-31", [("ge", "2026-12-31T00:00:00.000000Z")]),
        ("gt2026-12-31", [("ge", "2027-01-01T00:00:00.000000Z")]),
        ("lt2026-01-02T10:00", [("lt", "2026-01-02T10:00:00.000000Z")]),
        ("le2026-01-02T10:00:00+02:00", [("lt", "2026-01-02T08:00:01.000000Z")]),
        ("sa2026-01-02T10:00:00.5Z", [("ge", "2026-01-02T10:00:00.600000Z")]),
        ("eb2026", [("lt", "2026-01-01T00:00:00.000000Z")]),
    ],
)
def test_fhir_date_prefixes_and_precision(value, bounds):
    assert [(b.op, b.value) for b in fhir.date_bounds(value)] == bounds


@pytest.mark.parametrize(
    "params",
    [
        [("date", "yesterday")],
        [("date", "2026-02-30")],
        [("outcome", "3")],
        [("_count", "-1")],
        [("type:text", "Query")],
        [("entity-id", "")],
        [("_format", "xml")],
    ],
)
def test_bad_search_parameters_are_refused(params):
    with pytest.raises(fhir.SearchError):
        fhir.parse_search(params)


def test_unknown_parameters_are_ignored_unless_strict():
    assert fhir.parse_search([("color", "red")]).ignored == ["color"]
    with pytest.raises(fhir.SearchError, match="unknown search parameter"):
        fhir.parse_search([("color", "red")], strict=True)


def test_token_escapes():
    s = fhir.parse_search([("agent", r"CN=a\,O=b,plain"), ("entity-id", r"sys|val\|ue")])
    (agents,) = s.tokens["agent"]
    assert [t.code for t in agents] == ["CN=a,O=b", "plain"]
    (ent,) = s.tokens["entity-id"]
    assert (ent[0].system, ent[0].code) == ("sys", "val|ue")
