"""Configuration of the PIX Manager (domains, subscriptions) and the dead-letter list, as the CLI
and the running server use them. Every configuration change bumps ``pix_config_state.version`` in
the same transaction, which is how a running server learns to reload (see ConfigCache)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Row, delete, func, insert, select, update

from pix_manager.identifiers import Domain, PixConfig, Subscription
from pix_manager.models import (
    ACTIVE,
    DEAD,
    PENDING,
    PixConfigState,
    PixDomain,
    PixIdentifier,
    PixOutbox,
    PixPatient,
    PixSubscription,
)

D = PixDomain.__table__
S = PixSubscription.__table__
O = PixOutbox.__table__  # noqa: E741
V = PixConfigState.__table__

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The destination name of the registry in the outbox; subscription names cannot start with "@".
REGISTRY_DESTINATION = "@registry"


class PixAdminError(ValueError):
    """A configuration request that cannot be done; the message says why."""


def _bump(conn: Connection) -> None:
    conn.execute(update(V).where(V.c.id == 1).values(version=V.c.version + 1))


# Read at every feed transaction (ConfigCache): built once, as building it cost more than running it.
_SELECT_VERSION = select(V.c.version).where(V.c.id == 1)


def config_version(conn: Connection) -> int:
    return int(conn.execute(_SELECT_VERSION).scalar_one())


def load_config(conn: Connection) -> PixConfig:
    version = config_version(conn)
    domains = tuple(
        Domain(r.id, r.oid, r.namespace, r.source, r.description)
        for r in conn.execute(select(D.c.id, D.c.oid, D.c.namespace, D.c.source, D.c.description).order_by(D.c.id))
    )
    subs = tuple(
        Subscription(r.id, r.name, r.url, frozenset(r.domains.split()), r.ca_file)
        for r in conn.execute(select(S.c.id, S.c.name, S.c.url, S.c.domains, S.c.ca_file).order_by(S.c.id))
    )
    return PixConfig(version, domains, subs)


class ConfigCache:
    """The current PixConfig, reloaded when the stored version moves (one small query per use)."""

    def __init__(self) -> None:
        self._config: PixConfig | None = None
        self._lock = threading.Lock()

    def get(self, conn: Connection) -> PixConfig:
        current = self._config
        if current is not None and current.version == config_version(conn):
            return current
        with self._lock:
            fresh = load_config(conn)
            self._config = fresh
            return fresh


def check_oid(oid: str) -> str:
    if not _OID.fullmatch(oid) or len(oid) > 64:
        raise PixAdminError(f"{oid!r} is not an ISO OID (digits and dots, at most 64 characters)")
    return oid


def set_domain(
    conn: Connection, oid: str, namespace: str, *, source: str | None = None, description: str = ""
) -> Domain:
    """Add a domain, or change the namespace, source or description of the one with this OID."""
    check_oid(oid)
    if not _NAME.fullmatch(namespace):
        raise PixAdminError(f"namespace {namespace!r}: use 1-64 letters, digits, '.', '_' or '-'")
    clash = conn.execute(select(D.c.oid).where(D.c.namespace == namespace, D.c.oid != oid)).first()
    if clash is not None:
        raise PixAdminError(f"namespace {namespace!r} already names domain {clash.oid}")
    existing = conn.execute(select(D.c.id).where(D.c.oid == oid)).first()
    values = {"namespace": namespace, "source": source or None, "description": description}
    if existing is None:
        conn.execute(insert(D).values(oid=oid, created_at=datetime.now(UTC), **values))
    else:
        conn.execute(update(D).where(D.c.id == existing.id).values(**values))
    _bump(conn)
    r = conn.execute(select(D).where(D.c.oid == oid)).one()
    return Domain(r.id, r.oid, r.namespace, r.source, r.description)


def ensure_domain(conn: Connection, oid: str, namespace: str, *, description: str = "") -> None:
    """Create the domain unless one with this OID exists (used for the affinity domain at start)."""
    if conn.execute(select(D.c.id).where(D.c.oid == oid)).first() is None:
        taken = conn.execute(select(D.c.id).where(D.c.namespace == namespace)).first() is not None
        set_domain(conn, oid, f"{namespace}-{oid}"[:64] if taken else namespace, description=description)


def list_domains(conn: Connection) -> list[Domain]:
    return list(load_config(conn).domains)


def check_url(url: str) -> tuple[str, int]:
    """mllp+tls://host:port (ITI-10 is always sent over TLS, with this server's certificate)."""
    parts = urlsplit(url)
    if parts.scheme != "mllp+tls" or not parts.hostname or parts.path not in ("", "/"):
        raise PixAdminError(f"{url!r}: use mllp+tls://HOST:PORT")
    try:
        port = parts.port
    except ValueError as exc:
        raise PixAdminError(f"{url!r}: {exc}") from None
    if port is None:
        raise PixAdminError(f"{url!r}: the port is required")
    return parts.hostname, port


