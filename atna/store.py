"""Durable storage of audit records: batched, hash-chained appends, chain verification, reads.

Every append locks the chain head row first (an UPDATE, which PostgreSQL turns into a row lock and
SQLite into the database write lock), so writers in different processes chain one after another.
One append is one transaction: the rows, their index entries, the new head and the spool
checkpoint commit together or not at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update

from atna.models import AuditChain, AuditIndex, AuditRecord, AuditSpoolCheckpoint
from atna.record import CHAINED, GENESIS_HASH, ROW_KEYS, Derived, Prepared, chained_hash, link_hash, prepare

RECORD = AuditRecord.__table__
INDEX = AuditIndex.__table__
CHAIN = AuditChain.__table__
CHECKPOINT = AuditSpoolCheckpoint.__table__


def append(
    conn: Connection, derived: Sequence[Derived | Prepared], checkpoint: tuple[str, int, int] | None = None
) -> tuple[int, int]:
    """Chain and insert ``derived`` in order inside the caller's transaction; returns (first id, last id)."""
    # Lock the head before reading it: the UPDATE is what serialises writers.
    conn.execute(update(CHAIN).where(CHAIN.c.id == 1).values(last_id=CHAIN.c.last_id))
    last_id, last_hash = conn.execute(select(CHAIN.c.last_id, CHAIN.c.last_hash).where(CHAIN.c.id == 1)).one()
    rows: list[tuple[Any, ...]] = []
    index: list[tuple[Any, ...]] = []
    next_id, prev = last_id, last_hash
    for d in derived:
        p = d if isinstance(d, Prepared) else prepare(d)
        next_id += 1
        values = p.values
        digest = chained_hash(prev, next_id, p.tail)
        # RECORD_COLUMNS order (checked below): id, the values but the last, raw, raw_sha256, prev, hash.
        rows.append((next_id, *values[:-1], p.raw, values[-1], prev, digest))
        prev = digest
        index.extend([(next_id, k, s, v) for k, s, v in p.index])
    if rows:
        _insert_many(conn, RECORD, RECORD_COLUMNS, rows)
        if index:
            _insert_many(conn, INDEX, INDEX_COLUMNS, index)
        conn.execute(update(CHAIN).where(CHAIN.c.id == 1).values(last_id=next_id, last_hash=prev))
    if checkpoint is not None:
        spool_id, segment, offset = checkpoint
        done = conn.execute(
            update(CHECKPOINT).where(CHECKPOINT.c.spool_id == spool_id).values(segment=segment, offset=offset)
        )
        if done.rowcount == 0:
            conn.execute(insert(CHECKPOINT).values(spool_id=spool_id, segment=segment, offset=offset))
    return last_id + 1, next_id


RECORD_COLUMNS = tuple(RECORD.c.keys())
if RECORD_COLUMNS != ("id", *ROW_KEYS[:-1], "raw", ROW_KEYS[-1], "prev_hash", "hash"):
    raise RuntimeError("atna.store.append builds audit_record rows positionally; ROW_KEYS no longer match the table")
INDEX_COLUMNS = ("record_id", "kind", "system", "value")


def _insert_many(conn: Connection, table: Any, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    # At audit rates the per-row cost of an insert matters: PostgreSQL gets COPY (psycopg writes the rows
    # in C), other databases the driver's executemany with plain tuples (SQLAlchemy's per-row parameter
    # processing would be most of the cost, and these columns need no conversion).
    if conn.dialect.name == "postgresql":
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
    conn.exec_driver_sql(sql, rows)


def store(engine: Engine, derived: Sequence[Derived]) -> tuple[int, int]:
    """Append in a transaction of its own (for callers outside the server, such as the CLI)."""
    with engine.begin() as conn:
        return append(conn, derived)


def checkpoint_of(engine: Engine, spool_id: str) -> tuple[int, int] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(CHECKPOINT.c.segment, CHECKPOINT.c.offset).where(CHECKPOINT.c.spool_id == spool_id)
        ).first()
    return (row[0], row[1]) if row else None


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(CHAIN.c.last_id).where(CHAIN.c.id == 1)).scalar_one()


@dataclass
class ChainReport:
    checked: int
    broken_at: int | None = None
    reason: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def verify(engine: Engine, *, batch: int = 2000) -> ChainReport:
    """Walk the chain from the first record; report the first record whose link does not hold."""
    prev, expected_id, checked = GENESIS_HASH, 1, 0
    cols = [RECORD.c[c] for c in CHAINED] + [RECORD.c.raw, RECORD.c.prev_hash, RECORD.c.hash]
    with engine.connect() as conn:
        head_id, head_hash = conn.execute(select(CHAIN.c.last_id, CHAIN.c.last_hash).where(CHAIN.c.id == 1)).one()
        last = 0
        while True:
            # Only up to the head read above: servers (several processes) may append while this walks.
            rows = conn.execute(
                select(*cols).where(RECORD.c.id > last, RECORD.c.id <= head_id).order_by(RECORD.c.id).limit(batch)
            ).all()
            if not rows:
                break
            for r in rows:
                row = r._asdict()
                rid = row["id"]
                if rid != expected_id:
                    return ChainReport(checked, expected_id, f"record {expected_id} is missing (next is {rid})")
                if hashlib.sha256(row["raw"]).hexdigest() != row["raw_sha256"]:
                    return ChainReport(checked, rid, "the stored message bytes do not match their recorded SHA-256")
                if row["prev_hash"] != prev:
                    return ChainReport(checked, rid, "prev_hash does not match the hash of the record before it")
                if link_hash(prev, row) != row["hash"]:
                    return ChainReport(checked, rid, "the record's content does not match its hash")
                prev = row["hash"]
                expected_id += 1
                checked += 1
            last = rows[-1].id
        # Records beyond that head are fine if a later head covers them (appended meanwhile: rows and head
        # commit together); rows the current head does not cover were never chained.
        beyond = conn.execute(select(func.max(RECORD.c.id))).scalar() or 0
        if beyond > head_id:
            now_id = conn.execute(select(CHAIN.c.last_id).where(CHAIN.c.id == 1)).scalar_one()
            if beyond > now_id:
                return ChainReport(checked, now_id + 1, f"records up to {beyond} are stored beyond the chain head")
    if checked != head_id:
        return ChainReport(checked, checked + 1, f"the chain head says {head_id} records, {checked} are stored")
    if prev != head_hash:
        return ChainReport(checked, checked, "the chain head's hash does not match the last record")
    return ChainReport(checked)


def records_by_id(conn: Connection, ids: Sequence[int]) -> Iterator[Any]:
    if not ids:
        return iter(())
    stmt = select(RECORD).where(RECORD.c.id.in_(bindparam("ids", expanding=True))).order_by(RECORD.c.id)
    return iter(conn.execute(stmt, {"ids": list(ids)}).all())
