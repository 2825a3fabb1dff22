"""Running an ITI-81 search against the stored records (used by the FHIR endpoint and the CLI)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection, and_, func, not_, or_, select
from sqlalchemy.sql.elements import ColumnElement

from atna.fhir import Search, Token, system_name
from atna.message import ParsedAudit, parse_audit
from atna.models import AuditIndex, AuditRecord

RECORD = AuditRecord.__table__
INDEX = AuditIndex.__table__

# Token parameters answered from the multi-valued index, by index kind.
INDEXED = {
    "subtype": "subtype",
    "entity-id": "entity",
    "patient.identifier": "patient",
    "address": "address",
    "agent": "agent",
}


def _index_match(kind: str, alternatives: list[Token]) -> ColumnElement[bool]:
    ors = []
    for t in alternatives:
        conds = [INDEX.c.kind == kind, INDEX.c.value == t.code]
        if t.system is not None and kind in ("subtype", "entity", "patient"):
            stored = system_name(t.system) if kind == "subtype" else t.system
            conds.append(INDEX.c.system == stored)
        ors.append(and_(*conds))
    return RECORD.c.id.in_(select(INDEX.c.record_id).where(or_(*ors)))


def _column_match(name: str, alternatives: list[Token]) -> ColumnElement[bool]:
    ors: list[ColumnElement[bool]] = []
    for t in alternatives:
        if name == "type":
            conds = [RECORD.c.event_id == t.code]
            if t.system is not None:
                conds.append(RECORD.c.event_id_system == system_name(t.system))
            ors.append(and_(*conds))
        elif name == "outcome":
            ors.append(RECORD.c.event_outcome == int(t.code))
        elif name == "source":
            # The observer's identifier; a Device/ reference is taken by its id.
            value = t.code[7:] if t.system is None and t.code.startswith("Device/") else t.code
            ors.append(RECORD.c.audit_source_id == value)
    return or_(*ors)


def conditions(search: Search) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    when = RECORD.c.event_time
    for group in search.dates:
        for b in group:
            if b.op == "ge":
                where.append(when >= b.value)
            elif b.op == "lt":
                where.append(when < b.value)
            elif b.op == "ne":
                start, end = b.value.split("|")
                where.append(not_(and_(when >= start, when < end)))
    for name, groups in search.tokens.items():
        for alternatives in groups:
            if name in INDEXED:
                where.append(_index_match(INDEXED[name], alternatives))
            else:
                where.append(_column_match(name, alternatives))
    return where


def run(conn: Connection, search: Search) -> tuple[int, list[dict[str, Any]]]:
    """(total matches, the page's rows in stored order)."""
    where = conditions(search)
    total = conn.execute(select(func.count()).select_from(RECORD).where(*where)).scalar_one()
    ids = select(RECORD.c.id).where(*where).order_by(RECORD.c.id).limit(search.count).offset(search.offset).subquery()
    rows = conn.execute(select(RECORD).where(RECORD.c.id.in_(select(ids.c.id))).order_by(RECORD.c.id)).all()
    return total, [r._asdict() for r in rows]


def iterate(conn: Connection, search: Search, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every match in stored order, fetched in batches (for exports)."""
    where = conditions(search)
    last = 0
    while True:
        rows = conn.execute(select(RECORD).where(*where, RECORD.c.id > last).order_by(RECORD.c.id).limit(batch)).all()
        if not rows:
            return
        for r in rows:
            yield r._asdict()
        last = rows[-1].id


def get(conn: Connection, record_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(RECORD).where(RECORD.c.id == record_id)).first()
    return row._asdict() if row else None


def parsed_of(row: dict[str, Any]) -> ParsedAudit:
    return parse_audit(row["raw"][row["msg_offset"] :])


def hourly_counts(conn: Connection, since: str) -> list[tuple[str, str, int | None, int]]:
    """(hour as ``YYYY-MM-DDTHH``, kind, outcome, records) for the records whose event time is at or
    after ``since`` (fixed-width UTC text, as stored). The kind is each EventTypeCode of a record (a
    transaction such as ITI-41, or a security alert type such as 110126), its EventID when it has none."""
    recent = select(RECORD.c.id).where(RECORD.c.event_time >= since)
    subtypes = select(INDEX.c.record_id, INDEX.c.value).where(INDEX.c.kind == "subtype", INDEX.c.record_id.in_(recent))
    sub = subtypes.subquery()
    hour = func.substr(RECORD.c.event_time, 1, 13)
    kind = func.coalesce(sub.c.value, RECORD.c.event_id)
    stmt = (
        select(hour, kind, RECORD.c.event_outcome, func.count())
        .select_from(RECORD.outerjoin(sub, sub.c.record_id == RECORD.c.id))
        .where(RECORD.c.event_time >= since)
        .group_by(hour, kind, RECORD.c.event_outcome)
    )
    return [(h, k, o, n) for h, k, o, n in conn.execute(stmt)]
