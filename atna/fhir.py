"""ITI-81 Retrieve ATNA Audit Event: the FHIR R4 AuditEvent view of stored records and the search
parameters, as pure functions.

``to_audit_event`` maps a DICOM (or RFC 3881) audit message to an R4 AuditEvent following the
DICOM-to-FHIR mapping of the FHIR AuditEvent resource (EventID -> type, EventTypeCode -> subtype,
ActiveParticipant -> agent, AuditSourceIdentification -> source, ParticipantObjectIdentification ->
entity). ``parse_search`` turns query parameters into a ``Search`` or raises ``SearchError`` (HTTP 400).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from atna.message import Coded, ParsedAudit
from atna.record import iso

DCM_URI = "http://dicom.nema.org/resources/ontology/DCM"
IHE_EVENT_TYPE_URI = "urn:ihe:event-type-code"
# codeSystemName as audit messages spell it <-> the FHIR system URI.
SYSTEMS = {"DCM": DCM_URI, "IHE Transactions": IHE_EVENT_TYPE_URI, "RFC-3881": "urn:ietf:rfc:3881"}
SYSTEMS_BACK = {v: k for k, v in SYSTEMS.items()}
OUTCOME_URI = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
ENTITY_TYPE_URI = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE_URI = "http://terminology.hl7.org/CodeSystem/object-role"
LIFECYCLE_URI = "http://terminology.hl7.org/CodeSystem/dicom-audit-lifecycle"
SOURCE_TYPE_URI = "http://terminology.hl7.org/CodeSystem/security-source-type"
NETWORK_TYPE_URI = "http://hl7.org/fhir/network-type"
EXT_BASE = "urn:isn-clearinghouse:fhir:StructureDefinition"
UNREADABLE_TYPE = {"system": "urn:isn-clearinghouse:audit", "code": "unreadable", "display": "Unreadable audit message"}

DEFAULT_COUNT, MAX_COUNT = 100, 1000
PARAMETERS = (
    "date",
    "entity-id",
    "patient.identifier",
    "source",
    "type",
    "subtype",
    "outcome",
    "address",
    "agent",
)
CONTROL = ("_count", "_offset", "_format")


class SearchError(ValueError):
    """A search the server cannot run as asked (answered 400 with an OperationOutcome)."""


def system_uri(name: str) -> str:
    if not name:
        return ""
    if name in SYSTEMS:
        return SYSTEMS[name]
    if re.fullmatch(r"[0-2](\.\d+)+", name):
        return f"urn:oid:{name}"
    return name


def system_name(uri: str) -> str:
    """A FHIR system back to the codeSystemName stored (urn:oid:X -> X; known URIs -> DCM, ...)."""
    if uri in SYSTEMS_BACK:
        return SYSTEMS_BACK[uri]
    return uri[8:] if uri.startswith("urn:oid:") else uri


def _coding(c: Coded) -> dict[str, str]:
    out = {"system": system_uri(c.system), "code": c.code, "display": c.display}
    return {k: v for k, v in out.items() if v}


def _b64(text: str) -> str:
    return "".join(text.split())


# --- the resource -------------------------------------------------------------------------------


def to_audit_event(row: dict[str, Any], parsed: ParsedAudit, base_url: str) -> dict[str, Any]:
    """The R4 AuditEvent of a stored record; the original message stays reachable by extension."""
    rid = str(row["id"])
    ev: dict[str, Any] = {"resourceType": "AuditEvent", "id": rid}
    ev["meta"] = {"lastUpdated": _instant(row["received_at"])}
    ev["type"] = _coding(parsed.event_id) if parsed.event_id and parsed.event_id.code else dict(UNREADABLE_TYPE)
    if parsed.event_types:
        ev["subtype"] = [_coding(t) for t in parsed.event_types]
    if parsed.action:
        ev["action"] = parsed.action
    ev["recorded"] = _instant(row["event_time"])
    if parsed.outcome is not None:
        ev["outcome"] = str(parsed.outcome)
    if parsed.outcome_description:
        ev["outcomeDesc"] = parsed.outcome_description
    if parsed.purposes:
        ev["purposeOfEvent"] = [{"coding": [_coding(p)]} for p in parsed.purposes]
    agents = [_agent(a) for a in parsed.participants]
    if not agents:  # AuditEvent.agent is 1..*: the sender as the repository saw it
        who = row["peer_subject"] or row["peer_address"] or row["syslog_hostname"] or "unknown"
        agents = [{"who": {"display": who}, "requestor": False}]
    ev["agent"] = agents
    source_id = parsed.source_id or row["syslog_hostname"] or row["peer_address"] or "unknown"
    source: dict[str, Any] = {"observer": {"identifier": {"value": source_id}, "display": source_id}}
    if parsed.site_id:
        source["site"] = parsed.site_id
    if parsed.source_types:
        source["type"] = [{"system": SOURCE_TYPE_URI, "code": t} for t in parsed.source_types if t]
    ev["source"] = source
    entities = [_entity(o) for o in parsed.objects]
    if entities:
        ev["entity"] = entities
    ev["extension"] = _extensions(row, base_url)
    return ev


def _instant(text: str) -> str:
    # Stored as fixed-width microseconds; FHIR instants take milliseconds.
    return text[:23] + "Z" if text and len(text) > 23 else text


def _agent(a: Any) -> dict[str, Any]:
    agent: dict[str, Any] = {}
    if a.roles:
        agent["type"] = {"coding": [_coding(a.roles[0])]}
        if len(a.roles) > 1:
            agent["role"] = [{"coding": [_coding(r)]} for r in a.roles[1:]]
    agent["who"] = {"identifier": {"value": a.user_id}}
    if a.alt_user_id:
        agent["altId"] = a.alt_user_id
    if a.user_name:
        agent["name"] = a.user_name
    agent["requestor"] = bool(a.requestor)
    if a.address:
        network = {"address": a.address}
        if a.address_type:
            network["type"] = a.address_type
        agent["network"] = network
    return agent


def _entity(o: Any) -> dict[str, Any]:
    what: dict[str, Any] = {"identifier": {"value": o.object_id}}
    if o.id_type is not None and o.id_type.code:
        what["identifier"]["type"] = {"coding": [_coding(o.id_type)]}
    entity: dict[str, Any] = {"what": what}
    if o.type_code:
        entity["type"] = {"system": ENTITY_TYPE_URI, "code": o.type_code}
    if o.role:
        entity["role"] = {"system": OBJECT_ROLE_URI, "code": o.role}
    if o.lifecycle:
        entity["lifecycle"] = {"system": LIFECYCLE_URI, "code": o.lifecycle}
    if o.name:
        entity["name"] = o.name
    if o.query:
        entity["query"] = _b64(o.query)
    if o.details:
        entity["detail"] = [{"type": t, "valueBase64Binary": _b64(v)} for t, v in o.details]
    return entity


def _extensions(row: dict[str, Any], base_url: str) -> list[dict[str, Any]]:
    ext: list[dict[str, Any]] = [
        {
            "url": f"{EXT_BASE}/original-message",
            "valueAttachment": {"contentType": "application/xml", "url": f"{base_url}/{row['id']}/original"},
        },
        {"url": f"{EXT_BASE}/received", "valueInstant": _instant(row["received_at"])},
        {"url": f"{EXT_BASE}/transport", "valueCode": row["transport"]},
        {"url": f"{EXT_BASE}/valid", "valueBoolean": bool(row["valid"])},
        {"url": f"{EXT_BASE}/chain-hash", "valueString": row["hash"]},
    ]
    if row["findings"]:
        ext.extend({"url": f"{EXT_BASE}/finding", "valueString": f} for f in row["findings"].split("\n"))
    if row["peer_subject"]:
        ext.append({"url": f"{EXT_BASE}/sender-certificate-subject", "valueString": row["peer_subject"]})
    if row["peer_address"]:
        ext.append({"url": f"{EXT_BASE}/sender-address", "valueString": row["peer_address"]})
    return ext


def original_xml(row: dict[str, Any]) -> bytes:
    """The MSG part as received (the audit message itself), without the syslog header or a BOM."""
    raw: bytes = row["raw"]
    return raw[row["msg_offset"] :]


# --- search parameters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    system: str | None  # None: any system; "": no system
    code: str


@dataclass(frozen=True)
class DateBound:
    op: str  # lt le gt ge (normalised)
    value: str  # iso text


@dataclass
class Search:
    dates: list[list[DateBound]] = field(default_factory=list)  # AND of (OR-free) bound groups
    tokens: dict[str, list[list[Token]]] = field(default_factory=dict)  # name -> AND of OR-lists
    count: int = DEFAULT_COUNT
    offset: int = 0
    ignored: list[str] = field(default_factory=list)

    def echo(self) -> list[tuple[str, str]]:
        """The parameters as understood, for the self and next links."""
        out: list[tuple[str, str]] = []
        for group in self.dates:
            out.extend(("date", f"{b.op}{b.value}") for b in group)
        for name in PARAMETERS:
            for alternatives in self.tokens.get(name, []):
                out.append((name, ",".join(_token_text(t) for t in alternatives)))
        return out


def _escape(text: str) -> str:
    return re.sub(r"([,|$\\])", r"\\\1", text)


def _token_text(t: Token) -> str:
    if t.system is None:
        return _escape(t.code)
    return f"{_escape(t.system)}|{_escape(t.code)}"


_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?\Z"
)
_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")


def date_range(text: str) -> tuple[datetime, datetime]:
    """The instant range [start, end) a FHIR date value stands for, at its precision."""
    m = _DATE.match(text)
    if not m:
        raise SearchError(f"date value {text!r} is not a FHIR date or dateTime")
    g = m.groupdict()
    try:
        y = int(g["y"])
        if g["m"] is None:
            start = datetime(y, 1, 1, tzinfo=UTC)
            return start, datetime(y + 1, 1, 1, tzinfo=UTC)
        mo = int(g["m"])
        if g["d"] is None:
            start = datetime(y, mo, 1, tzinfo=UTC)
            return start, datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=UTC)
        d = int(g["d"])
        if g["H"] is None:
            start = datetime(y, mo, d, tzinfo=UTC)
            return start, start + timedelta(days=1)
        tz = UTC
        if g["tz"] and g["tz"] != "Z":
            off = timedelta(hours=int(g["tz"][1:3]), minutes=int(g["tz"][4:6]))
            tz = timezone(off if g["tz"][0] == "+" else -off)
        if g["S"] is None:
            start = datetime(y, mo, d, int(g["H"]), int(g["M"]), tzinfo=tz)
            return start.astimezone(UTC), (start + timedelta(minutes=1)).astimezone(UTC)
        frac = g["f"] or ""
        micro = int(frac[1:7].ljust(6, "0")) if frac else 0
        start = datetime(y, mo, d, int(g["H"]), int(g["M"]), int(g["S"]), micro, tzinfo=tz)
        step = timedelta(microseconds=10 ** (6 - min(len(frac) - 1, 6))) if frac else timedelta(seconds=1)
        return start.astimezone(UTC), (start + step).astimezone(UTC)
    except ValueError as exc:
        raise SearchError(f"date value {text!r} is not a valid date: {exc}") from exc


def date_bounds(value: str) -> list[DateBound]:
    """One ``date`` parameter value as bounds on the stored instant (all must hold)."""
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    text = value[2:] if value[:2] in _PREFIXES else value
    start, end = date_range(text)
    s, e = iso(start) or "", iso(end) or ""
    if prefix in ("eq", "ap"):
        return [DateBound("ge", s), DateBound("lt", e)]
    if prefix == "ne":
        return [DateBound("ne", f"{s}|{e}")]
    if prefix in ("lt", "eb"):
        return [DateBound("lt", s)]
    if prefix == "le":
        return [DateBound("lt", e)]
    if prefix in ("gt", "sa"):
        return [DateBound("ge", e)]
    return [DateBound("ge", s)]  # ge


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not escaped with a backslash (FHIR escapes ``\\,`` ``\\|`` ``\\$``
    ``\\\\``); the parts keep their escapes (``_unescape`` resolves them)."""
    parts, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\([,|$\\])", r"\1", text)


