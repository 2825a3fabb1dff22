"""The Document Registry's two entry points, independent of SOAP.

The SOAP layer hands in the body element and renders what comes back: ``register_document_set``
(ITI-42) returns nothing or raises XdsError carrying every RegistryError of the submission;
``stored_query`` (ITI-18) returns a ``query:AdhocQueryResponse`` or raises XdsError.
``error_response`` / ``success_response`` render those outcomes as ebRS responses.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from lxml import etree
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.config import Settings
from clearinghouse.db import transaction
from clearinghouse.errors import RegistryErrorItem, XDSDuplicateUniqueIdInRegistry, XdsError
from clearinghouse.registry_response import error_response, success_response
from registry import metadata as md
from registry import queries, rules, store
from registry.patients import is_known_patient

__all__ = ["error_response", "register_document_set", "stored_query", "success_response"]

log = logging.getLogger("registry")

# One retry after a unique-index collision: the second pass sees the competing registration and
# answers with the precise rule (identical resubmission accepted, XDSNonIdenticalHash, ...).
_ATTEMPTS = 2


def _register_once(session: Session, sub: md.Submission, static_errors: list[RegistryErrorItem]) -> None:
    existing = store.lookup_objects(session, store.submission_entry_ids(sub))
    registered = store.lookup_unique_ids(session, store.submission_unique_ids(sub))
    errors = static_errors + rules.validate_against_registry(
        sub, existing, registered, lambda pid: is_known_patient(session, pid)
    )
    if errors:
        raise XdsError.many(errors)
    now = datetime.now(UTC)
    resolved = md.resolve_submission(sub, md.id_mapping(sub), now=now.strftime("%Y%m%d%H%M%S"))
    store.save_submission(session, resolved, already_registered=set(registered), now=now)


def register_document_set(session_factory: sessionmaker[Session], settings: Settings, request: etree._Element) -> None:
    """ITI-42 Register Document Set-b.

    ``request`` is the ``lcm:SubmitObjectsRequest``. Validates it completely (raising one XdsError
    whose ``items`` hold every problem found), then stores it in one transaction: all objects or
    none. Symbolic ids are replaced by new urn:uuid ids, every object gets status Approved.
    Two concurrent registrations of one uniqueId are serialised by the database's unique index;
    the loser is re-validated and answered XDSDuplicateUniqueIdInRegistry / XDSNonIdenticalHash.
    """
    sub = md.parse_submission(request)
    static_errors = rules.validate_submission(sub, settings.affinity_domain_oid)
    for attempt in range(_ATTEMPTS):
        try:
            with transaction(session_factory) as session:
                _register_once(session, sub, static_errors)
            return
        except IntegrityError as exc:
            log.info("ITI-42: concurrent registration collided (attempt %d): %s", attempt + 1, exc.orig)
    raise XDSDuplicateUniqueIdInRegistry(
        "a concurrent submission registered the same uniqueId or entryUUID; resubmit if needed"
    )


def stored_query(session_factory: sessionmaker[Session], settings: Settings, request: etree._Element) -> etree._Element:
    """ITI-18 Registry Stored Query.

    ``request`` is the ``query:AdhocQueryRequest``; the answer is a ``query:AdhocQueryResponse``
    with status Success and a rim:RegistryObjectList (ObjectRefs or LeafClass objects). Problems
    with the request or too many results raise XdsError (render with ``error_response``).
    """
    with transaction(session_factory) as session:
        result = queries.execute(
            session,
            request,
            max_results=settings.query_max_results,
            home_community_id=settings.home_community_id,
        )
        return queries.success_response(queries.render_objects(session, result))
