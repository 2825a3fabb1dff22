"""The PIX Manager's core, shared by its three front ends (HL7 v2 over MLLP, HL7 v3 over SOAP, PIXm):
identity feeds and merges through the group-commit writer, with duplicate control, ITI-10
notifications and registry forwarding in the same transaction; and cross-reference queries."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, bindparam, insert, select, tuple_

from clearinghouse.config import Settings
from clearinghouse.errors import (
    PixDuplicateControlId,
    PixError,
    PixInvalidField,
    PixMissingField,
    PixUnknownDomain,
    PixUnknownTargetDomain,
)
from clearinghouse.peer import Peer
from pix_manager import admin, messages, xref
from pix_manager.admin import REGISTRY_DESTINATION, ConfigCache
from pix_manager.identifiers import (
    Identifier,
    PixConfig,
    RawIdentifier,
    check_value,
    resolve_all,
    resolve_domain,
)
from pix_manager.models import PixMessage
from pix_manager.notify import (
    ITI8,
    ITI10,
    ClientIdentity,
    Delivered,
    Link,
    Notifier,
    enqueue,
    enqueue_rows,
    outbox_row,
    plan_notifications,
)
from pix_manager.writer import GroupCommitWriter

log = logging.getLogger("pix_manager")

M = PixMessage.__table__
_SELECT_SEEN = select(M.c.digest, M.c.response).where(
    M.c.sender == bindparam("sender"), M.c.control_id == bindparam("control_id")
)
_INSERT_SEEN = insert(M)
_SELECT_SEEN_MANY = select(M.c.sender, M.c.control_id, M.c.digest, M.c.response).where(
    tuple_(M.c.sender, M.c.control_id).in_(bindparam("keys", expanding=True))
)
AFFINITY_NAMESPACE = "ISN"  # namespace given to the affinity domain when the PIX Manager first meets it
AFFINITY_DESCRIPTION = "XDS affinity domain (RSNA-IDs)"


@dataclass(frozen=True)
class MessageKey:
    """Identifies a message for duplicate control: the same sender and control id is the same message."""

    sender: str
    control_id: str
    digest: str
    transaction: str
    location: str = "MSH^1^10"  # where the control id is, for the error when it is reused


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


@dataclass(frozen=True)
class LinkRequest:
    """A source says these identifiers are one patient (A01/A04/A05/A08, PRPA_IN201301/302).
    ``others`` are linked only when their assigning authority is a configured domain (HL7 v3
    asOtherIDs, which also carry identifiers such as a national insurance number)."""

    identifiers: Sequence[RawIdentifier]
    others: Sequence[RawIdentifier] = ()
    event: str = "A04"  # the HL7 v2 trigger event (A01, A04, A05, A08), passed on to the registry


@dataclass(frozen=True)
class MergeRequest:
    """A source merged each ``prior`` identifier (MRG-1, priorRegisteredRole) into the ``surviving``
    identifier of the same domain (PID-3, patient.id): A40, PRPA_IN201304."""

    surviving: Sequence[RawIdentifier]
    prior: Sequence[RawIdentifier]


@dataclass(frozen=True)
class UnlinkRequest:
    """A source says two lists of identifiers, earlier linked, are not the same patient (A37, first
    and second PID-3): the second list leaves the person, the first stays with it."""

    first: Sequence[RawIdentifier]
    second: Sequence[RawIdentifier]


@dataclass(frozen=True)
class RemoveRequest:
    """A source removed a patient (ITI-104 Remove Patient): every reference to the identifier goes."""

    identifier: RawIdentifier


@dataclass
class Applied:
    response: bytes
    duplicate: bool
    identifiers: list[Identifier] = field(default_factory=list)
    changed: bool = False


@dataclass
class QueryAnswer:
    """A query's outcome: the queried identifier resolved, what corresponds to it (itself
    excluded), or the errors that make the answer AE (ITI-9 cases 3-5)."""

    config: PixConfig
    identifiers: list[Identifier] = field(default_factory=list)
    errors: list[PixError] = field(default_factory=list)
    queried: Identifier | None = None


@dataclass(frozen=True)
class _Feed:
    peer: Peer
    request: LinkRequest | MergeRequest | UnlinkRequest | RemoveRequest
    key: MessageKey | None
    response: bytes


def _seen_row(key: MessageKey, response: bytes) -> dict[str, object]:
    return {
        "sender": key.sender,
        "control_id": key.control_id,
        "digest": key.digest,
        "transaction": key.transaction,
        "response": response,
        "received_at": datetime.now(UTC),
    }


def _seen(conn: Connection, keys: Sequence[MessageKey]) -> dict[tuple[str, str], tuple[str, bytes]]:
    """Messages already accepted, by (sender, control id): their digest and the answer they got."""
    if not keys:
        return {}
    if len(keys) == 1:
        (key,) = keys
        row = conn.execute(_SELECT_SEEN, {"sender": key.sender, "control_id": key.control_id}).first()
        return {} if row is None else {(key.sender, key.control_id): (row.digest, row.response)}
    rows = conn.execute(_SELECT_SEEN_MANY, {"keys": sorted({(k.sender, k.control_id) for k in keys})}).all()
    return {(r.sender, r.control_id): (r.digest, r.response) for r in rows}


class _NewPatients:
    """New patients gathered from a transaction's messages, written together (see _apply_batch)."""

    def __init__(self) -> None:
        self.patients: list[list[Identifier]] = []
        self.seen_rows: list[dict[str, object]] = []
        self.outbox_rows: list[dict[str, object]] = []

    def add(
        self, identifiers: list[Identifier], key: MessageKey | None, response: bytes, registry: bytes | None
    ) -> None:
        self.patients.append(identifiers)
        if key is not None:
            self.seen_rows.append(_seen_row(key, response))
        if registry is not None:
            self.outbox_rows.append(outbox_row(REGISTRY_DESTINATION, ITI8, registry))

    def write(self, conn: Connection) -> bool:
        """Write what was gathered; True when it queued messages for the registry."""
        if self.patients:
            xref.create_patients(conn, self.patients)
        if self.seen_rows:
            conn.execute(_INSERT_SEEN, self.seen_rows)
        enqueue_rows(conn, self.outbox_rows)
        queued = bool(self.outbox_rows)
        self.patients, self.seen_rows, self.outbox_rows = [], [], []
        return queued


