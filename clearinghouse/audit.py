"""The audit interface every actor uses: DICOM audit messages (PS3.15 A.5), their builders for each
transaction the clearinghouse takes part in, and the sinks that carry them to an Audit Record
Repository (ITI-20 Record Audit Event).

Builders are pure: they turn what a transaction did into an ``AuditMessage`` following the audit
tables of the IHE ITI TF (and RAD TF for RAD-68/69). A sink's ``emit`` never blocks the transaction
and never raises into it: messages are queued and delivered by a background thread, with retry.

Two sinks: ``LocalRepositorySink`` hands messages to the built-in Audit Record Repository in this
process (the default), ``SyslogTlsSink`` sends them to an external repository over TLS syslog
(RFC 5424 messages, RFC 5425 octet-counting framing), reconnecting until it succeeds.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import logging
import os
import re
import socket
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit
from xml.sax.saxutils import escape, quoteattr

from clearinghouse.logging_setup import current_request_id

log = logging.getLogger("clearinghouse.audit")

# EventOutcomeIndicator (DICOM PS3.15 A.5.1).
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12

# Syslog header values of ITI TF-2 3.20.4.1.2: facility 10 (security/authorization), severity 5
# (notice), MSGID naming the payload. No BOM before the XML (ITI CP 477).
SYSLOG_PRI = 10 * 8 + 5
SYSLOG_MSGID = "IHE+RFC-3881"
APP_NAME = "isn-clearinghouse"


@dataclass(frozen=True)
class Code:
    """A coded value as DICOM writes it: EV(code, codeSystemName, originalText)."""

    code: str
    system_name: str
    display: str = ""


# DICOM CID 400 (Audit Event ID).
EV_APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
EV_AUDIT_LOG_USED = Code("110101", "DCM", "Audit Log Used")
EV_INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
EV_STUDY_DELETED = Code("110105", "DCM", "DICOM Study Deleted")
EV_EXPORT = Code("110106", "DCM", "Export")
EV_IMPORT = Code("110107", "DCM", "Import")
EV_PATIENT_RECORD = Code("110110", "DCM", "Patient Record")
EV_QUERY = Code("110112", "DCM", "Query")
EV_SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
EV_USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
# DICOM CID 401/402/403 event type codes.
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")
SECURITY_ROLES_CHANGED = Code("110136", "DCM", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", "DCM", "User Security Attributes Changed")
# DICOM CID 402 (Audit Active Participant Role ID).
ROLE_SOURCE = Code("110153", "DCM", "Source Role ID")
ROLE_DESTINATION = Code("110152", "DCM", "Destination Role ID")
ROLE_APPLICATION = Code("110150", "DCM", "Application")
ROLE_APPLICATION_LAUNCHER = Code("110151", "DCM", "Application Launcher")
# RFC 3881 participant object id types, as the IHE audit tables write them.
ID_PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
ID_REPORT_NUMBER = Code("9", "RFC-3881", "Report Number")
ID_USER_IDENTIFIER = Code("11", "RFC-3881", "User Identifier")
ID_URI = Code("12", "RFC-3881", "URI")
ID_SUBMISSION_SET = Code(
    "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd", "IHE XDS Metadata", "submission set classificationNode"
)
ID_OBJECT_REF = Code("urn:ihe:iti:2017:ObjectRef", "IHE XDS Metadata", "registry object reference")
ID_STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")

# ParticipantObjectTypeCode and ParticipantObjectTypeCodeRole values (RFC 3881 / PS3.15 A.5.1).
OBJ_PERSON, OBJ_SYSTEM, OBJ_ORGANIZATION, OBJ_OTHER = "1", "2", "3", "4"
ROLE_PATIENT, ROLE_REPORT, ROLE_SECURITY_USER, ROLE_SECURITY_RESOURCE, ROLE_JOB, ROLE_QUERY = (
    "1",
    "3",
    "11",
    "13",
    "20",
    "24",
)
LIFECYCLE_PERMANENT_ERASURE = "15"

IHE_TRANSACTIONS = "IHE Transactions"
TRANSACTION_NAMES = {
    "ITI-8": "Patient Identity Feed",
    "ITI-9": "PIX Query",
    "ITI-10": "PIX Update Notification",
    "ITI-18": "Registry Stored Query",
    "ITI-20": "Record Audit Event",
    "ITI-41": "Provide and Register Document Set-b",
    "ITI-42": "Register Document Set-b",
    "ITI-43": "Retrieve Document Set",
    "ITI-57": "Update Document Set",
    "ITI-62": "Delete Document Set",
    "ITI-81": "Retrieve ATNA Audit Event",
    "ITI-86": "Remove Documents",
    "ITI-104": "Patient Identity Feed FHIR",
    "RAD-68": "Provide and Register Imaging Document Set - MTOM/XOP",
    "RAD-69": "Retrieve Imaging Document Set",
}
PURGE_EVENT_TYPE = Code("retention-purge", "urn:isn-clearinghouse:audit", "Retention purge")
# A request refused before it reached a transaction (not XML, hostile XML, too large, wrong envelope,
# addressing or action, broken MIME, an HL7 message that cannot be read): DICOM CID 403 has no code for
# it, so this one is ours (docs/atna.md, "Refused before dispatch").
MALFORMED_REQUEST = Code("malformed-request", "urn:isn-clearinghouse:audit", "Malformed request refused")


def transaction_code(transaction: str) -> Code:
    """The EventTypeCode of an IHE transaction, e.g. EV("ITI-41", "IHE Transactions", "Provide and ...")."""
    return Code(transaction, IHE_TRANSACTIONS, TRANSACTION_NAMES.get(transaction, transaction))


@dataclass(frozen=True)
class ActiveParticipant:
    user_id: str
    roles: tuple[Code, ...] = ()
    requestor: bool = False
    alt_user_id: str = ""
    user_name: str = ""
    address: str = ""  # NetworkAccessPointID

    @property
    def address_type(self) -> str:
        """NetworkAccessPointTypeCode: 2 for an IP address, 5 for a URI, 1 for a machine name."""
        if not self.address:
            return ""
        try:
            ipaddress.ip_address(self.address.strip("[]"))
            return "2"
        except ValueError:
            return "5" if "://" in self.address else "1"


@dataclass(frozen=True)
class ParticipantObject:
    object_id: str
    type_code: str
    role: str
    id_type: Code
    name: str = ""
    query: bytes | None = None
    details: tuple[tuple[str, bytes], ...] = ()
    lifecycle: str = ""


@dataclass(frozen=True)
class AuditSource:
    source_id: str
    site_id: str = ""
    type_code: str = "4"  # Application Server process tier


@dataclass(frozen=True)
class AuditMessage:
    event_id: Code
    action: str  # C R U D E
    outcome: int
    when: datetime
    source: AuditSource
    participants: tuple[ActiveParticipant, ...]
    event_types: tuple[Code, ...] = ()
    objects: tuple[ParticipantObject, ...] = ()
    outcome_description: str = ""

    def to_xml(self) -> bytes:
        return to_xml(self)


@dataclass(frozen=True)
class AuditNode:
    """Who this clearinghouse is in its audit messages: AuditSourceID, site and the syslog header fields."""

    source_id: str = "ISN-CLEARINGHOUSE"
    site_id: str = ""
    hostname: str = field(default_factory=socket.getfqdn)
    app_name: str = APP_NAME
    process_id: str = field(default_factory=lambda: str(os.getpid()))

    @property
    def source(self) -> AuditSource:
        return AuditSource(self.source_id, self.site_id)

    @property
    def application(self) -> ActiveParticipant:
        """This process as an active participant (UserID = process id, AlternativeUserID = pid)."""
        return ActiveParticipant(
            f"{self.app_name}@{self.hostname}", (ROLE_APPLICATION,), alt_user_id=self.process_id, address=self.hostname
        )


@dataclass(frozen=True)
class Party:
    """One side of a transaction as the audit tables name it: a SOAP endpoint, an HL7 application,
    a process; ``user_name`` carries the authenticated certificate subject when there is one."""

    user_id: str
    address: str = ""
    user_name: str = ""
    alt_user_id: str = ""

    def participant(self, role: Code, *, requestor: bool) -> ActiveParticipant:
        return ActiveParticipant(self.user_id, (role,), requestor, self.alt_user_id, self.user_name, self.address)


@dataclass(frozen=True)
class DocumentRef:
    unique_id: str
    repository_unique_id: str = ""
    home_community_id: str = ""


@dataclass(frozen=True)
class StudyRef:
    study_instance_uid: str
    repository_unique_id: str = ""
    home_community_id: str = ""


# --- XML (DICOM PS3.15 A.5.1) ---------------------------------------------------------------


# Characters XML 1.0 cannot carry; values from peers (certificate subjects, HL7 fields) may hold them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


# A value with none of these (and nothing _clean replaces) is quoted as is: most are, and
# quoteattr's replace chain was a large part of building each audit message (docs/benchmarks.md, PIX).
_ATTR_PLAIN = re.compile('[^&<>"\n\r\t\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]*')


def _quoteattr(value: str) -> str:
    return f'"{value}"' if _ATTR_PLAIN.fullmatch(value) else quoteattr(_clean(value))


def _attrs(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(f" {k}={_quoteattr(v)}" for k, v in pairs if v != "")


def _coded(tag: str, c: Code) -> str:
    return f"<{tag}{_attrs((('csd-code', c.code), ('codeSystemName', c.system_name), ('originalText', c.display)))}/>"


def format_datetime(when: datetime) -> str:
    """xsd:dateTime in UTC with milliseconds, as audit messages carry it."""
    utc = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def to_xml(msg: AuditMessage) -> bytes:
    """The DICOM audit message document (element order of the PS3.15 A.5.1 schema)."""
    out = ['<?xml version="1.0" encoding="UTF-8"?><AuditMessage>']
    ev = _attrs(
        (
            ("EventActionCode", msg.action),
            ("EventDateTime", format_datetime(msg.when)),
            ("EventOutcomeIndicator", str(msg.outcome)),
        )
    )
    out.append(f"<EventIdentification{ev}>{_coded('EventID', msg.event_id)}")
    out.extend(_coded("EventTypeCode", c) for c in msg.event_types)
    if msg.outcome_description:
        out.append(f"<EventOutcomeDescription>{escape(_clean(msg.outcome_description))}</EventOutcomeDescription>")
    out.append("</EventIdentification>")
    for p in msg.participants:
        attrs = _attrs(
            (
                ("UserID", p.user_id),
                ("AlternativeUserID", p.alt_user_id),
                ("UserName", p.user_name),
                ("UserIsRequestor", "true" if p.requestor else "false"),
                ("NetworkAccessPointID", p.address),
                ("NetworkAccessPointTypeCode", p.address_type),
            )
        )
        out.append(f"<ActiveParticipant{attrs}>{''.join(_coded('RoleIDCode', r) for r in p.roles)}</ActiveParticipant>")
    src = _attrs((("AuditEnterpriseSiteID", msg.source.site_id), ("AuditSourceID", msg.source.source_id)))
    out.append(
        f"<AuditSourceIdentification{src}><AuditSourceTypeCode csd-code={quoteattr(msg.source.type_code)}/>"
        "</AuditSourceIdentification>"
    )
    for o in msg.objects:
        attrs = _attrs(
            (
                ("ParticipantObjectID", o.object_id),
                ("ParticipantObjectTypeCode", o.type_code),
                ("ParticipantObjectTypeCodeRole", o.role),
                ("ParticipantObjectDataLifeCycle", o.lifecycle),
            )
        )
        out.append(f"<ParticipantObjectIdentification{attrs}>{_coded('ParticipantObjectIDTypeCode', o.id_type)}")
        if o.name:
            out.append(f"<ParticipantObjectName>{escape(_clean(o.name))}</ParticipantObjectName>")
        elif o.query is not None:
            out.append(f"<ParticipantObjectQuery>{base64.b64encode(o.query).decode()}</ParticipantObjectQuery>")
        for kind, value in o.details:
            out.append(f"<ParticipantObjectDetail{_attrs((('type', kind),))} value={quoteattr(_b64(value))}/>")
        out.append("</ParticipantObjectIdentification>")
    out.append("</AuditMessage>")
    return "".join(out).encode("utf-8")


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


# --- syslog (RFC 5424 message, RFC 5425 framing) ---------------------------------------------


def _header_field(value: str, limit: int) -> str:
    # RFC 5424 header fields are printable US-ASCII without spaces; "-" stands for "no value".
    cleaned = "".join(ch for ch in value if 33 <= ord(ch) <= 126)[:limit]
    return cleaned or "-"


def syslog_message(xml: bytes, node: AuditNode, when: datetime | None = None) -> bytes:
    """One RFC 5424 message carrying an audit message, with the ITI-20 header values."""
    stamp = format_datetime(when or datetime.now(UTC))
    header = (
        f"<{SYSLOG_PRI}>1 {stamp} {_header_field(node.hostname, 255)} {_header_field(node.app_name, 48)} "
        f"{_header_field(node.process_id, 128)} {SYSLOG_MSGID} - "
    )
    return header.encode("ascii") + xml


def octet_frame(message: bytes) -> bytes:
    """RFC 5425 octet-counting frame: MSG-LEN SP SYSLOG-MSG."""
    return str(len(message)).encode("ascii") + b" " + message


# --- builders ----------------------------------------------------------------------------------

SOURCE, RECIPIENT = "source", "recipient"


def _side(side: str) -> tuple[Code, str]:
    if side == SOURCE:
        return EV_EXPORT, "R"
    if side == RECIPIENT:
        return EV_IMPORT, "C"
    raise ValueError(f"side must be {SOURCE!r} or {RECIPIENT!r}, not {side!r}")


def patient_object(patient_id: str, details: tuple[tuple[str, bytes], ...] = ()) -> ParticipantObject:
    return ParticipantObject(patient_id, OBJ_PERSON, ROLE_PATIENT, ID_PATIENT_NUMBER, details=details)


def _patients(ids: Iterable[str], details: tuple[tuple[str, bytes], ...] = ()) -> list[ParticipantObject]:
    seen: dict[str, None] = dict.fromkeys(i for i in ids if i)
    return [patient_object(i, details) for i in seen]


def _now(when: datetime | None) -> datetime:
    return when or datetime.now(UTC)


def provide_and_register(
    side: str,
    *,
    node: AuditNode,
    source: Party,
    destination: Party,
    patient_id: str,
    submission_set_uid: str,
    outcome: int = SUCCESS,
    outcome_description: str = "",
    transaction: str = "ITI-41",
    when: datetime | None = None,
) -> AuditMessage:
    """ITI-41 (or RAD-68 with ``transaction="RAD-68"``): Export by the Document Source (``side=SOURCE``),
    Import by the Document Repository (``side=RECIPIENT``); the patient and the submission set."""
    event, action = _side(side)
    objects = _patients([patient_id])
    if submission_set_uid:
        objects.append(ParticipantObject(submission_set_uid, OBJ_SYSTEM, ROLE_JOB, ID_SUBMISSION_SET))
    return AuditMessage(
        event,
        action,
        outcome,
        _now(when),
        node.source,
        (
            source.participant(ROLE_SOURCE, requestor=side == SOURCE),
            destination.participant(ROLE_DESTINATION, requestor=False),
        ),
        (transaction_code(transaction),),
        tuple(objects),
        outcome_description,
    )


def register_document_set(side: str, **kwargs: object) -> AuditMessage:
    """ITI-42: Export by the Document Repository (``SOURCE``), Import by the Document Registry (``RECIPIENT``)."""
    return provide_and_register(side, transaction="ITI-42", **kwargs)  # type: ignore[arg-type]


def registry_stored_query(
    *,
    node: AuditNode,
    consumer: Party,
    registry: Party,
    query_id: str,
    query: bytes,
    patient_id: str = "",
    home_community_id: str = "",
    outcome: int = SUCCESS,
    outcome_description: str = "",
    when: datetime | None = None,
) -> AuditMessage:
    """ITI-18 (the same message on both sides): Query, with the AdhocQueryRequest as the query object."""
    details: list[tuple[str, bytes]] = [("QueryEncoding", b"UTF-8")]
    if home_community_id:
        details.append(("urn:ihe:iti:xca:2010:homeCommunityId", home_community_id.encode()))
    objects = _patients([patient_id])
    objects.append(
        ParticipantObject(
            query_id, OBJ_SYSTEM, ROLE_QUERY, transaction_code("ITI-18"), query=query, details=tuple(details)
        )
    )
    return AuditMessage(
        EV_QUERY,
        "E",
        outcome,
        _now(when),
        node.source,
        (consumer.participant(ROLE_SOURCE, requestor=True), registry.participant(ROLE_DESTINATION, requestor=False)),
        (transaction_code("ITI-18"),),
        tuple(objects),
        outcome_description,
    )


def _document_details(repository_unique_id: str, home_community_id: str) -> tuple[tuple[str, bytes], ...]:
    details = []
    if repository_unique_id:
        details.append(("Repository Unique Id", repository_unique_id.encode()))
    if home_community_id:
        details.append(("ihe:homeCommunityID", home_community_id.encode()))
    return tuple(details)


def retrieve_document_set(
    side: str,
    *,
    node: AuditNode,
    repository: Party,
    consumer: Party,
    documents: Sequence[DocumentRef],
    patient_id: str = "",
    outcome: int = SUCCESS,
    outcome_description: str = "",
    transaction: str = "ITI-43",
    when: datetime | None = None,
) -> AuditMessage:
    """ITI-43: Export by the Document Repository (``SOURCE``), Import by the Document Consumer
    (``RECIPIENT``). The repository is the Source Role ID, the consumer the requesting Destination."""
    event, action = _side(side)
    objects = _patients([patient_id])
    objects += [
        ParticipantObject(
            d.unique_id,
            OBJ_SYSTEM,
            ROLE_REPORT,
            ID_REPORT_NUMBER,
            details=_document_details(d.repository_unique_id, d.home_community_id),
        )
        for d in documents
    ]
    return AuditMessage(
        event,
        action,
        outcome,
        _now(when),
        node.source,
        (repository.participant(ROLE_SOURCE, requestor=False), consumer.participant(ROLE_DESTINATION, requestor=True)),
        (transaction_code(transaction),),
        tuple(objects),
        outcome_description,
    )


def retrieve_imaging_document_set(
    side: str,
    *,
    node: AuditNode,
    source: Party,
    consumer: Party,
    studies: Sequence[StudyRef],
    patient_id: str = "",
    outcome: int = SUCCESS,
    outcome_description: str = "",
    when: datetime | None = None,
) -> AuditMessage:
    """RAD-69: DICOM Instances Transferred (Read by the Imaging Document Source, Create by the consumer),
    one object per study."""
    action = "R" if _side(side)[1] == "R" else "C"
    objects = _patients([patient_id])
    objects += [
        ParticipantObject(
            s.study_instance_uid,
            OBJ_SYSTEM,
            ROLE_REPORT,
            ID_STUDY_INSTANCE_UID,
            details=_document_details(s.repository_unique_id, s.home_community_id),
        )
        for s in studies
    ]
    return AuditMessage(
        EV_INSTANCES_TRANSFERRED,
        action,
        outcome,
        _now(when),
        node.source,
        (source.participant(ROLE_SOURCE, requestor=False), consumer.participant(ROLE_DESTINATION, requestor=True)),
        (transaction_code("RAD-69"),),
        tuple(objects),
        outcome_description,
    )


# HL7 v2 trigger events of ITI-8 and the EventActionCode each one means.
FEED_ACTIONS = {"A01": "C", "A04": "C", "A05": "C", "A08": "U", "A40": "U"}


def patient_identity_feed(
    *,
    node: AuditNode,
    source: Party,
    destination: Party,
    trigger_event: str,
    patient_ids: Sequence[str],
    message_control_id: str,
    outcome: int = SUCCESS,
    outcome_description: str = "",
    transaction: str = "ITI-8",
    when: datetime | None = None,
) -> AuditMessage:
    """ITI-8 (HL7 v2 ADT): Patient Record, Create for A01/A04/A05, Update for A08 and the A40 merge.
    ``source`` is the sending application (MSH-3|MSH-4), ``destination`` the receiver (MSH-5|MSH-6)."""
    details = (("MSH-10", message_control_id.encode()),) if message_control_id else ()
    return AuditMessage(
        EV_PATIENT_RECORD,
        FEED_ACTIONS.get(trigger_event, "U"),
        outcome,
        _now(when),
        node.source,
        (source.participant(ROLE_SOURCE, requestor=False), destination.participant(ROLE_DESTINATION, requestor=False)),
        (transaction_code(transaction),),
        tuple(_patients(patient_ids, details)),
        outcome_description,
    )


def pix_query(
    *,
    node: AuditNode,
    consumer: Party,
    manager: Party,
    query: bytes,
    message_control_id: str,
    patient_ids: Sequence[str] = (),
    outcome: int = SUCCESS,
    outcome_description: str = "",
    when: datetime | None = None,
) -> AuditMessage:
    """ITI-9 PIX Query: Query, with the QPD segment as the query object and the patient(s) found."""
    details = (("MSH-10", message_control_id.encode()),) if message_control_id else ()
    objects = _patients(patient_ids)
    objects.append(
        ParticipantObject(
            message_control_id or "-", OBJ_SYSTEM, ROLE_QUERY, transaction_code("ITI-9"), query=query, details=details
        )
    )
    return AuditMessage(
        EV_QUERY,
        "E",
        outcome,
        _now(when),
        node.source,
        (consumer.participant(ROLE_SOURCE, requestor=True), manager.participant(ROLE_DESTINATION, requestor=False)),
        (transaction_code("ITI-9"),),
        tuple(objects),
        outcome_description,
    )


def pix_update_notification(
    *,
    node: AuditNode,
    manager: Party,
    consumer: Party,
    patient_ids: Sequence[str],
    message_control_id: str,
    outcome: int = SUCCESS,
    outcome_description: str = "",
    when: datetime | None = None,
) -> AuditMessage:
    """ITI-10 PIX Update Notification: Patient Record Update, one object per patient identifier."""
    details = (("MSH-10", message_control_id.encode()),) if message_control_id else ()
    return AuditMessage(
        EV_PATIENT_RECORD,
        "U",
        outcome,
        _now(when),
        node.source,
        (manager.participant(ROLE_SOURCE, requestor=False), consumer.participant(ROLE_DESTINATION, requestor=False)),
        (transaction_code("ITI-10"),),
        tuple(_patients(patient_ids, details)),
        outcome_description,
    )


def update_document_set(
    side: str,
    *,
    node: AuditNode,
    source: Party,
    destination: Party,
    patient_id: str,
    submission_set_uid: str,
    outcome: int = SUCCESS,
    outcome_description: str = "",
    when: datetime | None = None,
) -> AuditMessage:
    """ITI-57 Update Document Set: Export by the Document Administrator, Import by the registry."""
    event, _ = _side(side)
    msg = provide_and_register(
        side,
        node=node,
        source=source,
        destination=destination,
        patient_id=patient_id,
        submission_set_uid=submission_set_uid,
        outcome=outcome,
        outcome_description=outcome_description,
        transaction="ITI-57",
        when=when,
    )
    return AuditMessage(
        event,
        "U",
        msg.outcome,
        msg.when,
        msg.source,
        msg.participants,
        msg.event_types,
        msg.objects,
        msg.outcome_description,
    )


def _deleted_objects(object_ids: Iterable[str], id_type: Code) -> list[ParticipantObject]:
    return [
        ParticipantObject(i, OBJ_SYSTEM, ROLE_REPORT, id_type, lifecycle=LIFECYCLE_PERMANENT_ERASURE)
        for i in object_ids
    ]


def delete_document_set(
    *,
    node: AuditNode,
    source: Party,
    registry: Party,
    object_ids: Sequence[str],
    patient_id: str = "",
    outcome: int = SUCCESS,
    outcome_description: str = "",
    when: datetime | None = None,
) -> AuditMessage:
    """ITI-62 Delete Document Set: Patient Record Delete, one object per removed registry object."""
    return AuditMessage(
        EV_PATIENT_RECORD,
        "D",
        outcome,
        _now(when),
        node.source,
        (source.participant(ROLE_SOURCE, requestor=True), registry.participant(ROLE_DESTINATION, requestor=False)),
        (transaction_code("ITI-62"),),
        tuple(_patients([patient_id]) + _deleted_objects(object_ids, ID_OBJECT_REF)),
        outcome_description,
    )


def _node_or_operator(node: AuditNode, operator: Party | None) -> list[ActiveParticipant]:
    """This node, the requestor when it acted alone; else the operator who ran the command requests it."""
    participants = [dataclasses.replace(node.application, requestor=operator is None)]
    if operator is not None:
        participants.append(operator.participant(ROLE_APPLICATION_LAUNCHER, requestor=True))
    return participants


def purge(
    *,
    node: AuditNode,
    document_unique_ids: Sequence[str],
    patient_ids: Sequence[str] = (),
    reason: str = "",
    operator: Party | None = None,
    outcome: int = SUCCESS,
    when: datetime | None = None,
    submission_set_uids: Sequence[str] = (),
    repository_unique_id: str = "",
    home_community_id: str = "",
    registry_object_ids: Sequence[str] = (),
) -> AuditMessage:
    """A retention purge: Patient Record Delete (DICOM PS3.15 A.5.3.9, action D) by this node, every
    removed object permanently erased (ParticipantObjectDataLifeCycle 15). DICOM defines no purge event
    and no IHE transaction took place, so the EventTypeCode is ours (``retention-purge``); the objects
    are named as the two IHE deletions name them: each document as ITI-86 Remove Documents does
    (ITI TF-2b 3.86.5: Report Number = uniqueId, with its Repository Unique Id and homeCommunityID
    details), each registry object as ITI-62 Delete Document Set does (ITI TF-2b 3.62.5: its entryUUID
    as an ObjectRef), and each submission set by its uniqueId. This node is the requestor, or the
    operator (Application Launcher) who ran ``clearinghouse purge``. Purged DICOM instances are also
    reported by ``study_deleted``."""
    participants = _node_or_operator(node, operator)
    submission_sets = [
        ParticipantObject(uid, OBJ_SYSTEM, ROLE_JOB, ID_SUBMISSION_SET, lifecycle=LIFECYCLE_PERMANENT_ERASURE)
        for uid in dict.fromkeys(submission_set_uids)
        if uid
    ]
    details = _document_details(repository_unique_id, home_community_id)
    documents = [
        ParticipantObject(
            uid, OBJ_SYSTEM, ROLE_REPORT, ID_REPORT_NUMBER, details=details, lifecycle=LIFECYCLE_PERMANENT_ERASURE
        )
        for uid in dict.fromkeys(document_unique_ids)
        if uid
    ]
    registry_objects = _deleted_objects(dict.fromkeys(i for i in registry_object_ids if i), ID_OBJECT_REF)
    return AuditMessage(
        EV_PATIENT_RECORD,
        "D",
        outcome,
        _now(when),
        node.source,
        tuple(participants),
        (PURGE_EVENT_TYPE,),
        tuple(_patients(patient_ids) + submission_sets + documents + registry_objects),
        reason,
    )


def study_deleted(
    *,
    node: AuditNode,
    study_instance_uids: Sequence[str],
    patient_ids: Sequence[str] = (),
    reason: str = "",
    operator: Party | None = None,
    outcome: int = SUCCESS,
    when: datetime | None = None,
) -> AuditMessage:
    """DICOM Study Deleted (PS3.15 A.5.3.5, EventID 110105, action D): the DICOM instances of each study
    removed from the store (a retention purge of an imaging submission), by this node or an operator."""
    participants = _node_or_operator(node, operator)
    studies = [
        ParticipantObject(uid, OBJ_SYSTEM, ROLE_REPORT, ID_STUDY_INSTANCE_UID, lifecycle=LIFECYCLE_PERMANENT_ERASURE)
        for uid in dict.fromkeys(study_instance_uids)
        if uid
    ]
    return AuditMessage(
        EV_STUDY_DELETED,
        "D",
        outcome,
        _now(when),
        node.source,
        tuple(participants),
        (PURGE_EVENT_TYPE,),
        tuple(studies + _patients(patient_ids)),
        reason,
    )


def remove_documents(
    *,
    node: AuditNode,
    administrator: Party,
    repository: Party,
    documents: Sequence[DocumentRef],
    outcome: int = SUCCESS,
    outcome_description: str = "",
    when: datetime | None = None,
) -> AuditMessage:
    """ITI-86 Remove Documents (ITI TF-2b 3.86.5): Patient Record Delete; the Document Administrator
    (requestor) and the Document Repository; each document named, with its Repository Unique Id."""
    objects = [
        ParticipantObject(
            d.unique_id,
            OBJ_SYSTEM,
            ROLE_REPORT,
            ID_REPORT_NUMBER,
            details=_document_details(d.repository_unique_id, d.home_community_id),
            lifecycle=LIFECYCLE_PERMANENT_ERASURE,
        )
        for d in documents
    ]
    return AuditMessage(
        EV_PATIENT_RECORD,
        "D",
        outcome,
        _now(when),
        node.source,
        (
            administrator.participant(ROLE_SOURCE, requestor=True),
            repository.participant(ROLE_DESTINATION, requestor=False),
        ),
        (transaction_code("ITI-86"),),
        tuple(objects),
        outcome_description,
    )


def security_alert(
    alert_type: Code,
    *,
    node: AuditNode,
    subject: str,
    description: str,
    offender: Party | None = None,
    outcome: int = MINOR_FAILURE,
    when: datetime | None = None,
) -> AuditMessage:
    """A Security Alert (DICOM PS3.15 A.5.3.11): reported by this node, performed by ``offender``;
    ``subject`` (a URI or a name) is what the alert is about, ``description`` why."""
    participants = [node.application]
    if offender is not None:
        participants.append(offender.participant(ROLE_SOURCE, requestor=True))
    obj = ParticipantObject(
        subject or "-",
        OBJ_SYSTEM,
        ROLE_SECURITY_RESOURCE,
        ID_URI,
        details=(("Alert Description", description.encode()),),
    )
    return AuditMessage(
        EV_SECURITY_ALERT,
        "E",
        outcome,
        _now(when),
        node.source,
        tuple(participants),
        (alert_type,),
        (obj,),
        description,
    )


def node_authentication_failure(
    *, node: AuditNode, endpoint: str, peer: Party, reason: str, when: datetime | None = None
) -> AuditMessage:
    """A refused TLS connection: Security Alert, Node Authentication, minor failure."""
    return security_alert(
        NODE_AUTHENTICATION, node=node, subject=endpoint, description=reason, offender=peer, when=when
    )


def restricted_function(
    *, node: AuditNode, endpoint: str, peer: Party, transaction: str, reason: str, when: datetime | None = None
) -> AuditMessage:
    """A refused authorization (the peer lacks the role for ``transaction``): Use of Restricted Function."""
    msg = security_alert(
        USE_OF_RESTRICTED_FUNCTION, node=node, subject=endpoint, description=reason, offender=peer, when=when
    )
    return AuditMessage(
        msg.event_id,
        msg.action,
        msg.outcome,
        msg.when,
        msg.source,
        msg.participants,
        msg.event_types + ((transaction_code(transaction),) if transaction in TRANSACTION_NAMES else ()),
        msg.objects,
        msg.outcome_description,
    )


def malformed_request(
    *, node: AuditNode, endpoint: str, peer: Party, reason: str, transaction: str = "", when: datetime | None = None
) -> AuditMessage:
    """A request refused before dispatch: Security Alert, Malformed request refused (plus the IHE
    transaction when the request named one); the peer (its certificate subject) and the endpoint, with
    what was wrong."""
    msg = security_alert(MALFORMED_REQUEST, node=node, subject=endpoint, description=reason, offender=peer, when=when)
    if transaction in TRANSACTION_NAMES:
        msg = dataclasses.replace(msg, event_types=(*msg.event_types, transaction_code(transaction)))
    return msg


def user_authentication(
    *,
    node: AuditNode,
    user: Party,
    login: bool = True,
    outcome: int = SUCCESS,
    description: str = "",
    when: datetime | None = None,
) -> AuditMessage:
    """User Authentication (DICOM PS3.15 A.5.3.12): the user (requestor) and this authenticating node."""
    return AuditMessage(
        EV_USER_AUTHENTICATION,
        "E",
        outcome,
        _now(when),
        node.source,
        (user.participant(ROLE_SOURCE, requestor=True), node.application),
        (LOGIN if login else LOGOUT,),
        (),
        description,
    )


def participant_change(
    *,
    node: AuditNode,
    change: str,
    participant: str,
    roles: Sequence[str] = (),
    fingerprint: str = "",
    subject: str = "",
    operator: Party | None = None,
    when: datetime | None = None,
) -> AuditMessage:
    """A participant added, imported or revoked: Security Alert, Security Roles Changed when roles are
    granted, User Security Attributes Changed otherwise; the participant is the object."""
    alert = SECURITY_ROLES_CHANGED if roles and change in ("add", "import") else USER_SECURITY_ATTRIBUTES_CHANGED
    details = [("change", change.encode())]
    if roles:
        details.append(("roles", ",".join(sorted(roles)).encode()))
    if fingerprint:
        details.append(("certificate-sha256", fingerprint.encode()))
    if subject:
        details.append(("certificate-subject", subject.encode()))
    participants = [node.application]
    if operator is not None:
        participants.append(operator.participant(ROLE_APPLICATION_LAUNCHER, requestor=True))
    obj = ParticipantObject(participant, OBJ_PERSON, ROLE_SECURITY_USER, ID_USER_IDENTIFIER, details=tuple(details))
    return AuditMessage(
        EV_SECURITY_ALERT,
        "E",
        SUCCESS,
        _now(when),
        node.source,
        tuple(participants),
        (alert,),
        (obj,),
        f"participant {participant!r}: {change}",
    )


def application_activity(*, node: AuditNode, start: bool, when: datetime | None = None) -> AuditMessage:
    """Application Activity: this clearinghouse started or stopped."""
    return AuditMessage(
        EV_APPLICATION_ACTIVITY,
        "E",
        SUCCESS,
        _now(when),
        node.source,
        (node.application,),
        (APPLICATION_START if start else APPLICATION_STOP,),
    )


def audit_log_used(
    *,
    node: AuditNode,
    auditor: Party,
    log_uri: str,
    query: bytes = b"",
    outcome: int = SUCCESS,
    outcome_description: str = "",
    when: datetime | None = None,
) -> AuditMessage:
    """Audit Log Used (DICOM PS3.15 A.5.3.2): somebody read the audit log (ITI-81 search, CLI export)."""
    obj = ParticipantObject(log_uri, OBJ_SYSTEM, ROLE_SECURITY_RESOURCE, ID_URI, query=query or None)
    return AuditMessage(
        EV_AUDIT_LOG_USED,
        "R",
        outcome,
        _now(when),
        node.source,
        (auditor.participant(ROLE_DESTINATION, requestor=True), node.application),
        (transaction_code("ITI-81"),),
        (obj,),
        outcome_description,
    )


# The request id of the transaction an event records (clearinghouse.logging_setup), as a
# ParticipantObjectDetail of the event's first participant object. DICOM PS3.15 A.5 allows any number of
# ParticipantObjectDetail type/value pairs ("implementation-defined data about specific details of the
# object") in every ParticipantObjectIdentification, so the message stays schema-valid and keeps every
# element and participant object the IHE audit tables require; docs/decisions.md says why here.
REQUEST_ID_DETAIL = "ISN-RequestID"


def with_request_id(message: AuditMessage, request_id: str) -> AuditMessage:
    """``message`` with ``request_id`` on its first participant object (unchanged if either is missing)."""
    if not request_id or not message.objects:
        return message
    first, *rest = message.objects
    if any(kind == REQUEST_ID_DETAIL for kind, _ in first.details):
        return message
    tagged = dataclasses.replace(first, details=(*first.details, (REQUEST_ID_DETAIL, request_id.encode())))
    return dataclasses.replace(message, objects=(tagged, *rest))


# --- sinks -------------------------------------------------------------------------------------


def emitted_message(message: bytes | AuditMessage, node: AuditNode) -> bytes:
    """The RFC 5424 message a sink sends for ``message`` (bytes are taken as one already), tagged with
    the request id of the calling thread (sinks serialise in the thread of the transaction recorded)."""
    if isinstance(message, bytes):
        return message
    message = with_request_id(message, current_request_id())
    return syslog_message(message.to_xml(), node, message.when)


@runtime_checkable
class AuditSink(Protocol):
    """Where audit messages go. ``emit`` returns at once and never raises into the caller."""

    def emit(self, message: bytes | AuditMessage) -> None: ...


class QueuedSink(ABC):
    """Base of the sinks: ``emit`` serialises to an RFC 5424 message and queues it; one background
    thread hands batches to ``_deliver`` and retries a failed batch (with backoff) until it succeeds
    or the sink is closed. ``message`` given as bytes is taken as a complete syslog message."""

    RETRY_MIN, RETRY_MAX = 0.05, 5.0

    def __init__(self, node: AuditNode, *, capacity: int = 200_000, name: str = "audit-sink") -> None:
        self.node = node
        self.capacity = capacity
        self.dropped = 0
        self.delivered = 0
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def emit(self, message: bytes | AuditMessage) -> None:
        try:
            self._enqueue(self.serialise(message))
        except Exception:  # noqa: BLE001 - auditing must never break the transaction it records
            log.exception("could not queue an audit message")

    def serialise(self, message: bytes | AuditMessage) -> bytes:
        return emitted_message(message, self.node)

    def _enqueue(self, data: bytes) -> None:
        with self._cond:
            if len(self._queue) >= self.capacity:
                self.dropped += 1
                log.error("audit sink full (%d queued): audit message dropped", len(self._queue))
                return
            self._queue.append(data)
            self._cond.notify()

    @property
    def pending(self) -> int:
        """Messages queued and not yet delivered."""
        with self._cond:
            return len(self._queue)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued message is delivered; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        self._disconnect()

    def _run(self) -> None:
        delay = self.RETRY_MIN
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = list(self._queue)[:1000]
                self._busy = True
            try:
                self._deliver(batch)
            except Exception as exc:  # noqa: BLE001 - keep the batch, retry after a pause
                with self._cond:
                    self._busy = False
                    if self._closing:
                        log.error("audit sink closing with %d undelivered message(s): %s", len(self._queue), exc)
                        return
                log.warning("audit delivery failed (%s); retrying in %.2fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.RETRY_MAX)
                continue
            delay = self.RETRY_MIN
            with self._cond:
                for _ in batch:
                    self._queue.popleft()
                self.delivered += len(batch)
                self._busy = False
                self._cond.notify_all()

    @abstractmethod
    def _deliver(self, batch: list[bytes]) -> None:
        """Hand a batch to its destination durably, or raise so that it is retried."""

    def _disconnect(self) -> None:  # noqa: B027 - a hook: only sinks holding a connection override it
        """Drop any connection the sink holds (called on close and after a failed delivery)."""


class LocalRepositorySink(QueuedSink):
    """Delivers to the built-in Audit Record Repository of this process through ``accept``, which
    writes a batch of syslog messages to its spool (or raises). ``emit`` calls it synchronously, in the
    thread of the transaction being recorded, so the event is written before that transaction's
    response is sent and survives the process being killed; only when ``accept`` fails is the message
    queued and retried in the background."""

    def __init__(self, accept: Callable[[list[bytes]], None], node: AuditNode, **kwargs: object) -> None:
        self._accept = accept
        super().__init__(node, name="audit-local", **kwargs)  # type: ignore[arg-type]

    def emit(self, message: bytes | AuditMessage) -> None:
        try:
            data = self.serialise(message)
        except Exception:  # noqa: BLE001 - auditing must never break the transaction it records
            log.exception("could not build an audit message")
            return
        with self._cond:
            behind = bool(self._queue) or self._closing  # keep the order of messages already queued
        if not behind:
            try:
                self._accept([data])
                with self._cond:
                    self.delivered += 1
                return
            except Exception as exc:  # noqa: BLE001 - queued and retried below
                log.error("audit message could not be written to the spool (%s); queued for retry", exc)
        self._enqueue(data)

    def _deliver(self, batch: list[bytes]) -> None:
        self._accept(batch)


class SyslogTlsSink(QueuedSink):
    """Delivers to an external Audit Record Repository over TLS syslog (RFC 5425) with mutual TLS;
    a broken connection is re-opened and the unsent batch sent again."""

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, node: AuditNode, *, timeout: float = 10.0, **kwargs: object
    ) -> None:
        self.host, self.port = host, port
        self.connection = SyslogTlsConnection(host, port, context, timeout=timeout)
        super().__init__(node, name="audit-syslog-tls", **kwargs)  # type: ignore[arg-type]

    def _deliver(self, batch: list[bytes]) -> None:
        self.connection.send(batch)

    def _disconnect(self) -> None:
        self.connection.close()


class SyslogTlsConnection:
    """A client connection to an Audit Record Repository over TLS syslog (RFC 5425 octet counting),
    opened on first use and dropped on any error, so that the next ``send`` opens a fresh one."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, *, timeout: float = 10.0) -> None:
        self.host, self.port, self.context, self.timeout = host, port, context, timeout
        self._sock: ssl.SSLSocket | None = None

    def send(self, batch: list[bytes]) -> None:
        """Send syslog messages, each in its own frame; raises OSError (the connection dropped)."""
        if self._sock is None:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
            try:
                self._sock = self.context.wrap_socket(raw, server_hostname=self.host)
            except BaseException:
                raw.close()
                raise
        try:
            self._sock.sendall(b"".join(octet_frame(m) for m in batch))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


def parse_repository_url(url: str) -> tuple[str, int]:
    """``syslog+tls://host:port`` (port 6514 by default) -> (host, port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("syslog+tls", "tls"):
        raise ValueError(f"audit repository URL {url!r}: only syslog+tls://HOST[:PORT] is supported")
    if not parts.hostname:
        raise ValueError(f"audit repository URL {url!r} names no host")
    return parts.hostname, parts.port or 6514
