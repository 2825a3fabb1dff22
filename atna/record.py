"""What one received audit record is, from the bytes on the wire to the stored row.

``Received`` is what a receiver knows when a message arrives (when, how, from whom, the bytes);
it is what the spool keeps. ``derive`` turns it into the stored row and its search index entries
(pure: the same input gives the same row), and ``link_hash`` chains a row to the one before it.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from atna import syslog
from atna.message import ParsedAudit, parse_audit

TRANSPORTS = ("tls", "udp", "local")
GENESIS_HASH = "0" * 64
_FIXED = struct.Struct(">qBIHHH")  # received_us, transport, declared_length, len(address), len(subject), len(note)

# Column widths (also in the migration); longer peer-supplied values are cut to fit.
W_SUBJECT, W_ADDRESS, W_CODE, W_SYSTEM, W_SOURCE, W_VALUE = 1024, 128, 64, 128, 256, 512


@dataclass(frozen=True)
class Received:
    received_at: datetime
    transport: str
    peer_address: str
    peer_subject: str
    data: bytes  # the syslog message (possibly cut to the size limit)
    declared_length: int  # as framed; larger than len(data) when the message was cut or cut short
    note: str = ""  # what the receiver found wrong with the framing

    def encode(self) -> bytes:
        addr, subj, note = self.peer_address.encode(), self.peer_subject.encode(), self.note.encode()
        us = int(self.received_at.timestamp() * 1_000_000)
        head = _FIXED.pack(
            us, TRANSPORTS.index(self.transport), min(self.declared_length, 0xFFFFFFFF), len(addr), len(subj), len(note)
        )
        return b"".join((head, addr, subj, note, self.data))

    @classmethod
    def decode(cls, payload: bytes) -> Received:
        us, transport, declared, la, ls, ln = _FIXED.unpack_from(payload)
        pos = _FIXED.size
        addr = payload[pos : pos + la].decode()
        pos += la
        subj = payload[pos : pos + ls].decode()
        pos += ls
        note = payload[pos : pos + ln].decode()
        pos += ln
        when = datetime.fromtimestamp(us / 1_000_000, UTC)
        return cls(when, TRANSPORTS[transport], addr, subj, payload[pos:], declared, note)


def iso(when: datetime | None) -> str | None:
    """Fixed-width UTC text: sorts as time does, on every database."""
    if when is None:
        return None
    if when.tzinfo is UTC:  # the usual case (receipt times, parsed event times), without two conversions
        return when.isoformat(timespec="microseconds")[:-6] + "Z"
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _cut(value: str, width: int) -> str:
    # NUL is the one character some databases (PostgreSQL) cannot store in text; peers may send it.
    if len(value) <= width and "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")[:width]


@dataclass
class Derived:
    row: dict[str, Any]  # the audit_record columns except id, prev_hash, hash
    index: list[tuple[str, str, str]]  # (kind, system, value)


ROW_KEYS = (
    "received_at",
    "transport",
    "peer_address",
    "peer_subject",
    "declared_length",
    "syslog_pri",
    "syslog_timestamp",
    "syslog_hostname",
    "syslog_app_name",
    "syslog_procid",
    "syslog_msgid",
    "msg_offset",
    "form",
    "valid",
    "findings",
    "event_id",
    "event_id_system",
    "event_action",
    "event_outcome",
    "event_time",
    "audit_source_id",
    "audit_site_id",
    "raw_sha256",
)


@dataclass(slots=True)
class Prepared:
    """A derived record as the writer wants it: the column values in ROW_KEYS order, the raw bytes, the
    index entries, and ``tail``, the JSON of the values, so that the writer (one thread: the serial part)
    only hashes: ``canonical(row) == b"[" + id + b"," + tail[1:]`` (see ``chained_hash``)."""

    values: tuple[Any, ...]
    raw: bytes
    index: list[tuple[str, str, str]]
    tail: bytes

    def derived(self) -> Derived:
        row = dict(zip(ROW_KEYS, self.values, strict=True))
        row["raw"] = self.raw
        return Derived(row, self.index)


def prepare(d: Derived) -> Prepared:
    values = tuple(d.row[k] for k in ROW_KEYS)
    return Prepared(values, d.row["raw"], d.index, _json(values))


def _json(values: tuple[Any, ...]) -> bytes:
    return json.dumps(values, separators=(",", ":"), ensure_ascii=True).encode()


def chained_hash(previous: str, record_id: int, tail: bytes) -> str:
    """``link_hash`` of the row whose ROW_KEYS values have the JSON ``tail``, given its id."""
    return hashlib.sha256(b"%s\n[%d,%s" % (previous.encode(), record_id, tail[1:])).hexdigest()


def data_offset(payload: bytes) -> int:
    """Where the message bytes start in a spool payload (``Received.encode``)."""
    _, _, _, la, ls, ln = _FIXED.unpack_from(payload)
    return _FIXED.size + la + ls + ln


def derive_payloads(payloads: list[bytes], max_xml_depth: int) -> bytes:
    """``prepare(derive(...))`` for a batch of spool payloads, for a parse worker process, without the raw
    bytes (the caller has them), marshalled (several times cheaper than pickling many small tuples; both
    ends are the same interpreter)."""
    out = []
    for payload in payloads:
        rec = Received.decode(payload)
        try:
            d = derive(rec, max_xml_depth=max_xml_depth)
        except Exception as exc:  # noqa: BLE001 - a parser bug must not lose the record: keep the bytes
            d = unread(rec, f"the repository could not read this record: {exc}")
        row = d.row
        values = tuple([row[k] for k in ROW_KEYS])
        out.append((values, d.index, _json(values)))
    return marshal.dumps(out)


def rebuilt(data: bytes, payloads: list[bytes]) -> list[Prepared]:
    """The Prepareds of ``derive_payloads(payloads)``, with each record's raw bytes put back."""
    return [
        Prepared(values, p[data_offset(p) :], index, tail)
        for p, (values, index, tail) in zip(payloads, marshal.loads(data), strict=True)
    ]