class PixManager:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        registry_link: Link,
        *,
        on_delivery: Delivered | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.config_cache = ConfigCache()
        self.notifier = Notifier(
            engine,
            self.config_cache,
            ClientIdentity(
                settings.client_cert or str(settings.server_cert_path),
                settings.client_key or str(settings.server_key_path),
                str(settings.ca_cert_path),
            ),
            registry_link,
            max_attempts=settings.pix_notify_max_attempts,
            retry_base_seconds=settings.pix_notify_retry_ms / 1000,
            keep_messages=timedelta(hours=settings.pix_duplicate_window_hours),
            on_attempt=on_delivery,
        )
        # Whether the writer's current transaction wrote to the outbox (then the notifier is woken);
        # only the writer's thread uses it.
        self._enqueued = False
        self.writer = GroupCommitWriter(engine, self._apply_batch, after_commit=self._after_batch)

    def start(self) -> None:
        with self.engine.begin() as conn:
            admin.ensure_domain(
                conn,
                self.settings.affinity_domain_oid,
                AFFINITY_NAMESPACE,
                description=AFFINITY_DESCRIPTION,
            )
        self.writer.start()
        self.notifier.start()

    def stop(self) -> None:
        self.writer.stop()
        self.notifier.stop()

    def config(self, conn: Connection) -> PixConfig:
        return self.config_cache.get(conn)

    def _after_batch(self) -> None:
        if self._enqueued:
            self.notifier.wake()

    def _enqueue(self, conn: Connection, destination: str, transaction: str, message: bytes) -> None:
        enqueue(conn, destination, transaction, message)
        self._enqueued = True

    # --- feeds (ITI-8, ITI-44) ---

    def apply(
        self,
        peer: Peer,
        request: LinkRequest | MergeRequest | UnlinkRequest | RemoveRequest,
        *,
        key: MessageKey | None,
        response: bytes,
    ) -> Applied:
        """Store a feed message through the group-commit writer and return its stored answer.

        ``response`` is the answer to give (and to keep for a resend of the same message) if the
        message is stored; it is built by the caller, outside the writer's serial path. Refusals
        raise PixError and store nothing, so a corrected resend with the same control id is judged
        afresh.
        """
        return self.writer.run(_Feed(peer, request, key, response))

    def _apply_batch(self, conn: Connection, feeds: Sequence[_Feed]) -> list[tuple[Applied | None, PixError | None]]:
        """The writer's handler: every feed message waiting, in arrival order, in one transaction.

        The common case, a patient none of whose identifiers is known yet, is gathered and written
        with three set-based inserts; anything else (an update, a link to known identifiers, a merge,
        notifications to plan) first writes what was gathered, then runs on its own, so each message
        sees the effect of every message before it.
        """
        config = self.config_cache.get(conn)
        self._enqueued = False
        want_sets = bool(config.subscriptions)
        seen = _seen(conn, [f.key for f in feeds if f.key is not None])
        resolved: list[tuple[list[Identifier], dict[Identifier, str]] | PixError | None] = []
        for f in feeds:
            try:
                resolved.append(
                    self._resolve_link(config, f.peer, f.request) if isinstance(f.request, LinkRequest) else None
                )
            except PixError as exc:
                resolved.append(exc)
        known = set(xref.existing(conn, [i for r in resolved if isinstance(r, tuple) for i in r[0]]))
        pending = _NewPatients()
        results: list[tuple[Applied | None, PixError | None]] = []
        for f, res in zip(feeds, resolved, strict=True):
            try:
                if f.key is not None and (stored := seen.get((f.key.sender, f.key.control_id))) is not None:
                    if stored[0] != f.key.digest:
                        raise PixDuplicateControlId(
                            f"message control id {f.key.control_id!r} was already used by this sender for "
                            "another message",
                            location=f.key.location,
                        )
                    results.append((Applied(stored[1], True), None))
                    continue
                if isinstance(res, PixError):
                    raise res
                if res is not None and not want_sets and known.isdisjoint(res[0]):
                    applied = Applied(f.response, False, res[0], True)
                    assert isinstance(f.request, LinkRequest)
                    pending.add(res[0], f.key, applied.response, self._registration(config, f.request, res[0]))
                else:
                    # What is gathered goes first: this message may depend on it.
                    self._enqueued |= pending.write(conn)
                    applied = self._apply_one(conn, config, f, res, want_sets)
                known.update(applied.identifiers)
                if f.key is not None:
                    seen[(f.key.sender, f.key.control_id)] = (f.key.digest, applied.response)
                results.append((applied, None))
            except PixError as exc:
                results.append((None, exc))
        self._enqueued |= pending.write(conn)
        return results

    def _registration(self, config: PixConfig, request: LinkRequest, new: Sequence[Identifier]) -> bytes | None:
        """The ITI-8 feed that makes the registry know the affinity-domain identifiers among ``new``
        (those this message added): documents may then be registered for them (ITI TF-2a 3.8.4.1.3:
        the registry accepts documents only for patients the feed made known). Identifiers of other
        domains never reach the registry; identifiers already known were already fed to it."""
        affinity = config.by_oid.get(self.settings.affinity_domain_oid)
        if affinity is None:
            return None
        values = [i.value for i in new if i.domain_id == affinity.id]
        return messages.registry_register(affinity, values, event=request.event) if values else None

    def _apply_one(
        self,
        conn: Connection,
        config: PixConfig,
        feed: _Feed,
        resolved: tuple[list[Identifier], dict[Identifier, str]] | None,
        want_sets: bool,
    ) -> Applied:
        if resolved is not None:
            assert isinstance(feed.request, LinkRequest)
            idents, locations = resolved
            change = xref.link(conn, idents, locations, want_sets=want_sets)
            changes = [change]
            touched = idents
            if (registration := self._registration(config, feed.request, change.added)) is not None:
                self._enqueue(conn, REGISTRY_DESTINATION, ITI8, registration)
        elif isinstance(feed.request, UnlinkRequest):
            changes, touched = self._unlink(conn, config, feed.peer, feed.request, want_sets)
        elif isinstance(feed.request, RemoveRequest):
            changes, touched = self._remove(conn, config, feed.peer, feed.request, want_sets)
        else:
            assert isinstance(feed.request, MergeRequest)
            changes, touched = self._merge(conn, config, feed.peer, feed.request, want_sets)
        for change in changes:
            for sub, identifiers in plan_notifications(config, change):
                notification = messages.update_notification(config, identifiers, receiving=(sub.name, ""))
                self._enqueue(conn, sub.name, ITI10, notification)
        response = feed.response
        if feed.key is not None:
            conn.execute(_INSERT_SEEN, [_seen_row(feed.key, response)])
        return Applied(response, False, touched, any(c.changed for c in changes))

    def _resolve_link(
        self, config: PixConfig, peer: Peer, request: LinkRequest
    ) -> tuple[list[Identifier], dict[Identifier, str]]:
        if not request.identifiers:
            raise PixMissingField("no patient identifier was given", location="PID^1^3")
        locations: dict[Identifier, str] = {}
        for raw in request.identifiers:
            (ident,) = resolve_all(config, [raw], source_participant=peer.participant, check_sources=True)
            locations.setdefault(ident, raw.location)
        for raw in request.others:
            if raw.authority.universal_id in config.by_oid:
                (ident,) = resolve_all(config, [raw], source_participant=peer.participant, check_sources=True)
                locations.setdefault(ident, raw.location)
        return list(locations), locations

    def _merge(
        self, conn: Connection, config: PixConfig, peer: Peer, request: MergeRequest, want_sets: bool
    ) -> tuple[list[xref.Change], list[Identifier]]:
        source = peer.participant
        where: dict[Identifier, RawIdentifier] = {}
        for raw in request.surviving:
            (ident,) = resolve_all(config, [raw], source_participant=source, check_sources=True)
            where.setdefault(ident, raw)
        survivors = list(where)
        plans = []
        touched: list[Identifier] = []
        for prior_raw in request.prior:
            (prior,) = resolve_all(config, [prior_raw], source_participant=source, check_sources=True)
            surviving = next((s for s in survivors if s.domain_id == prior.domain_id), None)
            if surviving is None:
                raise PixInvalidField(
                    "the surviving identifiers (PID-3) have none in the domain of the prior one (MRG-1)",
                    location=prior_raw.where_authority,
                )
            touched += [surviving, prior]
            plan = xref.prepare_merge(
                conn, surviving, prior, surviving_location=where[surviving].location, prior_location=prior_raw.location
            )
            if plan is not None and all(p.prior != plan.prior for p in plans):
                plans.append(plan)
        if not request.prior:
            raise PixMissingField("the prior identifier (MRG-1) is missing", location="MRG^1^1")
        changes = []
        affinity = config.by_oid.get(self.settings.affinity_domain_oid)
        for plan in plans:
            changes.append(xref.apply_merge(conn, plan, want_sets=want_sets))
            if affinity is not None and plan.surviving.domain_id == affinity.id:
                # The registry files documents under affinity-domain identifiers: it must merge too
                # (ITI TF-2a 3.8.4.2.4). It learns of the prior first, so the merge cannot fail on an
                # identifier the registry was never fed; registering a known one changes nothing there.
                self._enqueue(
                    conn, REGISTRY_DESTINATION, ITI8, messages.registry_register(affinity, [plan.prior.value])
                )
                self._enqueue(
                    conn,
                    REGISTRY_DESTINATION,
                    ITI8,
                    messages.registry_merge(affinity, plan.surviving.value, plan.prior.value),
                )
        return changes, touched

    def _unlink(
        self, conn: Connection, config: PixConfig, peer: Peer, request: UnlinkRequest, want_sets: bool
    ) -> tuple[list[xref.Change], list[Identifier]]:
        """A37: the registry is not told. It holds no links between identifiers, only merges (which an
        unlink does not undo), so its patient identity is the same before and after."""
        source = peer.participant
        lists: list[dict[Identifier, str]] = []
        for raws in (request.first, request.second):
            found: dict[Identifier, str] = {}
            for raw in raws:
                (ident,) = resolve_all(config, [raw], source_participant=source, check_sources=True)
                found.setdefault(ident, raw.location)
            lists.append(found)
        first, second = lists
        changes = xref.unlink(conn, first, second, want_sets=want_sets)
        return changes, [*first, *second]

    def _remove(
        self, conn: Connection, config: PixConfig, peer: Peer, request: RemoveRequest, want_sets: bool
    ) -> tuple[list[xref.Change], list[Identifier]]:
        """ITI-104 Remove Patient. The registry is not told: ITI-8 has no removal, and documents filed
        under an affinity-domain identifier stay until their retention ends."""
        raw = request.identifier
        (ident,) = resolve_all(config, [raw], source_participant=peer.participant, check_sources=True)
        change = xref.remove(conn, ident, want_sets=want_sets)
        return ([change] if change is not None else []), [ident]

    # --- queries (ITI-9, ITI-45, ITI-83) ---

    def query(self, source: RawIdentifier, targets: Sequence[RawIdentifier] = ()) -> QueryAnswer:
        """The identifiers cross-referenced with ``source``, restricted to the ``targets`` domains
        when any are given (ITI TF-2a 3.9.4.2.2.6). Errors are returned, not raised: a query
        answer carries them (one per unknown requested domain)."""
        with self.engine.connect() as conn:
            config = self.config_cache.get(conn)
            answer = QueryAnswer(config)
            try:
                value = check_value(source.value, location=source.location)
                domain = resolve_domain(config, source.authority, location=source.where_authority)
            except PixError as exc:
                answer.errors.append(exc)
                return answer
            wanted: set[int] = set()
            for t in targets:
                try:
                    if t.value:
                        raise PixInvalidField(
                            "a requested domain carries only an assigning authority", location=t.location
                        )
                    wanted.add(resolve_domain(config, t.authority, location=t.where_authority).id)
                except PixUnknownDomain as exc:
                    answer.errors.append(PixUnknownTargetDomain(exc.text, location=t.where_authority))
                except PixError as exc:
                    answer.errors.append(exc)
            if answer.errors:
                return answer
            answer.queried = Identifier(domain.id, value)
            try:
                found = xref.corresponding(conn, answer.queried, location=source.location)
            except PixError as exc:
                answer.errors.append(exc)
                return answer
        answer.identifiers = sorted(i for i in found if not wanted or i.domain_id in wanted)
        return answer
