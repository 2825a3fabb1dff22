"""The PIX Manager's group-commit writer on a real database (SQLite and PostgreSQL): concurrent lock-step
callers each get the answer for their own item only after it is committed, share transactions, and a
lone caller is not kept waiting for company."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest
from conftest import PG_URL
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, String, Table, insert, select, text

from clearinghouse import db
from pix_manager.writer import GroupCommitWriter

SENDERS, ITEMS = 8, 40


@pytest.fixture
def engine(backend: str, tmp_path) -> Iterator[Engine]:
    if backend == "postgresql":
        schema = f"w_{uuid.uuid4().hex[:12]}"
        admin = db.make_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        eng = db.make_engine(PG_URL, schema=schema)
        yield eng
        eng.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    else:
        eng = db.make_engine(f"sqlite:///{tmp_path / 'writer.db'}")
        yield eng
        eng.dispose()


def _table(engine: Engine) -> Table:
    meta = MetaData()
    table = Table("item", meta, Column("id", Integer, primary_key=True), Column("value", String(64), nullable=False))
    meta.create_all(engine)
    return table


def test_lock_step_senders_share_commits_and_each_gets_its_own_answer(engine):
    table = _table(engine)
    batches: list[int] = []

    def handler(conn: Connection, items: Sequence[str]) -> list[tuple[object, BaseException | None]]:
        batches.append(len(items))
        conn.execute(insert(table), [{"value": v} for v in items])
        # The answer is read back inside the transaction: it exists only if the row was written.
        found = dict(conn.execute(select(table.c.value, table.c.id).where(table.c.value.in_(items))).all())
        return [(found[v], None) for v in items]

    writer = GroupCommitWriter(engine, handler)
    writer.start()
    answers: dict[str, object] = {}
    failures: list[BaseException] = []

    def sender(n: int) -> None:
        try:
            for i in range(ITEMS):
                value = f"s{n}-{i}"
                answers[value] = writer.run(value)  # lock-step: the next item only after this answer
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    writer.stop()
    assert not failures
    with engine.connect() as conn:
        stored = dict(conn.execute(select(table.c.value, table.c.id)).all())
    assert len(stored) == SENDERS * ITEMS and answers == stored  # each caller got its own committed row
    assert sum(batches) == SENDERS * ITEMS
    # Eight lock-step senders must not cost a commit each: they gather (typically 5-8 to a transaction).
    assert len(batches) < SENDERS * ITEMS / 2, batches


def test_a_lone_sender_is_not_kept_waiting(engine):
    table = _table(engine)
    waited: list[float] = []

    def handler(conn: Connection, items: Sequence[str]) -> list[tuple[object, BaseException | None]]:
        conn.execute(insert(table), [{"value": v} for v in items])
        return [(v, None) for v in items]

    writer = GroupCommitWriter(engine, handler)
    writer.linger_seconds = 2.0  # were a lone sender ever made to wait for company, this would show
    writer.start()
    try:
        for i in range(5):
            started = time.monotonic()
            assert writer.run(f"alone-{i}") == f"alone-{i}"
            waited.append(time.monotonic() - started)
    finally:
        writer.stop()
    assert max(waited) < 1.0, waited