def derive(rec: Received, *, max_xml_depth: int = 32) -> Derived:
    header = syslog.parse_header(rec.data)
    findings: list[str] = []
    if rec.note:
        findings.append(rec.note)
    if rec.declared_length > len(rec.data):
        findings.append(f"message incomplete: {len(rec.data)} of {rec.declared_length} declared bytes kept")
    findings += header.findings
    if header.msgid and header.msgid != "IHE+RFC-3881" and not header.findings:
        findings.append(f"syslog MSGID is {header.msgid!r}; ITI-20 audit messages use IHE+RFC-3881")
    parsed = parse_audit(rec.data[header.msg_offset :], max_depth=max_xml_depth)
    findings += parsed.findings
    ev = parsed.event_id
    row = {
        "received_at": iso(rec.received_at),
        "transport": rec.transport,
        "peer_address": _cut(rec.peer_address, W_ADDRESS),
        "peer_subject": _cut(rec.peer_subject, W_SUBJECT),
        "declared_length": rec.declared_length,
        "syslog_pri": header.priority,
        "syslog_timestamp": _cut(header.timestamp, 64),
        "syslog_hostname": _cut(header.hostname, syslog.MAX_HOSTNAME),
        "syslog_app_name": _cut(header.app_name, syslog.MAX_APP_NAME),
        "syslog_procid": _cut(header.procid, syslog.MAX_PROCID),
        "syslog_msgid": _cut(header.msgid, syslog.MAX_MSGID),
        "msg_offset": header.msg_offset,
        "form": parsed.form,
        "valid": not findings,
        "findings": _cut("\n".join(findings), 1 << 20),
        "event_id": _cut(ev.code, W_CODE) if ev else "",
        "event_id_system": _cut(ev.system, W_SYSTEM) if ev else "",
        "event_action": parsed.action[:1],
        "event_outcome": parsed.outcome,
        "event_time": iso(parsed.event_time or rec.received_at),
        "audit_source_id": _cut(parsed.source_id, W_SOURCE),
        "audit_site_id": _cut(parsed.site_id, W_SOURCE),
        "raw": rec.data,
        "raw_sha256": hashlib.sha256(rec.data).hexdigest(),
    }
    return Derived(row, index_entries(parsed))


def unread(rec: Received, reason: str) -> Derived:
    """The record kept as raw bytes with its receipt facts, flagged with ``reason``."""
    d = derive(Received(rec.received_at, rec.transport, rec.peer_address, rec.peer_subject, b"", 0))
    d.row.update(
        {
            "declared_length": rec.declared_length,
            "raw": rec.data,
            "raw_sha256": hashlib.sha256(rec.data).hexdigest(),
            "valid": False,
            "findings": _cut(reason, 1 << 20),
            "form": "unknown",
        }
    )
    return Derived(d.row, [])


def index_entries(p: ParsedAudit) -> list[tuple[str, str, str]]:
    """The multi-valued search keys of a message: event types, entities, patients, agents, addresses."""
    keys = [("subtype", t.system, t.code) for t in p.event_types]
    for o in p.objects:
        keys.append(("entity", o.id_type.code if o.id_type else "", o.object_id))
        if o.type_code == "1" and o.role == "1":
            keys.append(("patient", "", o.object_id))
            value, oid = split_cx(o.object_id)
            if oid:
                keys.append(("patient", f"urn:oid:{oid}", value))
    for a in p.participants:
        keys += (("agent", "", a.user_id), ("agent", "", a.user_name), ("address", "", a.address))
    seen: dict[tuple[str, str, str], None] = {}
    for kind, system, value in keys:
        if value:
            if len(value) > W_VALUE or len(system) > W_SYSTEM or "\x00" in value:
                system, value = _cut(system, W_SYSTEM), _cut(value, W_VALUE)
            seen[(kind, system, value)] = None
    return list(seen)


def split_cx(cx: str) -> tuple[str, str]:
    """(ID, assigning authority OID) of ID^^^&OID&ISO; ("", "") if it is not one."""
    parts = cx.split("^")
    if len(parts) >= 4:
        hd = parts[3].split("&")
        if len(hd) >= 2 and hd[1]:
            return parts[0], hd[1]
    return "", ""


# The chained columns, in order. Every stored fact of a record is here, so changing any of them
# (or deleting or reordering records) breaks the chain from that record on.
CHAINED = ("id", *ROW_KEYS)


def canonical(row: dict[str, Any]) -> bytes:
    return json.dumps([row[c] for c in CHAINED], separators=(",", ":"), ensure_ascii=True).encode()


def link_hash(previous: str, row: dict[str, Any]) -> str:
    """SHA-256 over the previous record's hash and this record's canonical bytes."""
    return hashlib.sha256(previous.encode() + b"\n" + canonical(row)).hexdigest()
