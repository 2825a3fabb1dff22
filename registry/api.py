"""The Document Registry's entry points, independent of SOAP.

The SOAP layer hands in the body element and renders what comes back: ``register_document_set``
(ITI-42), ``update_document_set`` (ITI-57) and ``delete_document_set`` (ITI-62) return nothing or
raise XdsError carrying every RegistryError found; ``stored_query`` (ITI-18) returns a
``query:AdhocQueryResponse`` or raises XdsError. ``error_response`` / ``success_response`` render
those outcomes as ebRS responses.

Each transaction runs in one database transaction, inside an ``Admission`` slot when one is given
(the SOAP endpoint gives one): overload and exhaustion become XDSRegistryBusy and
XDSRegistryOutOfResources (registry.admission).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse import participants
from clearinghouse.config import Settings
from clearinghouse.db import transaction
from clearinghouse.errors import (
    RegistryErrorItem,
    XDSDuplicateUniqueIdInRegistry,
    XdsError,
    XDSMetadataVersionError,
)
from clearinghouse.registry_response import error_response, success_response
from registry import metadata as md
from registry import purge, queries, remove, retention, rules, store, update
from registry.admission import Admission, resource_error
from registry.models import RegistryObjectRow
from registry.patients import is_known_patient

__all__ = [
    "Admission",
    "delete_document_set",
    "error_response",
    "purge_expired_submissions",
    "registered_document_unique_ids",
    "register_document_set",
    "stored_query",
    "stored_query_xml",
    "success_response",
    "update_document_set",
]

log = logging.getLogger("registry")

# One retry after a unique-index collision: the second pass sees the competing transaction and
# answers with the precise rule (identical resubmission accepted, XDSNonIdenticalHash,
# XDSMetadataVersionError...).
_ATTEMPTS = 2


@contextmanager
def _admitted(admission: Admission | None, name: str) -> Iterator[None]:
    if admission is not None:
        with admission.slot(name):
            yield
        return
    try:
        yield
    except (SQLAlchemyError, MemoryError, OSError) as exc:
        mapped = resource_error(exc)
        if mapped is None:
            raise
        raise mapped from exc


def _write_transaction(sessions: sessionmaker[Session], settings: Settings):  # noqa: ANN202
    """A transaction for registry writes: on PostgreSQL, waiting for a lock is bounded so a
    blocked write ends as XDSRegistryBusy instead of holding the client."""

    @contextmanager
    def scope() -> Iterator[Session]:
        with transaction(sessions) as session:
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text(f"SET LOCAL lock_timeout = {int(settings.registry_lock_timeout_ms)}"))
            yield session

    return scope()


@contextmanager
def _read_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for stored queries. They only read, and on PostgreSQL (READ COMMITTED) a
    transaction gives its statements no common snapshot anyway, so they run in autocommit mode and
    spend no round trips on BEGIN and COMMIT. SQLite keeps its (snapshot) read transaction."""
    with sessions() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session


def _register_once(
    session: Session,
    sub: md.Submission,
    static_errors: list[RegistryErrorItem],
    submitter: str | None,
    default_retention_days: int = 30,
) -> None:
    existing = store.lookup_objects(session, store.submission_entry_ids(sub))
    registered = store.lookup_unique_ids(session, store.submission_unique_ids(sub))
    errors = static_errors + rules.validate_against_registry(
        sub, existing, registered, lambda pid: is_known_patient(session, pid)
    )
    days, retention_errors = retention.submission_days(
        sub, default_retention_days, participants.retention_days_of(session, submitter)
    )
    errors += retention_errors
    if errors:
        raise XdsError.many(errors)
    now = datetime.now(UTC)
    resolved = md.resolve_submission(sub, md.id_mapping(sub), now=store.stamp(now))
    store.save_submission(session, resolved, already_registered=set(registered), now=now, submitted_by=submitter)
    if sub.submission_set is not None and sub.submission_set.unique_id:
        retention.record(session, sub.submission_set.unique_id, days=days, registered_at=now, submitted_by=submitter)


def register_document_set(
    session_factory: sessionmaker[Session],
    settings: Settings,
    request: etree._Element,
    *,
    submitter: str | None = None,
    trusted_relay: bool = False,
    admission: Admission | None = None,
) -> None:
    """ITI-42 Register Document Set-b.

    ``request`` is the ``lcm:SubmitObjectsRequest``. Validates it completely (raising one XdsError
    whose ``items`` hold every problem found), then stores it in one transaction: all objects or
    none. Symbolic ids are replaced by new urn:uuid ids, every object gets status Approved.
    ``submitter`` is the participant recorded as the owner of the objects; when ``trusted_relay``
    (the in-process repository) the participant the repository names in the submitter slot is.
    Two concurrent registrations of one uniqueId are serialised by the database's unique index;
    the loser is re-validated and answered XDSDuplicateUniqueIdInRegistry / XDSNonIdenticalHash.
    """
    relayed = md.take_submitter(request)
    owner = relayed if trusted_relay and relayed else submitter
    sub = md.parse_submission(request)
    static_errors = rules.validate_submission(sub, settings.affinity_domain_oid)
    with _admitted(admission, "ITI-42"):
        for attempt in range(_ATTEMPTS):
            try:
                with _write_transaction(session_factory, settings) as session:
                    _register_once(session, sub, static_errors, owner, settings.retention_days)
                return
            except IntegrityError as exc:
                log.info("ITI-42: concurrent registration collided (attempt %d): %s", attempt + 1, exc.orig)
    raise XDSDuplicateUniqueIdInRegistry(
        "a concurrent submission registered the same uniqueId or entryUUID; resubmit if needed"
    )


