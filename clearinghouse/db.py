"""Database access: engine creation, sessions, and Alembic migrations.

Each actor package owns its tables and its own Alembic branch (``<package>/migrations``);
the core only runs them. SQLite is the embedded default, PostgreSQL the production database.
"""

from __future__ import annotations

import fcntl
import importlib
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

if TYPE_CHECKING:
    from clearinghouse.config import Settings

# Packages whose ``migrations`` folder is an Alembic branch of this database.
MIGRATION_PACKAGES = ("clearinghouse", "registry", "repository", "atna", "pix_manager", "console", "conformance")


class Base(DeclarativeBase):
    pass


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
    cur = dbapi_connection.cursor()
    # WAL lets readers proceed while a submission commits; busy_timeout turns lock
    # contention between server threads into waiting instead of "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


@dataclass(frozen=True)
class PoolSettings:
    """The PostgreSQL connection pool of one process (CLEARINGHOUSE_DB_POOL_*; docs/operations.md).

    ``size`` connections are kept open, up to ``overflow`` more are opened under load and closed when
    returned; a request for a connection waits ``timeout`` seconds before failing. ``pre_ping`` tests a
    connection before handing it out (a database restart or a load balancer's idle cut then costs a
    reconnect, not a failed transaction) if it has been idle in the pool for ``pre_ping_idle`` seconds
    or more (0: at every check-out); ``recycle`` replaces connections older than that many seconds
    (-1: never), below the idle limits of firewalls and PgBouncer-style proxies.
    """

    size: int = 10
    overflow: int = 20
    timeout: float = 30.0
    pre_ping: bool = True
    recycle: int = 1800
    pre_ping_idle: float = 1.0

    @classmethod
    def of(cls, settings: Settings) -> PoolSettings:
        return cls(
            settings.db_pool_size,
            settings.db_pool_max_overflow,
            float(settings.db_pool_timeout_seconds),
            settings.db_pool_pre_ping,
            settings.db_pool_recycle_seconds,
            settings.db_pool_pre_ping_idle_ms / 1000,
        )


def make_engine(url: str, schema: str | None = None, *, pool: PoolSettings | None = None) -> Engine:
    """An engine for ``url``; ``schema`` selects a PostgreSQL schema (used to isolate test runs).

    SQLite keeps SQLAlchemy's own pooling (one file, one process); ``pool`` applies to PostgreSQL."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    pool = pool or PoolSettings()
    connect_args = {"options": f"-csearch_path={schema}"} if schema else {}
    engine = create_engine(
        url,
        pool_size=pool.size,
        max_overflow=pool.overflow,
        pool_timeout=pool.timeout,
        pool_pre_ping=pool.pre_ping and pool.pre_ping_idle <= 0,
        pool_recycle=pool.recycle,
        # Last in, first out: the connections in use stay few and warm (they are the ones that skip
        # the ping), and the rest stay idle until the recycle replaces them.
        pool_use_lifo=True,
        connect_args=connect_args,
    )
    if pool.pre_ping and pool.pre_ping_idle > 0:
        _ping_when_idle(engine, pool.pre_ping_idle)
    return engine


def _ping_when_idle(engine: Engine, idle: float) -> None:
    """SQLAlchemy's pre-ping, for connections idle ``idle`` seconds or more only.

    The ping is a round trip on every check-out, a fifth of what a stored query costs in all
    (docs/decisions.md). The connections it rescues are those that sat idle while the server
    restarted or a firewall cut them; one returned a moment ago is as good as one just tested, and
    if the database went away in that moment, its first statement fails, SQLAlchemy invalidates
    the whole pool, and the next check-outs reconnect."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection, record) -> None:  # noqa: ANN001
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _lent(dbapi_connection, record, _proxy) -> None:  # noqa: ANN001
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < idle:
            return  # just connected, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if not engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            # The pool discards this connection and checks out a fresh one (SQLAlchemy pool events).
            raise DisconnectionError(f"connection lost while idle: {exc}") from exc


def engine_for(settings: Settings) -> Engine:
    """The engine of the configured database, with the configured pool."""
    return make_engine(settings.effective_database_url, pool=PoolSettings.of(settings))


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception."""
    with factory() as session, session.begin():
        yield session


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    here = Path(__file__).parent
    cfg.set_main_option("script_location", str(here / "migrations"))
    locations = []
    for name in MIGRATION_PACKAGES:
        pkg = importlib.import_module(name)
        locations.append(
            str(Path(pkg.__file__).parent / "migrations" / ("versions" if name == "clearinghouse" else ""))
        )
    cfg.set_main_option("version_locations", " ".join(p.rstrip("/") for p in locations))
    cfg.set_main_option("path_separator", "space")
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Bring the schema of every actor to ``revision`` (all branch heads by default).

    Several processes may start at once on one database (``serve`` upgrades at start): they take
    turns under a lock, and the ones after the first find nothing left to do."""
    with migration_lock(engine):
        command.upgrade(_alembic_config(engine), revision)


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Exclusive among every process migrating this database (and schema).

    PostgreSQL: a session advisory lock on a connection of its own, keyed by the schema, so that
    test runs in separate schemas do not wait for each other; it is released if the process dies.
    SQLite: an flock on a file beside the database. Other databases: no lock."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar() or ""
            # Advisory lock keys are one bigint: a fixed class id and a CRC of the schema name.
            key = zlib.crc32(f"clearinghouse-migrations:{schema}".encode()) - 2**31  # a signed int4
            conn.execute(_LOCK, {"cls": MIGRATION_LOCK_CLASS, "key": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(_UNLOCK, {"cls": MIGRATION_LOCK_CLASS, "key": key})
                conn.commit()
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migration-lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


# First half of the two-int advisory lock key used for migrations ("CH" in ASCII): other advisory
# locks of the clearinghouse (atna, pix_manager, retention) use their own class ids.
MIGRATION_LOCK_CLASS = 0x4348
_LOCK = text("SELECT pg_advisory_lock(CAST(:cls AS integer), CAST(:key AS integer))")
_UNLOCK = text("SELECT pg_advisory_unlock(CAST(:cls AS integer), CAST(:key AS integer))")


def current_revisions(engine: Engine) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())
