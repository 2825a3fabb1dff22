"""The retention purge's audit events (built here, emitted by the purge of issue 5): Patient Record
Delete naming every removed object as ITI-86 / ITI-62 name them, permanently erased, and DICOM Study
Deleted for the purged images. Checked against the DICOM rules (atna.message) and, emitted through this
node's sink, read back through ITI-81."""

from __future__ import annotations

import base64
import uuid

from atna_client import agents_by_role, events_for, subtype_codes

from atna.message import DICOM, parse_audit
from clearinghouse import audit
from clearinghouse.audit import AuditNode, Party

NODE = AuditNode(source_id="ISN-TEST", hostname="ch.example", process_id="42")


def test_purge_by_the_scheduler_names_every_erased_object():
    msg = audit.purge(
        node=NODE,
        document_unique_ids=["1.2.3", "1.2.4"],
        patient_ids=["abc^^^&1.3.6.1.4.1.19376.3.840.1.1.1&ISO"],
        submission_set_uids=["1.2.9"],
        repository_unique_id="1.3.6.1.4.1.21367.2010.1.2.1125",
        registry_object_ids=["urn:uuid:0e5b2a34-7d86-4d35-9f3c-5d6f0bb1e0a1"],
        reason="retention period over",
    )
    parsed = parse_audit(msg.to_xml())
    assert parsed.form == DICOM and parsed.findings == []
    assert (parsed.event_id.code, parsed.action, parsed.outcome) == ("110110", "D", 0)
    assert [t.code for t in parsed.event_types] == ["retention-purge"]
    (node,) = parsed.participants
    assert node.requestor is True and node.user_id == "isn-clearinghouse@ch.example"
    by_type = {o.object_id: o for o in parsed.objects}
    assert by_type["abc^^^&1.3.6.1.4.1.19376.3.840.1.1.1&ISO"].type_code == "1"  # the patient
    for uid in ("1.2.3", "1.2.4"):
        doc = by_type[uid]
        assert (doc.type_code, doc.role, doc.id_type.code, doc.lifecycle) == ("2", "3", "9", "15")
        assert (
            dict(doc.details)["Repository Unique Id"] == base64.b64encode(b"1.3.6.1.4.1.21367.2010.1.2.1125").decode()
        )
    ss = by_type["1.2.9"]
    assert (ss.role, ss.id_type.code, ss.lifecycle) == ("20", audit.ID_SUBMISSION_SET.code, "15")
    ref = by_type["urn:uuid:0e5b2a34-7d86-4d35-9f3c-5d6f0bb1e0a1"]
    assert (ref.id_type.code, ref.lifecycle) == ("urn:ihe:iti:2017:ObjectRef", "15")


def test_purge_by_an_operator_and_the_deleted_study():
    operator = Party("alice@admin-host", "admin-host", "alice")
    msg = audit.purge(node=NODE, document_unique_ids=["1.2.3"], operator=operator)
    parsed = parse_audit(msg.to_xml())
    assert parsed.findings == []
    node, launcher = parsed.participants
    assert node.requestor is False and launcher.requestor is True and launcher.user_id == "alice@admin-host"
    assert launcher.roles[0].code == "110151"  # Application Launcher

    study = audit.study_deleted(node=NODE, study_instance_uids=["1.2.840.9"], patient_ids=["p^^^&1.2&ISO"])
    parsed = parse_audit(study.to_xml())
    assert parsed.findings == []
    assert (parsed.event_id.code, parsed.action) == ("110105", "D")
    (obj, patient) = parsed.objects
    assert (obj.object_id, obj.id_type.code, obj.lifecycle) == ("1.2.840.9", "110180", "15")
    assert patient.type_code == "1"


def test_purge_event_reaches_the_repository_and_is_searchable(clearinghouse):
    doc = f"2.25.{uuid.uuid4().int}"
    auditor = clearinghouse.ch.audit.auditor
    auditor.emit(audit.purge(node=auditor.node, document_unique_ids=[doc], reason="retention: 30 day(s)"))
    (ev,) = events_for(clearinghouse, [("entity-id", doc), ("subtype", "retention-purge")])
    assert ev["type"]["code"] == "110110" and ev["action"] == "D"
    assert ev["outcomeDesc"] == "retention: 30 day(s)"
    assert agents_by_role(ev)["110150"]["requestor"] is True
    (entity,) = ev["entity"]
    assert entity["lifecycle"]["code"] == "15"
    assert subtype_codes(ev) == ["retention-purge"]
