"""Reading and checking an audit message: the DICOM form (PS3.15 A.5.1) and the older RFC 3881 form.

``parse_audit`` never refuses: it returns what it could read and a list of findings, each naming
the element or attribute and the rule it breaks. A message with findings is still stored (flagged).
The rules are those of the PS3.15 A.5.1 schema; see docs/decisions.md for why they are code rather
than a schema file.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import NamedTuple

from lxml import etree

from clearinghouse.xmlsafe import XmlRejected, parse_xml

DICOM, RFC3881, UNKNOWN = "dicom", "rfc3881", "unknown"

ACTIONS = frozenset("CRUDE")
OUTCOMES = frozenset({"0", "4", "8", "12"})
ADDRESS_TYPES = frozenset({"1", "2", "3", "4", "5"})
OBJECT_TYPES = frozenset({"1", "2", "3", "4"})
OBJECT_ROLES = frozenset(str(n) for n in range(1, 27))
LIFECYCLES = frozenset(str(n) for n in range(1, 16))
SOURCE_TYPES = frozenset(str(n) for n in range(1, 10))
TOP_ORDER = ("EventIdentification", "ActiveParticipant", "AuditSourceIdentification", "ParticipantObjectIdentification")

_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})?\Z")
_BASE64 = re.compile(rb"[A-Za-z0-9+/\s]*={0,2}\s*\Z")


class Coded(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: a message carries a dozen of these and a frozen
    # dataclass costs several times more to build, on the ingest hot path.
    code: str
    system: str = ""
    display: str = ""


@dataclass(slots=True)
class Participant:
    user_id: str
    alt_user_id: str = ""
    user_name: str = ""
    requestor: bool | None = None
    address: str = ""
    address_type: str = ""
    roles: list[Coded] = field(default_factory=list)


@dataclass(slots=True)
class ObjectRef:
    object_id: str
    type_code: str = ""
    role: str = ""
    lifecycle: str = ""
    sensitivity: str = ""
    id_type: Coded | None = None
    name: str = ""
    query: str = ""  # base64 as sent
    details: list[tuple[str, str]] = field(default_factory=list)  # (type, base64 value)


@dataclass
class ParsedAudit:
    form: str = UNKNOWN
    event_id: Coded | None = None
    action: str = ""
    outcome: int | None = None
    event_time: datetime | None = None
    event_types: list[Coded] = field(default_factory=list)
    purposes: list[Coded] = field(default_factory=list)
    outcome_description: str = ""
    participants: list[Participant] = field(default_factory=list)
    source_id: str = ""
    site_id: str = ""
    source_types: list[str] = field(default_factory=list)
    objects: list[ObjectRef] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.findings

    def patients(self) -> list[str]:
        return [o.object_id for o in self.objects if o.type_code == "1" and o.role == "1"]


def parse_datetime(text: str) -> datetime | None:
    """xsd:dateTime to an aware UTC datetime (no zone: taken as UTC); None if it is not one."""
    m = _DATETIME.match(text.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        when = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int((frac or ".0")[1:7].ljust(6, "0")))
    except ValueError:
        return None
    if tz in (None, "Z"):
        return when.replace(tzinfo=UTC)
    offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    return when.replace(tzinfo=timezone(offset if tz[0] == "+" else -offset)).astimezone(UTC)


def _bool(text: str | None) -> bool | None:
    if text is None:
        return None
    return {"true": True, "1": True, "false": False, "0": False}.get(text.strip())


def _is_base64(text: str) -> bool:
    data = text.encode("ascii", "replace")
    if not _BASE64.match(data):
        return False
    try:
        base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


Where = str | tuple[str, int] | tuple[str, int, str]


def _loc(where: Where) -> str:
    """A finding's location, formatted only when there is a finding (parsing is on the hot path)."""
    if isinstance(where, str):
        return where
    if len(where) == 2:
        return f"{where[0]}[{where[1]}]"
    return f"{where[0]}[{where[1]}]/{where[2]}"  # type: ignore[misc]


class _Reader:
    def __init__(self, form: str, findings: list[str]) -> None:
        self.form = form
        self.findings = findings

    def coded(self, el: etree._Element, where: Where) -> Coded:
        get = el.get
        if self.form == RFC3881:
            code = get("code") or get("csd-code") or ""
            if not code:
                self.findings.append(f"{_loc(where)}: attribute code is required (RFC 3881)")
            return Coded(
                code, get("codeSystemName") or get("codeSystem") or "", get("displayName") or get("originalText") or ""
            )
        code, system, display = get("csd-code"), get("codeSystemName"), get("originalText")
        if not (code and system and display):
            missing = [
                a for a, v in (("csd-code", code), ("codeSystemName", system), ("originalText", display)) if not v
            ]
            self.findings.append(
                f"{_loc(where)}: coded value lacks {', '.join(missing)} (DICOM PS3.15 A.5.1 CodedValueType)"
            )
        return Coded(code or "", system or "", display or get("displayName") or "")

    def enum(self, el: etree._Element, attr: str, allowed: frozenset[str], where: Where, required: bool = False) -> str:
        value = el.get(attr)
        if value is None:
            if required:
                self.findings.append(f"{_loc(where)}: attribute {attr} is required")
            return ""
        if value not in allowed:
            choices = ", ".join(sorted(allowed, key=_num))
            self.findings.append(f"{_loc(where)}: {attr}={value!r} is not one of {choices}")
        return value


