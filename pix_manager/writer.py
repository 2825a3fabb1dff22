"""Group commit: feed messages from many connections are stored by one thread, many to a transaction.

A feed message is acknowledged only once it is stored, so each needs a commit before its ACK; one
commit per message caps throughput at the database's commit rate. Here every item waiting when a
transaction starts joins it (the handler gets them all at once and may store them with a few
set-based statements), so eight busy connections cost roughly one commit per round, and every
caller still gets its answer only after the commit that made its change durable.

The handler returns one (value, error) per item; an item refused with a ClearinghouseError must not
have written anything, so the others in the transaction go on. Any exception the handler raises (a
database error, a conflict with another process) rolls the whole transaction back and each item is
retried alone, so one bad message never costs the others their answer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

log = logging.getLogger("pix_manager.writer")

Outcome = tuple[Any, BaseException | None]
BatchHandler = Callable[[Connection, Sequence[Any]], list[Outcome]]


class WriterStopped(RuntimeError):
    """The writer was stopped before (or while) the item could be stored."""


class _Job:
    __slots__ = ("item", "done", "value", "error", "sender")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.sender = threading.get_ident()  # the calling thread: one per connection, for the gathering
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.done.set()


class GroupCommitWriter:
    """Stores items through ``handler(connection, items)`` on one thread; see the module docstring."""

    # At most this long gathering a transaction under load: small beside a commit (a disk flush).
    linger_seconds = 0.005
    # A caller counts as active (worth waiting for) this long after its last item.
    active_seconds = 0.05

    def __init__(
        self,
        engine: Engine,
        handler: BatchHandler,
        *,
        name: str = "pix-writer",
        max_batch: int = 256,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._handler = handler
        self._name = name
        self._max_batch = max_batch
        self._after_commit = after_commit
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._conn: Connection | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
        while True:  # anything still queued will never run: say so rather than leave callers hanging
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.finish(error=WriterStopped("the PIX Manager is stopping"))

    def run(self, item: Any, timeout: float = 60.0) -> Any:
        """Store ``item`` and return the handler's value for it once its transaction has committed."""
        if self._stopping.is_set() or self._thread is None:
            raise WriterStopped("the PIX Manager is not running")
        job = _Job(item)
        self._queue.put(job)
        if not job.done.wait(timeout):
            raise TimeoutError("the database did not complete the operation in time")
        if job.error is not None:
            raise job.error
        return job.value

    def _run(self) -> None:
        recent: dict[int, float] = {}  # caller thread -> when its last item arrived here
        while True:
            job = self._queue.get()
            if job is None:
                self._close()
                return
            batch = [job]
            now = time.monotonic()
            # Under load (several callers active within the last moments) wait a little for those whose
            # answers just went out: lock-step senders come straight back, and their next items then
            # join this transaction instead of forming a second cohort that commits on its own (eight
            # senders would otherwise settle into two alternating commits of four). The wait ends once
            # every recently active caller is here, or at the deadline; a lone sender never waits.
            recent[job.sender] = now
            for sender, seen in list(recent.items()):
                if now - seen > self.active_seconds:
                    del recent[sender]
            expected = len(recent)
            deadline = now + self.linger_seconds if expected > 1 else 0.0
            while len(batch) < self._max_batch:
                left = deadline - time.monotonic() if len(batch) < expected else 0.0
                try:
                    more = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._execute(batch)
                    self._close()
                    return
                batch.append(more)
                recent[more.sender] = now
            self._execute(batch)

    def _execute(self, batch: list[_Job], *, retry_conflict: bool = True) -> None:
        try:
            # One connection kept for the writer's life: a pool checkout and reset per transaction
            # would cost more than the statements of a small batch.
            if self._conn is None or self._conn.invalidated or self._conn.closed:
                self._conn = self._engine.connect()
            with self._conn.begin():
                results = self._handler(self._conn, [job.item for job in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the caller(s), who answer AE/500
            if self._conn is not None and not self._conn.closed:
                self._conn.close()  # whatever state it is in, start afresh
            self._conn = None
            if len(batch) == 1:
                if retry_conflict and _conflict(exc):
                    # Another `serve` process on this database committed a conflicting row (the same new
                    # identifier, the same resent message) between this transaction's reads and its
                    # commit: run it once more, now seeing that row (then it links, or is a duplicate).
                    log.info("%s: conflict with a concurrent writer (%s); running again", self._name, exc)
                    self._execute(batch, retry_conflict=False)
                    return
                log.warning("%s: storing failed: %s", self._name, exc)
                batch[0].finish(error=exc)
                return
            log.info("%s: a transaction of %d items failed (%s); retrying each alone", self._name, len(batch), exc)
            for job in batch:
                self._execute([job])
            return
        for job, (value, error) in zip(batch, results, strict=True):
            job.finish(value, error)
        if self._after_commit is not None:
            try:
                self._after_commit()
            except Exception:  # noqa: BLE001 - a wake-up hook must never lose committed answers
                log.exception("%s: after-commit hook failed", self._name)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# PostgreSQL SQLSTATEs of a transaction that lost a race and may succeed when run again.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected


def _conflict(exc: BaseException) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES
