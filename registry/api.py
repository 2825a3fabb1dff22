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
from datetime import UTC, datetime

from lxml import etree
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

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
from registry import queries, remove, rules, store, update
from registry.admission import Admission, resource_error
from registry.patients import is_known_patient

__all__ = [
    "Admission",
    "delete_document_set",
    "error_response",
    "register_document_set",
    "stored_query",
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
    session: Session, sub: md.Submission, static_errors: list[RegistryErrorItem], submitter: str | None
) -> None:
    existing = store.lookup_objects(session, store.submission_entry_ids(sub))
    registered = store.lookup_unique_ids(session, store.submission_unique_ids(sub))
    errors = static_errors + rules.validate_against_registry(
        sub, existing, registered, lambda pid: is_known_patient(session, pid)
    )
    if errors:
        raise XdsError.many(errors)
    now = datetime.now(UTC)
    resolved = md.resolve_submission(sub, md.id_mapping(sub), now=store.stamp(now))
    store.save_submission(session, resolved, already_registered=set(registered), now=now, submitted_by=submitter)


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
                    _register_once(session, sub, static_errors, owner)
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
                    update.apply_update(
                        session, sub, plan, static_errors, participant=participant, now=datetime.now(UTC)
                    )
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
    """
    parsed = queries.parse_request(request)
    with _admitted(admission, "ITI-18"), _read_session(session_factory) as session:
        result = queries.run(
            session,
            parsed,
            max_results=settings.query_max_results,
            home_community_id=settings.home_community_id,
        )
        return queries.success_response(queries.render_objects(session, result))
