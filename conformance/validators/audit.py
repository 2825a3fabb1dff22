"""Audit messages a participant sends to the Audit Record Repository (ITI-20): RFC 5424 framing, and
the DICOM PS3.15 A.5 message of the transaction it audits: ITI-41 Export by the Document Source
(ITI TF-2b 3.41.5.1) and ITI-43 Import by the Document Consumer (ITI TF-2b 3.43.5.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from clearinghouse.xmlsafe import XmlRejected, parse_xml
from conformance.findings import Finding, check

EXPORT, IMPORT = "110106", "110107"
ROLE_SOURCE, ROLE_DESTINATION = "110153", "110152"
SUBMISSION_SET = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
ITI41_REF = "ITI TF-2b 3.41.5.1 (Document Source audit message)"
ITI43_REF = "ITI TF-2b 3.43.5.1 (Document Consumer audit message)"


@dataclass
class AuditObject:
    object_id: str
    type_code: str
    role: str
    id_type: str
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class Audit:
    """What the validators read of one audit message; ``problem`` says why it could not be read."""

    event_id: str = ""
    action: str = ""
    outcome: str = ""
    event_types: list[str] = field(default_factory=list)
    roles: list[tuple[str, bool]] = field(default_factory=list)  # (RoleIDCode, UserIsRequestor)
    objects: list[AuditObject] = field(default_factory=list)
    problem: str = ""

    def patients(self) -> list[str]:
        return [o.object_id for o in self.objects if o.type_code == "1" and o.role == "1"]

    def objects_of(self, type_code: str, role: str) -> list[AuditObject]:
        return [o for o in self.objects if o.type_code == type_code and o.role == role]


def syslog_msg(message: str) -> str:
    """The MSG part of an RFC 5424 message: after PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID
    and STRUCTURED-DATA (escapes inside SD-PARAM values honoured); a leading BOM removed."""
    pos = 0
    for _ in range(6):
        space = message.find(" ", pos)
        if space < 0:
            return ""
        pos = space + 1
    if message.startswith("-", pos):
        pos += 1
    else:
        quoted = escaped = False
        while pos < len(message) and message[pos] == "[":
            while pos < len(message):
                ch = message[pos]
                pos += 1
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    quoted = not quoted
                elif ch == "]" and not quoted:
                    break
    return message[pos:].lstrip(" ").removeprefix("\ufeff")


def _code(el: etree._Element | None) -> str:
    if el is None:
        return ""
    return el.get("csd-code") or el.get("code") or ""  # DICOM form, or the older RFC 3881 form


def read_audit(message: str) -> Audit:
    xml = syslog_msg(message)
    if not xml:
        return Audit(problem="no MSG part in the syslog message (RFC 5424 6)")
    try:
        root = parse_xml(xml.encode("utf-8"), max_bytes=1 << 24, max_depth=32)
    except XmlRejected as exc:
        return Audit(problem=f"MSG is not well-formed XML: {exc}")
    if etree.QName(root).localname != "AuditMessage":
        return Audit(problem=f"MSG is {etree.QName(root).localname}, not an AuditMessage")
    ev = root.find("EventIdentification")
    audit = Audit()
    if ev is None:
        audit.problem = "no EventIdentification"
        return audit
    audit.event_id = _code(ev.find("EventID"))
    audit.action, audit.outcome = ev.get("EventActionCode", ""), ev.get("EventOutcomeIndicator", "")
    audit.event_types = [_code(c) for c in ev.findall("EventTypeCode")]
    for ap in root.findall("ActiveParticipant"):
        requestor = ap.get("UserIsRequestor", "true").lower() != "false"
        audit.roles += [(_code(r), requestor) for r in ap.findall("RoleIDCode")]
    for po in root.findall("ParticipantObjectIdentification"):
        details = {d.get("type", ""): d.get("value", "") for d in po.findall("ParticipantObjectDetail")}
        audit.objects.append(
            AuditObject(
                po.get("ParticipantObjectID", ""),
                po.get("ParticipantObjectTypeCode", ""),
                po.get("ParticipantObjectTypeCodeRole", ""),
                _code(po.find("ParticipantObjectIDTypeCode")),
                details,
            )
        )
    return audit


def is_event(audit: Audit, event_id: str, transaction: str) -> bool:
    return audit.event_id == event_id and transaction in audit.event_types


def _common(audit: Audit, rule: str, event_id: str, action: str, transaction: str, ref: str) -> list[Finding]:
    return [
        check(
            f"{rule}-EVENT",
            audit.event_id == event_id and audit.action == action and transaction in audit.event_types,
            expected=f"EventID {event_id}, EventActionCode {action}, EventTypeCode {transaction}",
            actual=f"EventID {audit.event_id}, EventActionCode {audit.action}, EventTypeCode {audit.event_types}",
            ref=ref,
        ),
        check(
            f"{rule}-PARTICIPANTS",
            {ROLE_SOURCE, ROLE_DESTINATION} <= {r for r, _ in audit.roles},
            expected=f"ActiveParticipants with RoleIDCode {ROLE_SOURCE} (Source) and {ROLE_DESTINATION} (Destination)",
            actual=f"RoleIDCodes {[r for r, _ in audit.roles]}",
            ref=ref,
        ),
        check(
            f"{rule}-PATIENT",
            len(audit.patients()) == 1,
            expected="one Patient participant object (type 1, role 1)",
            actual=f"{len(audit.patients())}: {audit.patients()}",
            ref=ref,
        ),
    ]


def check_export(audit: Audit, *, patient_id: str, submission_set_uid: str, succeeded: bool) -> list[Finding]:
    """The edge's ITI-41 Export audit against the submission it describes."""
    out = _common(audit, "AUDIT-ITI41", EXPORT, "R", "ITI-41", ITI41_REF)
    sets = [o.object_id for o in audit.objects_of("2", "20") if o.id_type == SUBMISSION_SET]
    out.append(
        check(
            "AUDIT-ITI41-SUBMISSION-SET",
            sets == [submission_set_uid],
            expected=f"one SubmissionSet object (type 2, role 20, {SUBMISSION_SET}) {submission_set_uid}",
            actual=sets,
            ref=ITI41_REF,
        )
    )
    out.append(
        check(
            "AUDIT-ITI41-PATIENT-ID",
            audit.patients() == [patient_id],
            expected=f"the submission's patient {patient_id}",
            actual=audit.patients(),
            ref=ITI41_REF,
        )
    )
    out.append(
        check(
            "AUDIT-ITI41-OUTCOME",
            (audit.outcome == "0") == succeeded,
            expected=f"EventOutcomeIndicator {'0' if succeeded else '4, 8 or 12'} (the clearinghouse "
            f"{'accepted' if succeeded else 'refused'} the submission)",
            actual=audit.outcome,
            ref="DICOM PS3.15 A.5.3.1; " + ITI41_REF,
        )
    )
    return out