def subscribe(conn: Connection, name: str, url: str, domains: list[str], *, ca_file: str = "") -> Subscription:
    """Add (or replace) a consumer's subscription to ITI-10 notifications for ``domains`` (OIDs or
    namespaces of configured domains; none: every domain)."""
    if not _NAME.fullmatch(name):
        raise PixAdminError(f"subscription name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    check_url(url)
    config = load_config(conn)
    oids = []
    for d in domains:
        domain = config.by_oid.get(d) or config.by_namespace.get(d)
        if domain is None:
            raise PixAdminError(f"{d!r} is not a configured domain (see 'clearinghouse pix domains list')")
        oids.append(domain.oid)
    values = {"url": url, "domains": " ".join(dict.fromkeys(oids)), "ca_file": ca_file}
    if conn.execute(select(S.c.id).where(S.c.name == name)).first() is None:
        conn.execute(insert(S).values(name=name, created_at=datetime.now(UTC), **values))
    else:
        conn.execute(update(S).where(S.c.name == name).values(**values))
    _bump(conn)
    return next(s for s in load_config(conn).subscriptions if s.name == name)


def unsubscribe(conn: Connection, name: str) -> None:
    if conn.execute(delete(S).where(S.c.name == name)).rowcount == 0:
        raise PixAdminError(f"no subscription named {name!r}")
    _bump(conn)


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    destination: str
    transaction: str
    message: bytes
    status: str
    attempts: int
    last_error: str
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None = None


def _entry(r: Row[Any]) -> OutboxEntry:
    return OutboxEntry(
        r.id,
        r.destination,
        r.transaction,
        r.message,
        r.status,
        r.attempts,
        r.last_error,
        r.created_at,
        r.next_attempt_at,
        r.delivered_at,
    )


def dead_letters(conn: Connection) -> list[OutboxEntry]:
    return [_entry(r) for r in conn.execute(select(O).where(O.c.status == DEAD).order_by(O.c.id))]


def outbox(conn: Connection, status: str | None = None) -> list[OutboxEntry]:
    stmt = select(O).order_by(O.c.id)
    if status:
        stmt = stmt.where(O.c.status == status)
    return [_entry(r) for r in conn.execute(stmt)]


def replay(conn: Connection, entry_id: int) -> OutboxEntry:
    """Put a dead letter back in the queue: delivered as soon as the notifier next looks."""
    row = conn.execute(select(O).where(O.c.id == entry_id)).first()
    if row is None:
        raise PixAdminError(f"no outbox entry {entry_id}")
    if row.status != DEAD:
        raise PixAdminError(f"outbox entry {entry_id} is {row.status}, not a dead letter")
    conn.execute(
        update(O)
        .where(O.c.id == entry_id)
        .values(status=PENDING, attempts=0, next_attempt_at=datetime.now(UTC), last_error="")
    )
    return _entry(conn.execute(select(O).where(O.c.id == entry_id)).one())


@dataclass(frozen=True)
class CrossReference:
    """One person: every identifier linked to it, (namespace, OID, value, status) with the retired
    (merged) ones last."""

    patient_id: int
    identifiers: tuple[tuple[str, str, str, str], ...]
    updated_at: datetime


def cross_references(
    conn: Connection, *, identifier: str = "", limit: int = 50, offset: int = 0
) -> tuple[int, list[CrossReference]]:
    """(number of persons, one page of them, most recently changed first); with ``identifier``, only
    the persons holding an identifier of that value (in any domain)."""
    ident, person = PixIdentifier.__table__, PixPatient.__table__
    persons = select(person.c.id, person.c.updated_at).where(person.c.status == ACTIVE)
    if identifier:
        persons = persons.where(person.c.id.in_(select(ident.c.patient_id).where(ident.c.value == identifier)))
    total = conn.execute(select(func.count()).select_from(persons.subquery())).scalar_one()
    page = conn.execute(persons.order_by(person.c.updated_at.desc(), person.c.id.desc()).limit(limit).offset(offset))
    rows = page.all()
    found: dict[int, list[tuple[str, str, str, str]]] = {r.id: [] for r in rows}
    if found:
        for r in conn.execute(
            select(ident.c.patient_id, D.c.namespace, D.c.oid, ident.c.value, ident.c.status)
            .join(D, D.c.id == ident.c.domain_id)
            .where(ident.c.patient_id.in_(list(found)))
            .order_by(ident.c.status, D.c.namespace, ident.c.value)
        ):
            found[r.patient_id].append((r.namespace, r.oid, r.value, r.status))
    return total, [
        CrossReference(r.id, tuple(found[r.id]), r.updated_at.replace(tzinfo=r.updated_at.tzinfo or UTC)) for r in rows
    ]
