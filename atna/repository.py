"""The Audit Record Repository's write path: receivers hand in records, the spool makes them durable,
one drainer thread moves them into the database in large hash-chained batches.

``ingest`` returns only when its records are in the spool (fdatasync): that is the moment a record
counts as received (see docs/atna.md, "Nothing lost"). The database is filled from the spool, never
from memory, so a burst larger than the database can absorb waits on disk, and a crash between
the two is repaired at the next start by draining from the last committed checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from atna import store
from atna.record import Derived, Prepared, Received, derive, derive_payloads, prepare, rebuilt, unread
from atna.spool import Position, Spool

log = logging.getLogger("atna")

BATCH_RECORDS = 5000
BATCH_BYTES = 16 * 1024 * 1024
READ_AHEAD = 3
# A batch this large means a backlog: worth parsing in worker processes (if the host has the cores).
POOL_THRESHOLD = 1000
# A batch this large means traffic: start the workers, which take seconds to start (a spawned process
# imports the application), so that they are ready when a backlog comes; until then parse here.
WARM_THRESHOLD = 100
RETRY_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
# How long the idle drainer lets new records gather before it reads them (they are already durable).
GATHER_SECONDS = 0.05


class AuditRecordRepository:
    def __init__(self, engine: Engine, spool_dir: Path, *, max_xml_depth: int = 32) -> None:
        self.engine = engine
        self.spool = Spool(spool_dir)
        self.max_xml_depth = max_xml_depth
        self.stored = 0
        self._position: Position = (1, 0)
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        # Parsing is most of the CPU per record (about twice what receiving and writing a record cost the
        # server process): under a backlog it moves to worker processes, one per core, so that the cores the
        # receivers and the writer leave idle parse too (the OS shares them out; docs/benchmarks.md, ATNA).
        cores = os.cpu_count() or 1
        self._workers = 0 if cores < 2 else min(4, cores)
        self._pool: ProcessPoolExecutor | None = None
        self._warm: Future[bytes] | None = None  # done once every worker has started

    # --- lifecycle ---

    def start(self) -> None:
        self.spool.open()
        checkpoint = store.checkpoint_of(self.engine, self.spool.spool_id)
        segments = self.spool.segments()
        self._position = checkpoint or ((segments[0], 0) if segments else (1, 0))
        behind = self.spool.durable_position() > self._position
        if behind:
            log.info("audit spool holds records not yet in the database; draining from %s", self._position)
        self._thread = threading.Thread(target=self._drain_loop, name="atna-drain", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain what is durable (bounded by ``timeout``), then stop; what is left stays in the spool."""
        self.wait_stored(timeout)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.spool.close()

    # --- write side ---

    def ingest(self, records: Sequence[Received], *, wait: bool = True) -> None:
        """Make ``records`` durable (in the spool); returns once they are on disk (``wait=False``: once
        they are written to the spool file, which survives this process being killed, the sync
        following at once in the background)."""
        if records:
            self.spool.append([r.encode() for r in records], wait=wait)

    def accept_local(self, messages: list[bytes]) -> None:
        """The built-in sink's entry point: syslog messages emitted by this process's actors, called in
        the thread of the transaction they record, before its response is sent. Written to the spool
        before returning, synced behind (docs/atna.md, "This node's own events")."""
        now = datetime.now(UTC)
        self.ingest([Received(now, "local", "", "in-process", m, len(m)) for m in messages], wait=False)

    # --- drain side ---

    @property
    def position(self) -> Position:
        return self._position

    def wait_stored(self, timeout: float) -> bool:
        """Wait until everything durable in the spool is in the database; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._position < self.spool.durable_position():
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def _drain_loop(self) -> None:
        # Batches are read ahead and parsed (in worker processes when there is a backlog) while the
        # previous batch is being written: parsing is CPU work that one interpreter cannot overlap.
        inflight: deque[tuple[Future[list[Prepared]], list[bytes], Position]] = deque()
        read_at = self._position
        failures = 0
        while not self._stopping.is_set():
            try:
                while len(inflight) < READ_AHEAD:
                    payloads, after = self.spool.read(read_at, max_records=BATCH_RECORDS, max_bytes=BATCH_BYTES)
                    if not payloads and after == read_at:
                        break
                    inflight.append((self._parse(payloads), payloads, after))
                    read_at = after
                if not inflight:
                    self.spool.release(self._position)
                    if self.spool.wait_beyond(self._position, 0.5):
                        # Records are durable in the spool already; letting a busy node's next ones gather
                        # makes one transaction of many instead of one per record (docs/benchmarks.md, PIX).
                        self._stopping.wait(GATHER_SECONDS)
                    continue
                future, payloads, after = inflight[0]
                derived = future.result()
                segment = self._position[0]
                self._store(derived, after)
                inflight.popleft()
                if after[0] != segment:
                    self.spool.release(after)  # under sustained load the drainer is never idle
                failures = 0
                if not inflight and len(payloads) < BATCH_RECORDS:
                    self._stopping.wait(GATHER_SECONDS)  # a steady trickle, not a backlog: gather it too
            except (OperationalError, DBAPIError, OSError) as exc:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.error("audit records could not be stored (%s); they stay in the spool, retry in %.1fs", exc, delay)
                self._stopping.wait(delay)
            except Exception:  # noqa: BLE001 - the drainer must survive anything; records stay in the spool
                failures += 1
                log.exception("audit drainer failed; retrying")
                inflight.clear()  # parse again from the last stored position
                read_at = self._position
                self._stopping.wait(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
        for future, _, _ in inflight:
            future.cancel()

    def _parse(self, payloads: list[bytes]) -> Future[list[Prepared]]:
        done: Future[list[Prepared]] = Future()
        if not payloads:
            done.set_result([])
            return done
        pool = self._pool_for(len(payloads))
        if pool is None:
            done.set_result([self._derive(p) for p in payloads])
            return done
        try:
            remote = pool.submit(derive_payloads, payloads, self.max_xml_depth)
        except (BrokenProcessPool, RuntimeError) as exc:
            log.warning("audit parse workers unavailable (%s); parsing in process", exc)
            self._workers = 0
            done.set_result([self._derive(p) for p in payloads])
            return done

        def attach(f: Future[bytes]) -> None:
            try:
                rows = rebuilt(f.result(), payloads)
            except BaseException:  # noqa: BLE001 - a dead worker: parse here instead
                log.warning("audit parse worker failed; parsing in process", exc_info=True)
                rows = [self._derive(p) for p in payloads]
            done.set_result(rows)

        remote.add_done_callback(attach)
        return done

    def _pool_for(self, batch: int) -> ProcessPoolExecutor | None:
        """Worker processes for a backlog, if this host has the cores: started on the first sign of
        traffic, used once they are up (a batch waiting for a starting worker would stall the drain)."""
        if self._workers <= 0 or batch < WARM_THRESHOLD:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"))
            self._warm = self._pool.submit(derive_payloads, [], self.max_xml_depth)
            log.info("audit traffic: starting %d parse worker process(es)", self._workers)
        if batch < POOL_THRESHOLD or self._warm is None or not self._warm.done():
            return None
        return self._pool

    def _advance(self, after: Position) -> None:
        with self.engine.begin() as conn:
            store.append(conn, [], (self.spool.spool_id, *after))
        with self._idle:
            self._position = after
            self._idle.notify_all()

    def _store(self, derived: list[Prepared], after: Position) -> None:
        if not derived:
            self._advance(after)
            return
        try:
            with self.engine.begin() as conn:
                store.append(conn, derived, (self.spool.spool_id, *after))
        except DBAPIError as exc:
            if isinstance(exc, OperationalError) or exc.connection_invalidated:
                raise
            # A value this database refuses (not an outage): store the batch record by record so that
            # one bad record cannot hold the others back, and store that one as raw bytes, flagged.
            log.warning("audit batch refused by the database (%s); storing record by record", exc.orig)
            with self.engine.begin() as conn:
                for d in derived:
                    with conn.begin_nested():
                        try:
                            store.append(conn, [d])
                            continue
                        except DBAPIError as one:
                            failure = one
                    store.append(conn, [_fallback(d.derived(), str(failure.orig))])
                store.append(conn, [], (self.spool.spool_id, *after))
        with self._idle:
            self.stored += len(derived)
            self._position = after
            self._idle.notify_all()

    def _derive(self, payload: bytes) -> Prepared:
        rec = Received.decode(payload)
        try:
            return prepare(derive(rec, max_xml_depth=self.max_xml_depth))
        except Exception as exc:  # noqa: BLE001 - a parser bug must not lose the record: keep the bytes
            log.exception("audit record could not be read; storing it unread")
            return prepare(unread(rec, f"the repository could not read this record: {exc}"))


def _fallback(d: Derived, reason: str) -> Derived:
    """The record with its raw bytes and receipt facts only, flagged with why it was not indexed."""
    row = dict(d.row)
    for key in ("syslog_timestamp", "syslog_hostname", "syslog_app_name", "syslog_procid", "syslog_msgid"):
        row[key] = ""
    row.update(
        {
            "event_id": "",
            "event_id_system": "",
            "event_action": "",
            "event_outcome": None,
            "event_time": None,
            "audit_source_id": "",
            "audit_site_id": "",
            "valid": False,
            "findings": f"the database refused this record's fields ({reason[:500]}); kept as raw bytes only",
        }
    )
    return Derived(row, [])