def update_document_set(
    session_factory: sessionmaker[Session],
    settings: Settings,
    request: etree._Element,
    *,
    participant: str,
    admission: Admission | None = None,
) -> None:
    """ITI-57 Update Document Set: new versions of DocumentEntries and Folders, availabilityStatus
    changes and folder memberships (registry.update_rules), all or nothing, by the participant that
    submitted the objects."""
    md.take_submitter(request)  # meaningless here: the owner is whoever sends ITI-57
    sub = md.parse_submission(request)
    plan, static_errors = update.static_errors(sub, settings.affinity_domain_oid)
    with _admitted(admission, "ITI-57"):
        for attempt in range(_ATTEMPTS):
            try:
                with _write_transaction(session_factory, settings) as session:
                    # The ITI-57 SubmissionSet is a registration too, kept by the same retention rule.
                    days, retention_errors = retention.submission_days(
                        sub, settings.retention_days, participants.retention_days_of(session, participant)
                    )
                    now = datetime.now(UTC)
                    update.apply_update(
                        session, sub, plan, static_errors + retention_errors, participant=participant, now=now
                    )
                    if sub.submission_set is not None and sub.submission_set.unique_id:
                        ss_uid = sub.submission_set.unique_id
                        retention.record(session, ss_uid, days=days, registered_at=now, submitted_by=participant)
                return
            except IntegrityError as exc:
                log.info("ITI-57: concurrent update collided (attempt %d): %s", attempt + 1, exc.orig)
    raise XDSMetadataVersionError("a concurrent update changed the same objects; query them and retry")


def delete_document_set(
    session_factory: sessionmaker[Session],
    settings: Settings,
    request: etree._Element,
    *,
    participant: str,
    admission: Admission | None = None,
) -> None:
    """ITI-62 Delete Document Set: remove the objects an ``lcm:RemoveObjectsRequest`` names, all or
    nothing (registry.remove_rules)."""
    ids = md.parse_remove_request(request)
    with _admitted(admission, "ITI-62"), _write_transaction(session_factory, settings) as session:
        remove.apply_removal(session, ids, participant=participant, now=datetime.now(UTC))


def stored_query(
    session_factory: sessionmaker[Session],
    settings: Settings,
    request: etree._Element,
    *,
    admission: Admission | None = None,
) -> etree._Element:
    """ITI-18 Registry Stored Query.

    ``request`` is the ``query:AdhocQueryRequest``; the answer is a ``query:AdhocQueryResponse``
    with status Success and a rim:RegistryObjectList (ObjectRefs or LeafClass objects). Problems
    with the request or too many results raise XdsError (render with ``error_response``).
    The answer is ``stored_query_xml`` parsed: the very bytes the SOAP endpoint sends.
    """
    return queries.parse_response(stored_query_xml(session_factory, settings, request, admission=admission))


def stored_query_xml(
    session_factory: sessionmaker[Session],
    settings: Settings,
    request: etree._Element,
    *,
    admission: Admission | None = None,
) -> bytes:
    """ITI-18 as the SOAP endpoint answers it: the ``query:AdhocQueryResponse`` serialised (UTF-8),
    assembled from the stored objects' XML without parsing them (``queries.response_xml``)."""
    parsed = queries.parse_request(request)
    with _admitted(admission, "ITI-18"), _read_session(session_factory) as session:
        result = queries.run(
            session,
            parsed,
            max_results=settings.query_max_results,
            home_community_id=settings.home_community_id,
        )
        return queries.response_xml(session, result)


def purge_expired_submissions(
    session_factory: sessionmaker[Session],
    settings: Settings,
    *,
    now: datetime,
    limit: int | None,
    dry_run: bool = False,
) -> list[purge.PurgedSubmission]:
    """Retention purge: in ONE transaction, take up to ``limit`` SubmissionSets whose expiry is at
    or before ``now`` (locked, so that a concurrent purger skips them), remove them with their
    DocumentEntries, Folders, Associations and Classifications (registry.purge), and return what
    went: patient, SubmissionSet uniqueId, each document's uniqueId and repositoryUniqueId, and
    whether any DocumentEntry still names that document. ``dry_run`` reads and reports every
    expired submission and changes nothing."""
    now = now.astimezone(UTC)  # SQLite stores times without a zone: compare in UTC, as they were written
    if dry_run:
        with _read_session(session_factory) as session:
            return purge.purge_expired(session, now, limit=limit, dry_run=True)
    with _admitted(None, "purge"), _write_transaction(session_factory, settings) as session:
        return purge.purge_expired(session, now, limit=limit)


def registered_document_unique_ids(session_factory: sessionmaker[Session], unique_ids: list[str]) -> set[str]:
    """Those of ``unique_ids`` that a registered DocumentEntry carries (for the repository's sweep
    of bytes nobody references any more)."""
    with _read_session(session_factory) as session:
        return purge.registered_unique_ids(session, unique_ids)


# --- reading the registry's contents by submission (the web console; metadata only) ---------------


@dataclass(frozen=True)
class SubmissionSummary:
    """A registered SubmissionSet: who sent it, when, how many documents and bytes it registered and
    when it is due for purging (``expires_at`` None: registered before retention was recorded)."""

    entry_uuid: str
    unique_id: str
    patient_id: str
    source_id: str
    submitted_by: str
    status: str
    registered_at: datetime
    documents: int
    total_bytes: int
    expires_at: datetime | None


def _utc(when: datetime | None) -> datetime | None:
    # SQLite gives back naive datetimes for timezone-aware columns; the registry writes UTC.
    return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def submission_summaries(
    session_factory: sessionmaker[Session], *, limit: int = 50, offset: int = 0, patient_id: str = ""
) -> tuple[int, list[SubmissionSummary]]:
    """(number of SubmissionSets, one page of them, newest registration first), optionally of one patient."""
    O, R = RegistryObjectRow, retention.RegistryRetentionRow  # noqa: N806, E741
    where = [O.object_type == "SubmissionSet"]
    if patient_id:
        where.append(O.patient_id == patient_id)
    with _read_session(session_factory) as session:
        total = session.scalar(select(func.count()).select_from(O).where(*where)) or 0
        sets = session.execute(
            select(
                O.entry_uuid,
                O.unique_id,
                O.patient_id,
                O.source_id,
                O.submitted_by,
                O.status,
                O.created_at,
                R.expires_at,
            )
            .outerjoin(R, R.submission_set_uuid == O.entry_uuid)
            .where(*where)
            .order_by(O.created_at.desc(), O.entry_uuid)
            .limit(limit)
            .offset(offset)
        ).all()
        uuids = [s.entry_uuid for s in sets]
        counts = (
            {
                r.submission_set_uuid: (r.n, r.size or 0)
                for r in session.execute(
                    select(O.submission_set_uuid, func.count().label("n"), func.sum(O.size).label("size"))
                    .where(O.object_type == "DocumentEntry", O.submission_set_uuid.in_(uuids))
                    .group_by(O.submission_set_uuid)
                )
            }
            if uuids
            else {}
        )
    return total, [
        SubmissionSummary(
            s.entry_uuid,
            s.unique_id or "",
            s.patient_id or "",
            s.source_id or "",
            s.submitted_by or "",
            s.status,
            _utc(s.created_at),
            *counts.get(s.entry_uuid, (0, 0)),
            _utc(s.expires_at),  # type: ignore[arg-type]
        )
        for s in sets
    ]


@dataclass(frozen=True)
class DocumentTotals:
    submissions: int
    documents: int
    total_bytes: int


def document_totals(session_factory: sessionmaker[Session]) -> DocumentTotals:
    """How many SubmissionSets and DocumentEntries the registry holds and the bytes those documents declare."""
    O = RegistryObjectRow  # noqa: N806, E741
    with _read_session(session_factory) as session:
        sets = session.scalar(select(func.count()).select_from(O).where(O.object_type == "SubmissionSet")) or 0
        docs, size = session.execute(
            select(func.count(), func.sum(O.size)).where(O.object_type == "DocumentEntry")
        ).one()
    return DocumentTotals(sets, docs or 0, size or 0)


def expiring_submissions(session_factory: sessionmaker[Session], until: datetime) -> list[tuple[datetime, int, int]]:
    """(expires_at, documents, bytes) of every submission due for purging before ``until`` (past-due included)."""
    O, R = RegistryObjectRow, retention.RegistryRetentionRow  # noqa: N806, E741
    with _read_session(session_factory) as session:
        rows = session.execute(
            select(R.expires_at, func.count(O.entry_uuid), func.sum(O.size))
            .outerjoin(O, (O.submission_set_uuid == R.submission_set_uuid) & (O.object_type == "DocumentEntry"))
            .where(R.expires_at < until)
            .group_by(R.submission_set_uuid, R.expires_at)
        ).all()
    return [(_utc(e), n or 0, size or 0) for e, n, size in rows]  # type: ignore[misc]