def _num(s: str) -> tuple[int, str]:
    return (int(s), s) if s.isdigit() else (1 << 30, s)


def _detect_form(ev: etree._Element | None) -> str:
    # Child loops rather than find()/iterchildren(tag): lxml's path and tag matchers cost more to set up
    # than a dozen children cost to compare, and this runs for every received record.
    event_id = next((c for c in ev if c.tag == "EventID"), None) if ev is not None else None
    if event_id is None:
        return UNKNOWN
    if event_id.get("csd-code") is not None:
        return DICOM
    if event_id.get("code") is not None:
        return RFC3881
    return UNKNOWN


def parse_audit(xml: bytes, *, max_bytes: int = 1 << 24, max_depth: int = 32) -> ParsedAudit:
    """Read an audit message; every deviation from the DICOM (or RFC 3881) schema becomes a finding."""
    out = ParsedAudit()
    if not xml.strip():
        out.findings.append("the syslog MSG part is empty: no audit message")
        return out
    try:
        root = parse_xml(xml, max_bytes=max_bytes, max_depth=max_depth)
    except XmlRejected as exc:
        out.findings.append(f"MSG is not an acceptable XML document: {exc}")
        return out
    if root.tag != "AuditMessage":
        out.findings.append(f"root element is {root.tag!r}, not AuditMessage (DICOM PS3.15 A.5.1 / RFC 3881)")
        return out
    findings = out.findings
    # One pass over the top level: sort the parts and check their order.
    events: list[etree._Element] = []
    participants: list[etree._Element] = []
    sources: list[etree._Element] = []
    objects: list[etree._Element] = []
    buckets = (events, participants, sources, objects)
    last, out_of_order = -1, ""
    for child in root:
        tag = child.tag
        if not isinstance(tag, str):
            continue
        rank = _TOP_RANK.get(tag)
        if rank is None:
            findings.append(f"AuditMessage: unexpected element {tag!r}")
            continue
        buckets[rank].append(child)
        if rank < last and not out_of_order:
            out_of_order = tag
        last = rank if rank > last else last
    out.form = _detect_form(events[0] if events else None)
    if out.form == UNKNOWN:
        findings.append("EventIdentification/EventID carries neither csd-code (DICOM) nor code (RFC 3881)")
    if out_of_order and out.form == DICOM:
        findings.append(f"AuditMessage: {out_of_order} is out of the schema's order ({', '.join(TOP_ORDER)})")
    r = _Reader(out.form, findings)
    _event(events, r, out)
    _participants(participants, r, out)
    _source(sources, r, out)
    _objects(objects, r, out)
    return out


_TOP_RANK = {tag: n for n, tag in enumerate(TOP_ORDER)}
_EVENT_CHILDREN = frozenset({"EventID", "EventTypeCode", "EventOutcomeDescription", "PurposeOfUse"})


def _event(evs: list[etree._Element], r: _Reader, out: ParsedAudit) -> None:
    if len(evs) != 1:
        r.findings.append(f"AuditMessage must have exactly one EventIdentification, has {len(evs)}")
        if not evs:
            return
    ev = evs[0]
    where = "EventIdentification"
    out.action = r.enum(ev, "EventActionCode", ACTIONS, where)
    outcome = r.enum(ev, "EventOutcomeIndicator", OUTCOMES, where, required=True)
    out.outcome = int(outcome) if outcome.isdigit() else None
    stamp = ev.get("EventDateTime")
    if stamp is None:
        r.findings.append(f"{where}: attribute EventDateTime is required")
    else:
        out.event_time = parse_datetime(stamp)
        if out.event_time is None:
            r.findings.append(f"{where}: EventDateTime={stamp!r} is not an xsd:dateTime")
    ids = 0
    for child in ev:
        tag = child.tag
        if tag == "EventID":
            ids += 1
            if ids == 1:
                out.event_id = r.coded(child, "EventIdentification/EventID")
        elif tag == "EventTypeCode":
            out.event_types.append(r.coded(child, "EventIdentification/EventTypeCode"))
        elif tag == "EventOutcomeDescription":
            out.outcome_description = (child.text or "").strip()
        elif tag == "PurposeOfUse":
            out.purposes.append(r.coded(child, "EventIdentification/PurposeOfUse"))
        elif isinstance(tag, str):
            r.findings.append(f"{where}: unexpected element {tag!r}")
    if ids != 1:
        r.findings.append(f"{where}: exactly one EventID is required, found {ids}")


