"""Database access: engine creation, sessions, and Alembic migrations.

Each actor package owns its tables and its own Alembic branch (``<package>/migrations``);
the core only runs them. SQLite is the embedded default, PostgreSQL the production database.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

# Packages whose ``migrations`` folder is an Alembic branch of this database.
MIGRATION_PACKAGES = ("clearinghouse", "registry", "repository", "atna", "pix_manager")


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


def make_engine(url: str, schema: str | None = None) -> Engine:
    """An engine for ``url``; ``schema`` selects a PostgreSQL schema (used to isolate test runs)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {"options": f"-csearch_path={schema}"} if schema else {}
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args=connect_args)


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
    """Bring the schema of every actor to ``revision`` (all branch heads by default)."""
    command.upgrade(_alembic_config(engine), revision)


def current_revisions(engine: Engine) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())
