"""This node's audit events on their way to an external Audit Record Repository: written to a local
on-disk outbox (an ``atna.spool.Spool``) in the thread of the transaction they record, before its
response is sent, then sent over TLS syslog by one forwarder thread that reconnects with back-off.

The outbox keeps what has been sent as a checkpoint file (``SENT``: segment and offset, replaced
atomically after each batch), so after a crash or restart the forwarder resumes from there: an event
is sent at least once, never lost; one in flight when the process died may be sent twice. RFC 5425
has no application acknowledgement, so "sent" means written to the TLS connection without error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from atna.spool import Position, Spool
from clearinghouse.audit import AuditMessage, AuditNode, SyslogTlsConnection, emitted_message

log = logging.getLogger("atna.outbox")

BATCH_RECORDS = 1000
BATCH_BYTES = 4 * 1024 * 1024
RETRY_MIN, RETRY_MAX = 0.05, 5.0


class OutboxSink:
    """An ``AuditSink`` (``emit`` never blocks on the network and never raises) with the counters and
    ``flush``/``close`` of ``clearinghouse.audit.QueuedSink``."""

    def __init__(self, directory: Path, connection: SyslogTlsConnection, node: AuditNode) -> None:
        self.node = node
        self.connection = connection
        self.spool = Spool(directory)
        self.spool.open()
        self.delivered = 0
        self.dropped = 0
        self._emitted = 0
        self._checkpoint = directory / "SENT"
        self._position = self._load_checkpoint()
        self._backlog = self._count_from(self._position)
        if self._backlog:
            log.info("audit outbox holds %d event(s) not yet sent to %s", self._backlog, connection.host)
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._forward, name="audit-outbox", daemon=True)
        self._thread.start()

    # --- the sink ---

    def emit(self, message: bytes | AuditMessage) -> None:
        try:
            data = emitted_message(message, self.node)
            self.spool.append([data], wait=False)
            with self._cond:
                self._emitted += 1
        except Exception:  # noqa: BLE001 - auditing must never break the transaction it records
            self.dropped += 1
            log.exception("audit event could not be written to the outbox")

    @property
    def pending(self) -> int:
        """Events in the outbox not yet sent."""
        with self._cond:
            return self._backlog + self._emitted - self.delivered

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event emitted so far is sent; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._backlog + self._emitted - self.delivered > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Send what can be sent within ``timeout``; the rest stays in the outbox for the next start."""
        self.flush(timeout)
        self._stopping.set()
        self._thread.join(timeout)
        self.connection.close()
        self.spool.close()

    # --- the forwarder ---

    def _forward(self) -> None:
        delay = RETRY_MIN
        while not self._stopping.is_set():
            payloads, after = self.spool.read(self._position, max_records=BATCH_RECORDS, max_bytes=BATCH_BYTES)
            if not payloads:
                if after != self._position:  # moved past a finished segment
                    self._advance(after, 0)
                self.spool.release(self._position)
                self.spool.wait_beyond(self._position, 0.2)
                continue
            try:
                self.connection.send(payloads)
            except Exception as exc:  # noqa: BLE001 - kept in the outbox; sent again after a pause
                log.warning(
                    "audit events could not be sent to %s (%s); retrying in %.2fs", self.connection.host, exc, delay
                )
                self._stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            self._advance(after, len(payloads))

    def _advance(self, after: Position, sent: int) -> None:
        tmp = self._checkpoint.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(f"{self.spool.spool_id} {after[0]} {after[1]}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._checkpoint)
        with self._cond:
            self._position = after
            self.delivered += sent
            self._cond.notify_all()

    def _load_checkpoint(self) -> Position:
        try:
            spool_id, segment, offset = self._checkpoint.read_text().split()
            if spool_id == self.spool.spool_id:
                return int(segment), int(offset)
        except (OSError, ValueError):
            pass
        segments = self.spool.segments()
        return (segments[0], 0) if segments else (1, 0)

    def _count_from(self, position: Position) -> int:
        n = 0
        while True:
            payloads, after = self.spool.read(position, max_records=100_000, max_bytes=64 * 1024 * 1024)
            if not payloads and after == position:
                return n
            n += len(payloads)
            position = after