def check_import(audit: Audit, *, documents: list[str], patient_id: str) -> list[Finding]:
    """The PHR's ITI-43 Import audit against the documents it retrieved."""
    out = _common(audit, "AUDIT-ITI43", IMPORT, "C", "ITI-43", ITI43_REF)
    listed = {o.object_id for o in audit.objects_of("2", "3")}
    missing = sorted(set(documents) - listed)
    out.append(
        check(
            "AUDIT-ITI43-DOCUMENTS",
            not missing,
            expected="a Document object (type 2, role 3) for every document retrieved",
            actual=f"missing {missing}" if missing else "all listed",
            ref=ITI43_REF,
        )
    )
    if patient_id:
        out.append(
            check(
                "AUDIT-ITI43-PATIENT-ID",
                audit.patients() == [patient_id],
                expected=f"the patient {patient_id}",
                actual=audit.patients(),
                ref=ITI43_REF,
            )
        )
    return out


def check_readable(audit: Audit) -> list[Finding]:
    """One audit message alone: readable, and shaped as its event requires when it is an ITI-41 export
    or an ITI-43 import (the other events a participant sends are stored but not judged here)."""
    if audit.problem:
        return [
            check(
                "AUDIT-READ",
                False,
                expected="an RFC 5424 message carrying a DICOM audit message",
                actual=audit.problem,
                ref="ITI TF-2a 3.20.4.1; DICOM PS3.15 A.5",
            )
        ]
    if is_event(audit, EXPORT, "ITI-41"):
        return _common(audit, "AUDIT-ITI41", EXPORT, "R", "ITI-41", ITI41_REF)
    if is_event(audit, IMPORT, "ITI-43"):
        return _common(audit, "AUDIT-ITI43", IMPORT, "C", "ITI-43", ITI43_REF)
    return []