def _participants(aps: list[etree._Element], r: _Reader, out: ParsedAudit) -> None:
    if not aps:
        r.findings.append("AuditMessage must have at least one ActiveParticipant")
    dicom = out.form == DICOM
    for n, ap in enumerate(aps, 1):
        get = ap.get
        where = ("ActiveParticipant", n)
        user = get("UserID")
        if not user:
            r.findings.append(f"{_loc(where)}: attribute UserID is required")
        requestor_text = get("UserIsRequestor")
        requestor = _bool(requestor_text)
        if requestor_text is None:
            if dicom:
                r.findings.append(f"{_loc(where)}: attribute UserIsRequestor is required (DICOM PS3.15 A.5.1)")
        elif requestor is None:
            r.findings.append(f"{_loc(where)}: UserIsRequestor={requestor_text!r} is not an xsd:boolean")
        address = get("NetworkAccessPointID", "")
        address_type = r.enum(ap, "NetworkAccessPointTypeCode", ADDRESS_TYPES, where)
        if address_type and not address:
            r.findings.append(f"{_loc(where)}: NetworkAccessPointTypeCode without NetworkAccessPointID")
        roles = [r.coded(c, ("ActiveParticipant", n, "RoleIDCode")) for c in ap if c.tag == "RoleIDCode"]
        out.participants.append(
            Participant(
                user or "", get("AlternativeUserID", ""), get("UserName", ""), requestor, address, address_type, roles
            )
        )


def _source(sources: list[etree._Element], r: _Reader, out: ParsedAudit) -> None:
    if not sources or (len(sources) > 1 and out.form != RFC3881):
        r.findings.append(f"AuditMessage must have one AuditSourceIdentification, has {len(sources)}")
    if not sources:
        return
    src = sources[0]
    out.source_id = src.get("AuditSourceID", "")
    out.site_id = src.get("AuditEnterpriseSiteID", "")
    if not out.source_id:
        r.findings.append("AuditSourceIdentification: attribute AuditSourceID is required")
    for n, t in enumerate((c for c in src if c.tag == "AuditSourceTypeCode"), 1):
        code = t.get("csd-code") or t.get("code") or (t.text or "").strip()
        if code not in SOURCE_TYPES and not t.get("codeSystemName"):
            r.findings.append(
                f"AuditSourceIdentification/AuditSourceTypeCode[{n}]: {code!r} is not 1-9 and names no codeSystemName"
            )
        out.source_types.append(code)


def _objects(pos: list[etree._Element], r: _Reader, out: ParsedAudit) -> None:
    for n, po in enumerate(pos, 1):
        where = ("ParticipantObjectIdentification", n)
        oid = po.get("ParticipantObjectID")
        if not oid:
            r.findings.append(f"{_loc(where)}: attribute ParticipantObjectID is required")
        obj = ObjectRef(
            oid or "",
            r.enum(po, "ParticipantObjectTypeCode", OBJECT_TYPES, where),
            r.enum(po, "ParticipantObjectTypeCodeRole", OBJECT_ROLES, where),
            r.enum(po, "ParticipantObjectDataLifeCycle", LIFECYCLES, where),
            po.get("ParticipantObjectSensitivity", ""),
        )
        types = name = query = 0
        m = 0
        for child in po:
            tag = child.tag
            if tag == "ParticipantObjectIDTypeCode":
                types += 1
                if types == 1:
                    obj.id_type = r.coded(child, ("ParticipantObjectIdentification", n, "ParticipantObjectIDTypeCode"))
            elif tag == "ParticipantObjectName":
                name += 1
                obj.name = (child.text or "").strip()
            elif tag == "ParticipantObjectQuery":
                query += 1
                obj.query = (child.text or "").strip()
                if not _is_base64(obj.query):
                    r.findings.append(f"{_loc(where)}/ParticipantObjectQuery is not xsd:base64Binary")
            elif tag == "ParticipantObjectDetail":
                m += 1
                kind, value = child.get("type"), child.get("value")
                if kind is None or value is None:
                    r.findings.append(
                        f"{_loc(where)}/ParticipantObjectDetail[{m}]: attributes type and value are required"
                    )
                    continue
                if not _is_base64(value):
                    r.findings.append(
                        f"{_loc(where)}/ParticipantObjectDetail[{m}] ({kind}): value is not xsd:base64Binary"
                    )
                obj.details.append((kind, value))
        if types != 1:
            r.findings.append(f"{_loc(where)}: exactly one ParticipantObjectIDTypeCode is required, found {types}")
        if name and query:
            r.findings.append(f"{_loc(where)}: ParticipantObjectName and ParticipantObjectQuery are mutually exclusive")
        out.objects.append(obj)
