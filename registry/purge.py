"""Retention purge of expired submissions from the registry (docs/retention.md).

The unit is the SubmissionSet: everything that arrived with it (its DocumentEntries, Folders,
Associations and top-level Classifications: every row whose ``submission_set_uuid`` it is) goes,
and with it every Association elsewhere that references one of those objects, since an
Association may not point at an object that no longer exists (ebRIM; the same rule as ITI-62's
ReferencesExistException). A Folder goes with the submission that created it even when later
submissions filed documents in it; those documents stay, in their own SubmissionSets. A Folder of
another submission that loses a member gets a new lastUpdateTime, as with ITI-62.

Nothing here commits: the caller's transaction removes a batch of submissions entirely or not at
all. Concurrent purgers never take the same submission: on PostgreSQL the expired rows are
selected FOR UPDATE SKIP LOCKED; SQLite has one writer at a time, taken before the selection.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from registry import metadata as md
from registry import store
from registry.models import RegistryAssociationRow, RegistryObjectRow
from registry.retention import RegistryRetentionRow

O = RegistryObjectRow  # noqa: E741 - short alias keeps the statements readable
A = RegistryAssociationRow
R = RegistryRetentionRow


@dataclass(frozen=True)
class PurgedDocument:
    unique_id: str
    repository_unique_id: str
    # True when no DocumentEntry with this uniqueId is left in the registry (no other version, no
    # identical resubmission): the repository may then remove the bytes.
    released: bool


@dataclass(frozen=True)
class PurgedSubmission:
    submission_set_uuid: str
    submission_set_unique_id: str
    patient_id: str
    submitted_by: str
    registered_at: datetime
    expires_at: datetime
    documents: tuple[PurgedDocument, ...]
    objects: int  # registry objects removed (or that would be, in a dry run)


def _lock_writer(session: Session) -> None:
    """SQLite: take the database's write lock now, before reading what to purge, so two purgers
    (two processes on one file) run one after the other instead of both reading the same rows.
    A write statement takes it even when it matches no row."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(R).where(R.retention_days < 0).values(retention_days=R.retention_days))


def _expired(session: Session, now: datetime, limit: int | None, lock: bool) -> list[RegistryRetentionRow]:
    stmt = select(R).where(R.expires_at <= now).order_by(R.expires_at, R.submission_set_uuid)
    if limit is not None:
        stmt = stmt.limit(limit)
    if lock and session.get_bind().dialect.name == "postgresql":
        # Rows another purger holds are skipped, not waited for: each submission is purged once.
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.scalars(stmt))


def _objects_of(session: Session, ss_uuid: str) -> list[RegistryObjectRow]:
    return list(session.scalars(select(O).where(O.submission_set_uuid == ss_uuid)))


def _associations_touching(session: Session, ids: Collection[str]) -> list[tuple[str, str, str, str]]:
    """(association id, source, target, type) of every Association with an end among ``ids``."""
    found: list[tuple[str, str, str, str]] = []
    wanted = sorted(ids)
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        stmt = select(A.entry_uuid, A.source_uuid, A.target_uuid, A.assoc_type).where(
            or_(A.source_uuid.in_(chunk), A.target_uuid.in_(chunk))
        )
        found.extend((a, s, t, k) for a, s, t, k in session.execute(stmt))
    return found


def _still_registered(session: Session, unique_ids: Collection[str]) -> set[str]:
    wanted = sorted(unique_ids)
    found: set[str] = set()
    for i in range(0, len(wanted), 500):
        stmt = select(O.unique_id).where(O.unique_id.in_(wanted[i : i + 500]), O.object_type == "DocumentEntry")
        found.update(u for u in session.scalars(stmt) if u)
    return found


def _purge_one(session: Session, row: RegistryRetentionRow, now: datetime, dry_run: bool) -> PurgedSubmission:
    objects = _objects_of(session, row.submission_set_uuid)
    ids = {o.entry_uuid for o in objects}
    linked = _associations_touching(session, ids)
    gone = ids | {a for a, *_ in linked}
    entries = [o for o in objects if o.object_type == "DocumentEntry" and o.unique_id]
    folders_losing_members = {
        source for _, source, target, kind in linked if kind == md.HAS_MEMBER and source not in gone and target in ids
    }
    if dry_run:
        # What would stay: DocumentEntries with the same uniqueId outside this submission.
        others = set(
            session.scalars(
                select(O.unique_id).where(
                    O.unique_id.in_([o.unique_id for o in entries]),
                    O.object_type == "DocumentEntry",
                    O.entry_uuid.not_in(ids),
                )
            )
        )
    else:
        store.remove_objects(session, gone)
        for folder_uuid in sorted(folders_losing_members):
            folder = session.get(O, folder_uuid)
            if folder is not None and folder.object_type == "Folder":
                store.touch_folder(folder, now)
        session.execute(delete(R).where(R.submission_set_uuid == row.submission_set_uuid))
        others = _still_registered(session, {o.unique_id or "" for o in entries})
    documents = tuple(
        PurgedDocument(o.unique_id or "", o.repository_unique_id or "", (o.unique_id or "") not in others)
        for o in entries
    )
    ss = next((o for o in objects if o.object_type == "SubmissionSet"), None)
    return PurgedSubmission(
        submission_set_uuid=row.submission_set_uuid,
        submission_set_unique_id=row.submission_set_unique_id or (ss.unique_id if ss else "") or "",
        patient_id=row.patient_id or (ss.patient_id if ss else "") or "",
        submitted_by=row.submitted_by or "",
        registered_at=row.registered_at,
        expires_at=row.expires_at,
        documents=documents,
        objects=len(gone),
    )


def purge_expired(
    session: Session, now: datetime, *, limit: int | None, dry_run: bool = False
) -> list[PurgedSubmission]:
    """Remove (or, with ``dry_run``, only describe) up to ``limit`` submissions whose expiry is at
    or before ``now``, oldest first, in the caller's transaction."""
    if not dry_run:
        _lock_writer(session)
    purged = [_purge_one(session, row, now, dry_run) for row in _expired(session, now, limit, lock=not dry_run)]
    session.flush()
    return purged


def registered_unique_ids(session: Session, unique_ids: Collection[str]) -> set[str]:
    """Those of ``unique_ids`` that some registered DocumentEntry carries."""
    return _still_registered(session, unique_ids)
