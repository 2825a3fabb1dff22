"""The PostgreSQL pool's liveness ping for idle connections (clearinghouse.db; docs/decisions.md).

The ping is skipped for a connection returned to the pool less than ``pre_ping_idle`` seconds ago (the
stored-query hot path), and still rescues one that sat idle while its server process went away. Real
PostgreSQL connections, killed with pg_terminate_backend as a restart or a firewall would."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

import registry.models  # noqa: F401 - registers the tables on Base.metadata
from clearinghouse import db
from clearinghouse.config import Settings, load_settings
from clearinghouse.errors import XdsError
from registry import api, patients
from tests import xds_samples as xs

PG_URL = os.environ.get("CLEARINGHOUSE_TEST_DATABASE_URL", "")
pytestmark = pytest.mark.skipif(not PG_URL, reason="needs CLEARINGHOUSE_TEST_DATABASE_URL (PostgreSQL)")


def _backend_pid(engine) -> int:  # noqa: ANN001
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar()


def _terminate(pid: int) -> None:
    admin = db.make_engine(PG_URL, pool=db.PoolSettings(pre_ping=False))
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar() is True
        # pg_terminate_backend only signals; wait until the process is gone.
        for _ in range(100):
            with admin.connect() as conn:
                alive = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid})
                if alive.scalar() == 0:
                    return
            time.sleep(0.02)
        raise AssertionError(f"backend {pid} still alive")
    finally:
        admin.dispose()


def _pings(engine) -> list[object]:  # noqa: ANN001
    """Count the dialect's pings (the round trip the idle rule saves)."""
    calls: list[object] = []
    original = engine.dialect.do_ping

    def counting(dbapi_connection):  # noqa: ANN001, ANN202
        calls.append(dbapi_connection)
        return original(dbapi_connection)

    engine.dialect.do_ping = counting
    return calls


def test_a_connection_used_a_moment_ago_is_lent_without_a_ping():
    engine = db.make_engine(PG_URL, pool=db.PoolSettings(size=2, overflow=0, pre_ping_idle=60.0))
    try:
        pid = _backend_pid(engine)
        pings = _pings(engine)
        for _ in range(5):
            assert _backend_pid(engine) == pid  # LIFO: the same warm connection every time
        assert pings == []
    finally:
        engine.dispose()


def test_an_idle_connection_is_pinged_and_replaced_when_its_server_process_is_gone():
    engine = db.make_engine(PG_URL, pool=db.PoolSettings(size=2, overflow=0, pre_ping_idle=0.05))
    try:
        pid = _backend_pid(engine)
        pings = _pings(engine)
        _terminate(pid)
        time.sleep(0.1)  # longer than pre_ping_idle: the next check-out tests the connection
        new_pid = _backend_pid(engine)
        assert new_pid != pid
        assert len(pings) == 1
    finally:
        engine.dispose()


def test_within_the_idle_window_a_lost_connection_fails_once_and_the_pool_recovers():
    """The price of skipping the ping (docs/decisions.md): a connection lost less than pre_ping_idle
    after its last use fails its first statement; SQLAlchemy then invalidates the pool, and the next
    check-out reconnects, without a ping of its own."""
    engine = db.make_engine(PG_URL, pool=db.PoolSettings(size=2, overflow=0, pre_ping_idle=60.0))
    try:
        pid = _backend_pid(engine)
        _terminate(pid)
        with pytest.raises(DBAPIError) as failed:
            _backend_pid(engine)
        assert failed.value.connection_invalidated
        assert _backend_pid(engine) != pid
    finally:
        engine.dispose()


def test_every_check_out_is_pinged_when_the_idle_threshold_is_zero():
    engine = db.make_engine(PG_URL, pool=db.PoolSettings(size=2, overflow=0, pre_ping_idle=0))
    try:
        assert engine.pool._pre_ping is True  # SQLAlchemy's own pre-ping, at every check-out
        pid = _backend_pid(engine)
        _terminate(pid)
        assert _backend_pid(engine) != pid
    finally:
        engine.dispose()


def test_the_idle_threshold_comes_from_the_environment():
    settings = load_settings(environ={"CLEARINGHOUSE_DB_POOL_PRE_PING_IDLE_MS": "250"})
    assert db.PoolSettings.of(settings).pre_ping_idle == 0.25
    assert db.PoolSettings.of(load_settings(environ={})).pre_ping_idle == 1.0


def test_a_query_on_a_connection_lost_within_the_window_is_registry_busy_and_the_next_one_answers():
    """Through the registry's API: the one request that meets the lost connection gets XDSRegistryBusy
    (retry), not a SOAP fault, and the next request is answered on a new connection."""
    schema = f"pool_{uuid.uuid4().hex[:12]}"
    admin = db.make_engine(PG_URL, pool=db.PoolSettings(pre_ping=False))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = db.make_engine(PG_URL, schema=schema, pool=db.PoolSettings(size=1, overflow=0, pre_ping_idle=60.0))
    backends: list[int] = []

    @event.listens_for(engine, "connect")
    def _record(dbapi_connection, _record) -> None:  # noqa: ANN001
        with dbapi_connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backends.append(cur.fetchone()[0])
        dbapi_connection.commit()

    try:
        db.Base.metadata.create_all(engine)
        sessions, settings = db.session_factory(engine), Settings()
        patient = xs.patient_cx()
        with db.transaction(sessions) as session:
            patients.register_patient(session, patient)
        api.register_document_set(sessions, settings, xs.submission(patient, [xs.DocSpec()]), submitter="edge")
        assert len(api.stored_query(sessions, settings, xs.find_documents(patient))[0]) == 1
        _terminate(backends[-1])
        with pytest.raises(XdsError) as failed:
            api.stored_query(sessions, settings, xs.find_documents(patient))
        assert [i.code for i in failed.value.items] == ["XDSRegistryBusy"]
        assert len(api.stored_query(sessions, settings, xs.find_documents(patient))[0]) == 1
        assert len(backends) == 2
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
