"""The PIX Manager's Patient resources (ITI-104): one per Patient Identity Source record, keyed by the
source's identifier in its own domain, with a logical id a consumer can read (and ITI-83 can name as
``targetId``). Only identifiers, ``active`` and the replaced-by link are kept (models.PixFhirPatient).

Functions on a SQLAlchemy connection inside the caller's transaction, and the pure rendering of a
stored record as a FHIR R4 Patient.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, insert, select, tuple_, update

from pix_manager.identifiers import Identifier, PixConfig
from pix_manager.models import PixFhirPatient

T = PixFhirPatient.__table__
OID_PREFIX = "urn:oid:"
_COLUMNS = (
    T.c.id,
    T.c.logical_id,
    T.c.domain_id,
    T.c.value,
    T.c.version,
    T.c.active,
    T.c.identifiers,
    T.c.replaced_by_domain_id,
    T.c.replaced_by_value,
    T.c.updated_at,
    T.c.deleted_at,
)


@dataclass(frozen=True)
class StoredPatient:
    row_id: int
    logical_id: str
    key: Identifier
    version: int
    active: bool
    identifiers: tuple[tuple[str, str], ...]  # (OID, value), the key first
    replaced_by: Identifier | None
    updated_at: datetime
    deleted: bool

    @property
    def reference(self) -> str:
        return f"Patient/{self.logical_id}"


def _stored(row: object) -> StoredPatient:
    r = row  # a Row with the _COLUMNS
    replaced = (
        Identifier(r.replaced_by_domain_id, r.replaced_by_value)  # type: ignore[attr-defined]
        if r.replaced_by_domain_id is not None  # type: ignore[attr-defined]
        else None
    )
    updated = r.updated_at  # type: ignore[attr-defined]
    # SQLite gives naive timestamps back (written in UTC), PostgreSQL the session's zone: UTC either way.
    updated = updated.replace(tzinfo=UTC) if updated.tzinfo is None else updated.astimezone(UTC)
    return StoredPatient(
        r.id,  # type: ignore[attr-defined]
        r.logical_id,  # type: ignore[attr-defined]
        Identifier(r.domain_id, r.value),  # type: ignore[attr-defined]
        r.version,  # type: ignore[attr-defined]
        bool(r.active),  # type: ignore[attr-defined]
        tuple((oid, value) for oid, value in json.loads(r.identifiers)),  # type: ignore[attr-defined]
        replaced,
        updated,
        r.deleted_at is not None,  # type: ignore[attr-defined]
    )


def find_live(conn: Connection, key: Identifier, *, for_update: bool = False) -> StoredPatient | None:
    """The live (not removed) resource keyed by ``key``: the one match of the conditional update."""
    stmt = select(*_COLUMNS).where(T.c.domain_id == key.domain_id, T.c.value == key.value, T.c.deleted_at.is_(None))
    row = conn.execute(stmt.with_for_update() if for_update else stmt).first()
    return None if row is None else _stored(row)


def by_logical_id(conn: Connection, logical_id: str) -> StoredPatient | None:
    row = conn.execute(select(*_COLUMNS).where(T.c.logical_id == logical_id)).first()
    return None if row is None else _stored(row)


def live_for(conn: Connection, keys: Iterable[Identifier]) -> list[StoredPatient]:
    """The live resources keyed by any of ``keys`` (ITI-83 targetId), in the order of ``keys``."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return []
    rows = conn.execute(
        select(*_COLUMNS).where(
            tuple_(T.c.domain_id, T.c.value).in_([(k.domain_id, k.value) for k in wanted]), T.c.deleted_at.is_(None)
        )
    ).all()
    found = {p.key: p for p in map(_stored, rows)}
    return [found[k] for k in wanted if k in found]


def save(
    conn: Connection,
    key: Identifier,
    identifiers: Sequence[tuple[str, str]],
    *,
    active: bool,
    replaced_by: Identifier | None,
) -> tuple[StoredPatient, bool]:
    """Create or update the resource keyed by ``key`` (a new version each time); True when created."""
    now = datetime.now(UTC)
    values = {
        "active": active,
        "identifiers": json.dumps([list(i) for i in identifiers]),
        "replaced_by_domain_id": replaced_by.domain_id if replaced_by is not None else None,
        "replaced_by_value": replaced_by.value if replaced_by is not None else None,
        "updated_at": now,
    }
    existing = find_live(conn, key, for_update=True)
    if existing is not None:
        conn.execute(update(T).where(T.c.id == existing.row_id).values(version=existing.version + 1, **values))
    else:
        conn.execute(
            insert(T).values(
                logical_id=str(uuid.uuid4()),
                domain_id=key.domain_id,
                value=key.value,
                version=1,
                created_at=now,
                deleted_at=None,
                **values,
            )
        )
    saved = find_live(conn, key)
    assert saved is not None
    return saved, existing is None


def mark_deleted(conn: Connection, key: Identifier) -> StoredPatient | None:
    """Remove the live resource keyed by ``key``: kept as deleted (a read answers 410 Gone)."""
    existing = find_live(conn, key, for_update=True)
    if existing is None:
        return None
    now = datetime.now(UTC)
    conn.execute(
        update(T).where(T.c.id == existing.row_id).values(version=existing.version + 1, updated_at=now, deleted_at=now)
    )
    return by_logical_id(conn, existing.logical_id)


def instant(when: datetime) -> str:
    """A FHIR instant (meta.lastUpdated)."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_resource(patient: StoredPatient, config: PixConfig, surviving: StoredPatient | None) -> dict[str, object]:
    """The FHIR R4 Patient of a stored record, elements in the order of the Patient definition (the XML
    writer keeps the dictionary's order). The replaced-by link references the surviving identifier's
    Patient resource when there is one, else carries the surviving identifier."""
    resource: dict[str, object] = {
        "resourceType": "Patient",
        "id": patient.logical_id,
        "meta": {"versionId": str(patient.version), "lastUpdated": instant(patient.updated_at)},
        "identifier": [{"system": OID_PREFIX + oid, "value": value} for oid, value in patient.identifiers],
        "active": patient.active,
    }
    if patient.replaced_by is not None:
        domain = config.by_id.get(patient.replaced_by.domain_id)
        if surviving is not None:
            other: dict[str, object] = {"reference": surviving.reference}
        elif domain is not None:
            other = {"identifier": {"system": OID_PREFIX + domain.oid, "value": patient.replaced_by.value}}
        else:
            other = {"display": patient.replaced_by.value}
        resource["link"] = [{"other": other, "type": "replaced-by"}]
    return resource