def parse_token(text: str) -> Token:
    pieces = split_escaped(text, "|")
    if len(pieces) >= 2:
        return Token(_unescape(pieces[0]), _unescape("|".join(pieces[1:])))
    return Token(None, _unescape(text))


def parse_search(params: list[tuple[str, str]], *, strict: bool = False) -> Search:
    """Parameters of GET /fhir/AuditEvent (repeated names AND, comma-separated values OR)."""
    s = Search()
    for raw_name, value in params:
        name = raw_name.split(":", 1)[0]
        modifier = raw_name.split(":", 1)[1] if ":" in raw_name else ""
        if name in ("_count", "_offset"):
            if not value.isdigit():
                raise SearchError(f"{name}={value!r}: a non-negative integer is required")
            if name == "_count":
                s.count = max(1, min(int(value), MAX_COUNT))
            else:
                s.offset = int(value)
            continue
        if name == "_format":
            if value not in ("json", "application/fhir+json", "application/json"):
                raise SearchError(f"_format={value!r}: this server answers JSON only")
            continue
        if name not in PARAMETERS:
            if strict:
                raise SearchError(f"unknown search parameter {raw_name!r}; supported: {', '.join(PARAMETERS)}")
            s.ignored.append(raw_name)
            continue
        if modifier:
            raise SearchError(f"modifier :{modifier} is not supported on {name}")
        if value == "":
            raise SearchError(f"search parameter {name} has an empty value")
        if name == "date":
            if "," in value:
                raise SearchError("date: several values in one parameter are not supported; repeat the parameter")
            s.dates.append(date_bounds(value))
            continue
        alternatives = [parse_token(v) for v in split_escaped(value, ",")]
        if name == "outcome":
            for t in alternatives:
                if t.code not in ("0", "4", "8", "12") or t.system not in (None, OUTCOME_URI):
                    raise SearchError(f"outcome={value!r}: codes are 0, 4, 8, 12 ({OUTCOME_URI})")
        s.tokens.setdefault(name, []).append(alternatives)
    return s


# --- bundles --------------------------------------------------------------------------------------


def bundle(
    base_url: str, search: Search, total: int, resources: list[dict[str, Any]], warnings: list[str]
) -> dict[str, Any]:
    from urllib.parse import urlencode

    def link(offset: int) -> str:
        query = [*search.echo(), ("_count", str(search.count)), ("_offset", str(offset))]
        return f"{base_url}?{urlencode(query)}"

    links = [{"relation": "self", "url": link(search.offset)}]
    if search.offset + len(resources) < total:
        links.append({"relation": "next", "url": link(search.offset + search.count)})
    if search.offset > 0:
        links.append({"relation": "previous", "url": link(max(0, search.offset - search.count))})
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base_url}/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in resources
    ]
    if warnings:
        entries.append({"resource": operation_outcome(warnings, "warning"), "search": {"mode": "outcome"}})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": iso(datetime.now(UTC))[:23] + "Z",  # type: ignore[index]
        "total": total,
        "link": links,
        "entry": entries,
    }


def operation_outcome(messages: list[str], severity: str = "error", code: str = "processing") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": m} for m in messages],
    }


def decode_query(text: str) -> bytes:
    return base64.b64decode(_b64(text))
