"""Delivery of what the PIX Manager tells others: ITI-10 PIX Update Notifications to subscribed
consumers and the ITI-8 merges it forwards to the registry.

Messages are written to the outbox in the transaction that made the change (so a change is never
reported without having happened, nor lost after it happened), then delivered by one background
thread: in order per destination, over MLLP/TLS with this server's certificate (or in process to
the local registry), retried with exponential backoff, and after the configured number of failures
(or at once on AR/CR, which a resend cannot cure) kept as dead letters for an administrator to
see and replay (``clearinghouse pix dead-letters``).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Row, delete, insert, select, update

from clearinghouse import hl7
from clearinghouse.mllp import MllpClient
from clearinghouse.peer import Peer
from clearinghouse.tls import client_context
from pix_manager.admin import REGISTRY_DESTINATION, ConfigCache, check_url
from pix_manager.identifiers import Identifier, PixConfig, Subscription
from pix_manager.models import DEAD, DELIVERED, PENDING, PixMessage, PixOutbox
from pix_manager.xref import Change

log = logging.getLogger("pix_manager.notify")

O = PixOutbox.__table__  # noqa: E741
M = PixMessage.__table__
POLL_SECONDS = 1.0  # picks up replays and retries even when nothing wakes the notifier
ROUND_SECONDS = 0.2  # the shortest time between two delivery rounds
MAX_BACKOFF_SECONDS = 600.0
PURGE_EVERY_SECONDS = 600.0
ITI10, ITI8 = "ITI-10", "ITI-8"


def plan_notifications(config: PixConfig, change: Change) -> list[tuple[Subscription, list[Identifier]]]:
    """Which subscribers must hear of ``change``, and with which identifiers: those in the
    subscriber's domains of interest, when that set differs from what each person involved had
    before (ITI TF-2a 3.10.4.1.1: a change in the cross-references of an identifier it cares about)."""
    out = []
    for sub in config.subscriptions:

        def visible(ids: Iterable[Identifier], sub: Subscription = sub) -> frozenset[Identifier]:
            return frozenset(i for i in ids if sub.wants(config.by_id[i.domain_id].oid))

        after = visible(change.after)
        if after and all(visible(b) != after for b in change.before):
            out.append((sub, sorted(after)))
    return out


def outbox_row(destination: str, transaction: str, message: bytes, now: datetime | None = None) -> dict[str, object]:
    now = now or datetime.now(UTC)
    return {
        "destination": destination,
        "transaction": transaction,
        "message": message,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "last_error": "",
        "created_at": now,
    }


_INSERT_OUTBOX = insert(O)


def enqueue(conn: Connection, destination: str, transaction: str, message: bytes) -> None:
    enqueue_rows(conn, [outbox_row(destination, transaction, message)])


def enqueue_rows(conn: Connection, rows: list[dict[str, object]]) -> None:
    """Outbox rows (``outbox_row``) in one statement, in order: ids follow the list."""
    if rows:
        conn.execute(_INSERT_OUTBOX, rows)


class Link(Protocol):
    """Where one destination's messages go: ``send`` returns the peer's acknowledgement."""

    def send(self, message: bytes) -> bytes: ...
    def close(self) -> None: ...


class MllpLink:
    """MLLP over TLS, connecting on first use and again after any failure."""

    def __init__(self, url: str, context: ssl.SSLContext, timeout: float = 30.0) -> None:
        self.host, self.port = check_url(url)
        self.context, self.timeout = context, timeout
        self._client: MllpClient | None = None

    def send(self, message: bytes) -> bytes:
        if self._client is None:
            self._client = MllpClient(self.host, self.port, self.context, self.timeout)
        try:
            return self._client.send(message)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# Stores a leading run of the messages, as many as it can, and says how many (each one accepted, AA).
BatchHandler = Callable[[Peer, Sequence[bytes]], int]
BATCH_SIZE = 200  # messages handed to a batch handler at once


class InProcessLink:
    """An MLLP handler of this process (the registry's ITI-8 feed), called as the given peer: the same
    message and acknowledgement as over a socket, without one. With ``batch`` (the registry's
    ``handle_registrations``) a run of messages is handled in one call and one transaction: it
    accepts a leading run of them, and ``send`` answers the one that ended the run."""

    def __init__(self, handler: Callable[[Peer, bytes], bytes], peer: Peer, batch: BatchHandler | None = None) -> None:
        self.handler, self.peer, self.batch = handler, peer, batch

    def send(self, message: bytes) -> bytes:
        return self.handler(self.peer, message)

    def send_batch(self, messages: Sequence[bytes]) -> int:
        """How many of the leading ``messages`` were accepted."""
        return self.batch(self.peer, messages) if self.batch is not None and len(messages) > 1 else 0

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ClientIdentity:
    """The certificate this server presents when it is the client, and the CA it trusts by default."""

    cert: str
    key: str
    ca: str

    def context(self, ca_file: str = "") -> ssl.SSLContext:
        return client_context(ca_file or self.ca, self.cert, self.key)


class Delivered(Protocol):
    def __call__(self, destination: str, transaction: str, message: bytes, outcome: str, error: str) -> None: ...


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)  # SQLite drops the zone


def _verdict(response: bytes) -> tuple[str, str]:
    """('delivered' | 'retry' | 'dead', error text) from an acknowledgement."""
    try:
        ack = hl7.parse_message(response)
    except hl7.MalformedMessage as exc:
        return "retry", f"unreadable acknowledgement: {exc}"
    code = ack.get("MSA", 1)
    text = ack.get("ERR", 8) or ack.get("MSA", 3) or ack.get("ERR", 1, 4, subcomponent=2)
    if code in ("AA", "CA"):
        return "delivered", ""
    detail = f"{code or 'no MSA-1'}{': ' + text if text else ''}"
    if code in ("AR", "CR"):
        return "dead", detail
    # An AE that blames the message itself (HL7 table 0357: 100-205, e.g. 102 data type error) will be
    # refused again on every retry, and each retry holds back the destination's later messages, which
    # are delivered in order. Only an AE without a code, or record locked (206) / internal error (207),
    # is worth retrying.
    error_code = ack.get("ERR", 3) or ack.get("ERR", 1, 4)  # v2.5 ERR-3.1; v2.3.1 ERR-1.4.1
    if error_code.isdigit() and 100 <= int(error_code) <= 205:
        return "dead", detail
    return "retry", detail


class Notifier:
    """The outbox's delivery thread (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        config: ConfigCache,
        identity: ClientIdentity,
        registry_link: Link,
        *,
        max_attempts: int,
        retry_base_seconds: float,
        keep_messages: timedelta,
        on_attempt: Delivered | None = None,
    ) -> None:
        self._engine = engine
        self._config = config
        self._identity = identity
        self._registry = registry_link
        self.max_attempts = max(1, max_attempts)
        self.retry_base = max(0.001, retry_base_seconds)
        self.keep_messages = keep_messages
        self._on_attempt = on_attempt
        self._links: dict[str, tuple[str, str, MllpLink]] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_purge = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pix-notifier", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for _url, _ca, link in self._links.values():
            link.close()
        self._registry.close()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            started = time.monotonic()
            try:
                delay = self.deliver_due()
                if time.monotonic() - self._last_purge > PURGE_EVERY_SECONDS:
                    self._last_purge = time.monotonic()
                    self.purge()
            except Exception:  # noqa: BLE001 - e.g. the database is briefly unreachable: try again later
                log.exception("PIX notifier round failed")
                delay = POLL_SECONDS
            self._wake.wait(min(POLL_SECONDS, delay) if delay is not None else POLL_SECONDS)
            # Rounds are at least ROUND_SECONDS apart: a busy feed commits every few milliseconds, and
            # what those commits queued is then delivered in one round (the registry's registrations
            # in one transaction) instead of one round, and one commit on each side, per message.
            rest = ROUND_SECONDS - (time.monotonic() - started)
            if rest > 0:
                self._stopping.wait(rest)

    def deliver_due(self) -> float | None:
        """Deliver every pending message that is due; the seconds until the next retry, if any."""
        with self._engine.connect() as conn:
            config = self._config.get(conn)
            rows = conn.execute(
                select(O.c.id, O.c.destination, O.c.transaction, O.c.message, O.c.attempts, O.c.next_attempt_at)
                .where(O.c.status == PENDING)
                .order_by(O.c.id)
                .limit(1000)
            ).all()
        by_destination: dict[str, list[Row[Any]]] = {}
        for r in rows:
            by_destination.setdefault(r.destination, []).append(r)
        next_due: float | None = None
        for queue in by_destination.values():
            i = 0
            while i < len(queue):
                r = queue[i]
                wait = (_aware(r.next_attempt_at) - datetime.now(UTC)).total_seconds()
                if wait > 0:  # in order: nothing behind a message that waits for its retry goes first
                    next_due = wait if next_due is None else min(next_due, wait)
                    break
                if self._stopping.is_set():
                    return None
                due = [q for q in queue[i : i + BATCH_SIZE] if _aware(q.next_attempt_at) <= datetime.now(UTC)]
                if len(due) > 1 and (delivered := self._attempt_batch(config, due)):
                    i += delivered
                    continue
                retry_in = self._attempt(config, r)
                if retry_in is not None:
                    next_due = retry_in if next_due is None else min(next_due, retry_in)
                    break
                i += 1
        return next_due

    def _attempt_batch(self, config: PixConfig, rows: list[Row[Any]]) -> int:
        """Deliver a leading run of ``rows`` in one call when the destination's link takes batches (the
        in-process registry): one transaction there and one status update here for the whole run
        instead of one of each per message. Returns how many were delivered; what is left (the message
        that ended the run, or everything when the link takes no batches) goes through ``_attempt``."""
        try:
            link = self._link(config, rows[0].destination)
        except LookupError:  # a removed subscription: _attempt makes its messages dead letters
            return 0
        send_batch = getattr(link, "send_batch", None)
        if send_batch is None:
            return 0
        with self._engine.begin() as conn:
            # The same claim as _attempt (several processes may share the outbox), for the whole run.
            claimed = {
                c.id: c.attempts
                for c in conn.execute(
                    select(O.c.id, O.c.attempts)
                    .where(O.c.id.in_([r.id for r in rows]), O.c.status == PENDING)
                    .with_for_update(skip_locked=True)
                )
            }
            run = []
            for r in rows:
                if claimed.get(r.id) != r.attempts:
                    break
                run.append(r)
            if len(run) < 2:
                return 0
            try:
                accepted = send_batch([r.message for r in run])
            except Exception:  # noqa: BLE001 - the messages go one by one instead, with their own errors
                log.exception("PIX outbox: batch delivery to %s failed", run[0].destination)
                return 0
            delivered = run[: max(0, accepted)]
            if delivered:
                conn.execute(
                    update(O)
                    .where(O.c.id.in_([r.id for r in delivered]))
                    .values(status=DELIVERED, delivered_at=datetime.now(UTC), attempts=O.c.attempts + 1, last_error="")
                )
        if self._on_attempt is not None:
            for r in delivered:
                try:
                    self._on_attempt(r.destination, r.transaction, r.message, "delivered", "")
                except Exception:  # noqa: BLE001 - auditing never changes the delivery it records
                    log.exception("PIX delivery hook failed")
        return len(delivered)

    def _link(self, config: PixConfig, destination: str) -> Link:
        if destination == REGISTRY_DESTINATION:
            return self._registry
        sub = next((s for s in config.subscriptions if s.name == destination), None)
        if sub is None:
            raise LookupError(f"no subscription named {destination!r} (it was removed)")
        cached = self._links.get(destination)
        if cached is None or cached[:2] != (sub.url, sub.ca_file):
            if cached is not None:
                cached[2].close()
            cached = (sub.url, sub.ca_file, MllpLink(sub.url, self._identity.context(sub.ca_file)))
            self._links[destination] = cached
        return cached[2]

    def _attempt(self, config: PixConfig, row: Row[Any]) -> float | None:
        """One delivery attempt; the seconds until its retry when this destination must wait."""
        destination, message = row.destination, row.message
        # Several `serve` processes share one outbox (docs/operations.md). An attempt holds a row lock on
        # its message from before the send until its outcome is committed; a message another process
        # holds, or attempted since this round read it, is skipped rather than sent twice, and its
        # destination waits for the next round, which keeps each destination's messages in order.
        # (SQLite has no row locks; it serves one process.)
        with self._engine.begin() as conn:
            claimed = conn.execute(
                select(O.c.id)
                .where(O.c.id == row.id, O.c.status == PENDING, O.c.attempts == row.attempts)
                .with_for_update(skip_locked=True)
            ).first()
            if claimed is None:
                return POLL_SECONDS
            try:
                verdict, error = _verdict(self._link(config, destination).send(message))
            except LookupError as exc:
                verdict, error = "dead", str(exc)
            except Exception as exc:  # noqa: BLE001 - refused, unreachable, TLS failure, timeout: retry later
                verdict, error = "retry", f"{type(exc).__name__}: {exc}"
            attempts = row.attempts + 1
            now = datetime.now(UTC)
            if verdict == "retry" and attempts >= self.max_attempts:
                verdict = "dead"
            values: dict[str, object] = {"attempts": attempts, "last_error": error[:4000]}
            if verdict == "delivered":
                values.update(status=DELIVERED, delivered_at=now)
            elif verdict == "dead":
                values.update(status=DEAD)
                log.warning(
                    "PIX outbox %d to %s is a dead letter after %d attempt(s): %s", row.id, destination, attempts, error
                )
            backoff = min(MAX_BACKOFF_SECONDS, self.retry_base * 2 ** (attempts - 1))
            if verdict == "retry":
                values.update(next_attempt_at=now + timedelta(seconds=backoff))
                log.info(
                    "PIX outbox %d to %s failed (attempt %d), retry in %.3fs: %s",
                    row.id,
                    destination,
                    attempts,
                    backoff,
                    error,
                )
            conn.execute(update(O).where(O.c.id == row.id).values(**values))
        if self._on_attempt is not None:
            try:
                self._on_attempt(destination, row.transaction, message, verdict, error)
            except Exception:  # noqa: BLE001 - auditing never changes the delivery it records
                log.exception("PIX delivery hook failed")
        return backoff if verdict == "retry" else None

    def purge(self) -> None:
        """Forget accepted messages and delivered notifications older than the duplicate window."""
        cutoff = datetime.now(UTC) - self.keep_messages
        with self._engine.begin() as conn:
            conn.execute(delete(M).where(M.c.received_at < cutoff))
            conn.execute(delete(O).where(O.c.status == DELIVERED, O.c.delivered_at < cutoff))
