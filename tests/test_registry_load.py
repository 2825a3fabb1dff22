"""The registry driven into overload and exhaustion on a live server, over HTTPS (ITI TF-3 4.2.4.1):

- more transactions than ``registry_max_concurrent`` at once: XDSRegistryBusy;
- a write that waits longer than ``registry_lock_timeout_ms`` for a lock (PostgreSQL): XDSRegistryBusy;
- a database that cannot grow (SQLite at its page limit: "database or disk is full"):
  XDSRegistryOutOfResources;
- a database that accepts no writes at all (read-only): XDSRegistryError.

Each time the source gets a RegistryResponse with that error, the refusal is audited (ITI-42 import
event, outcome 8, the error code in its description) and nothing of the submission is stored.
The conditions are real: another connection holds the lock, the database itself refuses to grow or
to write; the registry's own code is not altered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import edge
import pytest
import xds_samples as xs
from atna_client import events_for
from conftest import Running, running_instance
from sqlalchemy import Engine, event, func, select, text

from registry.models import RegistryObjectRow

ITI42 = "urn:ihe:iti:2007:RegisterDocumentSet-b"
BUSY_WAIT_MS = 300
LOCK_TIMEOUT_MS = 3000  # long enough for the busy test to free the lock first on a loaded machine


@pytest.fixture(scope="module")
def live(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One registry transaction at a time, a short wait for a slot and for PostgreSQL locks."""
    with running_instance(
        tmp_path_factory.mktemp(f"load-{backend}"),
        backend,
        registry_max_concurrent=1,
        registry_busy_wait_ms=BUSY_WAIT_MS,
        registry_lock_timeout_ms=LOCK_TIMEOUT_MS,
    ) as running:
        yield running


def _patient(live: Running) -> str:
    patient = edge.patient_for(edge.new_access_code(), "19700101")
    client = live.feed_client()
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()
    return patient


def _register(live: Running, patient: str, doc: xs.DocSpec) -> list[tuple[str, str]]:
    """ITI-42 over HTTPS; the (errorCode, codeContext) of the answer, [] on Success."""
    reply = live.soap("edge", "/xds/registry").call(ITI42, xs.submission(patient, [doc]))
    errors = edge.errors_of(reply.body)
    assert reply.body.get("status") == (edge.FAILURE if errors else edge.SUCCESS)
    return errors


def _stored(live: Running, unique_id: str) -> int:
    with live.ch.sessions() as session:
        return session.scalar(select(func.count()).where(RegistryObjectRow.unique_id == unique_id)) or 0


def _refusal_audited(live: Running, patient: str, code: str) -> None:
    [record] = events_for(live, [("patient.identifier", patient), ("subtype", "ITI-42"), ("outcome", "8")])
    assert code in record["outcomeDesc"], record["outcomeDesc"]


@contextmanager
def _registry_locked(engine: Engine) -> Iterator[None]:
    """Another client of the database holds the registry table until the block ends."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.begin()
            conn.execute(text("LOCK TABLE registry_objects IN ACCESS EXCLUSIVE MODE"))
        else:
            conn.exec_driver_sql("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.rollback()


@contextmanager
def _every_new_connection(engine: Engine, statement: str) -> Iterator[None]:
    """Run ``statement`` on each connection the server opens while the block lasts (the pool is
    emptied at both ends, so every connection in use during the block has it)."""

    def on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        cur = dbapi_connection.cursor()
        cur.execute(statement)
        cur.close()
        if engine.dialect.name == "postgresql":
            dbapi_connection.commit()

    event.listen(engine, "connect", on_connect)
    engine.dispose()
    try:
        yield
    finally:
        event.remove(engine, "connect", on_connect)
        engine.dispose()


def test_one_transaction_more_than_the_limit_is_told_busy(live):
    patient = _patient(live)
    first, second = xs.DocSpec(), xs.DocSpec()
    outcome: dict[str, list[tuple[str, str]]] = {}
    with _registry_locked(live.ch.engine):
        # The first registration takes the only slot and waits for the lock the other client holds.
        waiting = threading.Thread(target=lambda: outcome.update(first=_register(live, patient, first)))
        waiting.start()
        time.sleep(0.5)
        started = time.monotonic()
        refused = _register(live, patient, second)
        waited = time.monotonic() - started
    waiting.join(timeout=30)
    assert [code for code, _ in refused] == ["XDSRegistryBusy"], refused
    assert "transactions" in refused[0][1] and waited < 5, (refused, waited)
    # The first one went through once the lock was gone.
    assert outcome["first"] == [] and _stored(live, first.unique_id) == 1
    assert _stored(live, second.unique_id) == 0
    _refusal_audited(live, patient, "XDSRegistryBusy")
    assert _register(live, patient, second) == []  # free again


def test_a_write_that_waits_too_long_for_a_lock_is_told_busy(live):
    if live.ch.engine.dialect.name != "postgresql":
        pytest.skip("lock_timeout is PostgreSQL's; SQLite waits its busy_timeout")
    patient = _patient(live)
    doc = xs.DocSpec()
    with _registry_locked(live.ch.engine):
        started = time.monotonic()
        refused = _register(live, patient, doc)
        waited = time.monotonic() - started
    assert [code for code, _ in refused] == ["XDSRegistryBusy"], refused
    assert "lock" in refused[0][1] and LOCK_TIMEOUT_MS / 1000 <= waited < 10, (refused, waited)
    assert _stored(live, doc.unique_id) == 0
    _refusal_audited(live, patient, "XDSRegistryBusy")


def test_a_full_database_is_out_of_resources(live):
    if live.ch.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL cannot be made to run out of disk from a test; SQLite's page limit can")
    patient = _patient(live)
    docs = [xs.DocSpec() for _ in range(40)]  # far more than the free space left in existing pages
    database = Path(live.ch.engine.url.database or "")
    with live.ch.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    with _every_new_connection(live.ch.engine, f"PRAGMA max_page_count = {pages}"):
        reply = live.soap("edge", "/xds/registry").call(ITI42, xs.submission(patient, docs))
    refused = edge.errors_of(reply.body)
    assert reply.body.get("status") == edge.FAILURE
    assert [code for code, _ in refused] == ["XDSRegistryOutOfResources"], refused
    assert all(_stored(live, d.unique_id) == 0 for d in docs)
    assert database.exists()
    _refusal_audited(live, patient, "XDSRegistryOutOfResources")
    assert _register(live, patient, docs[0]) == []  # the database may grow again


def test_a_database_that_refuses_writes_is_a_registry_error(live):
    read_only = {
        "postgresql": "SET default_transaction_read_only = on",
        "sqlite": "PRAGMA query_only = ON",
    }[live.ch.engine.dialect.name]
    patient = _patient(live)
    doc = xs.DocSpec()
    with _every_new_connection(live.ch.engine, read_only):
        refused = _register(live, patient, doc)
    assert [code for code, _ in refused] == ["XDSRegistryError"], refused
    assert "read-only" in refused[0][1]
    assert _stored(live, doc.unique_id) == 0
    _refusal_audited(live, patient, "XDSRegistryError")
    assert _register(live, patient, doc) == []
