"""Fixtures and helpers for registry tests that run against a real database: SQLite, and also
PostgreSQL in a throw-away schema when CLEARINGHOUSE_TEST_DATABASE_URL is set. Tests file their
objects under fresh patients, so one database per backend and module is shared."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

import registry.models  # noqa: F401 - registers the tables on Base.metadata
from clearinghouse.config import Settings
from clearinghouse.db import Base, make_engine, session_factory, transaction
from clearinghouse.errors import XdsError
from registry import api, patients
from registry import metadata as md
from registry.models import RegistryObjectRow
from tests import xds_samples as xs

PG_URL = os.environ.get("CLEARINGHOUSE_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "ebRS"
EDGE = "edge-participant"


def fresh_engine(backend: str, tmp_path: Path) -> tuple[Engine, object]:
    if backend == "postgresql":
        schema = f"reg_{uuid.uuid4().hex[:12]}"
        admin = make_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        return make_engine(PG_URL, schema=schema), (admin, schema)
    return make_engine(f"sqlite:///{tmp_path / 'registry.db'}"), None


def drop(engine: Engine, cleanup: object) -> None:
    engine.dispose()
    if cleanup:
        admin, schema = cleanup  # type: ignore[misc]
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng, cleanup = fresh_engine(request.param, tmp_path_factory.mktemp(request.param))
    Base.metadata.create_all(eng)
    yield eng
    drop(eng, cleanup)


@pytest.fixture(scope="module")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture
def patient(sessions: sessionmaker[Session]) -> str:
    return new_patient(sessions)


def new_patient(sessions: sessionmaker[Session]) -> str:
    pid = xs.patient_cx()
    with transaction(sessions) as session:
        patients.register_patient(session, pid)
    return pid


def register(sessions: sessionmaker[Session], settings: Settings, request: etree._Element, who: str = EDGE) -> None:
    api.register_document_set(sessions, settings, request, submitter=who)


def update(sessions: sessionmaker[Session], settings: Settings, request: etree._Element, who: str = EDGE) -> None:
    api.update_document_set(sessions, settings, request, participant=who)


def remove(sessions: sessionmaker[Session], settings: Settings, ids: list[str], who: str = EDGE) -> None:
    api.delete_document_set(sessions, settings, xs.remove_request(ids), participant=who)


def run(sessions: sessionmaker[Session], settings: Settings, request: etree._Element) -> etree._Element:
    return api.stored_query(sessions, settings, request)


def codes(excinfo: pytest.ExceptionInfo[XdsError]) -> list[str]:
    return [i.code for i in excinfo.value.items]


def listed(response: etree._Element) -> list[etree._Element]:
    [object_list] = response.findall(f"{{{md.RIM}}}RegistryObjectList")
    return list(object_list)


def kinds(response: etree._Element) -> list[str]:
    return sorted(etree.QName(e).localname for e in listed(response))


def ids_of(response: etree._Element, local: str | None = None) -> set[str]:
    return {e.get("id", "") for e in listed(response) if local is None or etree.QName(e).localname == local}


def doc_uids(response: etree._Element) -> set[str]:
    return {
        md.parse_extrinsic_object(e).unique_id or ""
        for e in listed(response)
        if e.tag == f"{{{md.RIM}}}ExtrinsicObject"
    }


def row(sessions: sessionmaker[Session], entry_uuid: str) -> RegistryObjectRow:
    with sessions() as session:
        found = session.get(RegistryObjectRow, entry_uuid)
        assert found is not None, entry_uuid
        return found


def uuid_of(sessions: sessionmaker[Session], unique_id: str, kind: str = "DocumentEntry") -> str:
    """The entry UUID of the latest version of the object with ``unique_id``."""
    with sessions() as session:
        return session.scalars(
            select(RegistryObjectRow.entry_uuid)
            .where(RegistryObjectRow.unique_id == unique_id, RegistryObjectRow.object_type == kind)
            .order_by(RegistryObjectRow.version.desc())
        ).first()


def association_uuid(sessions: sessionmaker[Session], source: str, target: str, kind: str = xs.HAS_MEMBER) -> str:
    from registry.models import RegistryAssociationRow as A

    with sessions() as session:
        return session.scalars(
            select(A.entry_uuid).where(A.source_uuid == source, A.target_uuid == target, A.assoc_type == kind)
        ).one()


def submission_set_of(sessions: sessionmaker[Session], entry_uuid: str) -> str:
    return row(sessions, entry_uuid).submission_set_uuid or ""
