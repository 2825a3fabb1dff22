"""The on-disk spool: an append-only, segmented journal that makes a received record durable before
the receiver reads on, and from which the database is filled at its own pace.

Each record is ``length (u32) | CRC-32 (u32) | payload``. ``append`` returns once its records are
on disk (fdatasync); concurrent appenders share one sync (group commit), so the cost of a sync is
spread over every record that arrived meanwhile. ``append(..., wait=False)`` returns once the records
are written to the file (in the kernel: they survive the process being killed) and leaves the sync to
a background syncer, which runs at once. Readers see only synced records. On ``open`` the
last segment is checked record by record and a torn tail (a write cut short by a crash, never
acknowledged) is cut off. One process owns a spool at a time (an exclusive lock on its directory).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("atna.spool")

_HEADER = struct.Struct(">II")
SEGMENT_PREFIX, SEGMENT_SUFFIX = "segment-", ".log"
MAX_RECORD = 64 * 1024 * 1024

Position = tuple[int, int]  # (segment number, byte offset)


class SpoolError(RuntimeError):
    """The spool cannot be used (locked by another process, unwritable)."""


def _segment_name(n: int) -> str:
    return f"{SEGMENT_PREFIX}{n:012d}{SEGMENT_SUFFIX}"


def _segment_number(path: Path) -> int | None:
    name = path.name
    if not (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)):
        return None
    digits = name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def encode(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def scan(data: bytes | memoryview, start: int = 0) -> tuple[list[tuple[int, bytes]], int]:
    """Whole, intact records in ``data`` from ``start``: [(offset, payload)], and where the intact part ends."""
    out = []
    pos, n = start, len(data)
    view = memoryview(data)
    while pos + _HEADER.size <= n:
        length, crc = _HEADER.unpack_from(view, pos)
        end = pos + _HEADER.size + length
        if length > MAX_RECORD or end > n:
            break
        payload = bytes(view[pos + _HEADER.size : end])
        if zlib.crc32(payload) != crc:
            break
        out.append((pos, payload))
        pos = end
    return out, pos


class Spool:
    def __init__(self, directory: Path, *, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.spool_id = ""
        self._lock = threading.Lock()  # guards the file being written and the written position
        self._sync = threading.Condition()  # guards the synced position and the leader flag
        self._fd = -1
        self._lock_fd = -1
        self._segment = 0
        self._offset = 0
        self._written = 0  # appends so far (a counter: the unit of group commit)
        self._synced = 0
        self._syncing = False
        self._durable: Position = (0, 0)
        self._closed = True
        self._dirty = threading.Event()  # written without waiting for the sync: wake the syncer
        self._syncer: threading.Thread | None = None
        self.appended_records = 0
        self.syncs = 0

    # --- lifecycle ---

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolError(f"audit spool {self.directory} is in use by another process") from exc
        id_file = self.directory / "SPOOL-ID"
        if not id_file.exists():
            tmp = id_file.with_suffix(".tmp")
            tmp.write_text(uuid.uuid4().hex)
            os.replace(tmp, id_file)
            _fsync_dir(self.directory)
        self.spool_id = id_file.read_text().strip()
        segments = self.segments()
        if segments:
            last = segments[-1]
            self._segment = last
            self._offset = self._repair(last)
        else:
            self._segment, self._offset = 1, 0
        self._fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _fsync_dir(self.directory)
        self._durable = (self._segment, self._offset)
        self._closed = False
        self._syncer = threading.Thread(target=self._sync_behind, name="atna-spool-sync", daemon=True)
        self._syncer.start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._dirty.set()
        if self._syncer is not None:
            self._syncer.join()  # it may be syncing the file about to be closed
            self._syncer = None
        with self._lock:
            if self._fd >= 0:
                os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = -1
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _path(self, n: int) -> Path:
        return self.directory / _segment_name(n)

    def segments(self) -> list[int]:
        return sorted(n for p in self.directory.iterdir() if (n := _segment_number(p)) is not None)

    def _repair(self, n: int) -> int:
        """Cut a torn tail off segment ``n``; return its intact length."""
        path = self._path(n)
        data = path.read_bytes()
        _, end = scan(data)
        if end < len(data):
            log.warning(
                "audit spool %s: discarding a torn tail of %d byte(s) at offset %d (a write cut short by a crash;"
                " never acknowledged)",
                path.name,
                len(data) - end,
                end,
            )
            with open(path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        return end

    # --- writing ---

    def append(self, payloads: Iterable[bytes], *, wait: bool = True) -> Position:
        """Write records and return once they are on disk (``wait=False``: once they are written, the
        sync following in the background); the position just past them."""
        records = [encode(p) for p in payloads]
        data = b"".join(records)
        if not data:
            return self.durable_position()
        with self._lock:
            if self._closed:
                raise SpoolError("audit spool is closed")
            _write_all(self._fd, data)
            self._offset += len(data)
            self._written += 1
            ticket = self._written
            end = (self._segment, self._offset)
            self.appended_records += len(records)
        if wait:
            self._wait_synced(ticket)
        else:
            self._dirty.set()
        return end

    def _sync_behind(self) -> None:
        """The background syncer of ``append(wait=False)``: one group commit per wake-up."""
        while True:
            self._dirty.wait()
            self._dirty.clear()
            with self._lock:
                if self._closed:
                    return
                ticket = self._written
            try:
                self._wait_synced(ticket)
            except OSError:
                log.exception("audit spool: background sync failed; retrying")
                self._dirty.set()
                threading.Event().wait(0.1)

    def _wait_synced(self, ticket: int) -> None:
        with self._sync:
            while self._synced < ticket:
                if self._syncing:
                    self._sync.wait()
                    continue
                self._syncing = True
                self._sync.release()
                try:
                    synced, position = self._sync_now()
                finally:
                    self._sync.acquire()
                    self._syncing = False
                self._synced = max(self._synced, synced)
                self._durable = max(self._durable, position)
                self.syncs += 1
                self._sync.notify_all()

    def _sync_now(self) -> tuple[int, Position]:
        """One fdatasync covering every append made so far (run by one leader at a time)."""
        with self._lock:
            fd, ticket, position = self._fd, self._written, (self._segment, self._offset)
        os.fdatasync(fd)
        if position[1] >= self.segment_bytes:
            with self._lock:
                # Appends made since the sync above went to this same file: sync them before moving on.
                os.fdatasync(self._fd)
                ticket, position = self._written, (self._segment, self._offset)
                os.close(self._fd)
                self._segment += 1
                self._offset = 0
                self._fd = os.open(self._path(self._segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                _fsync_dir(self.directory)
        return ticket, position

    # --- reading ---

    def durable_position(self) -> Position:
        with self._sync:
            return self._durable

    def wait_beyond(self, position: Position, timeout: float) -> bool:
        """Wait until records past ``position`` are durable; False on timeout."""
        with self._sync:
            if self._durable > position:
                return True
            self._sync.wait(timeout)
            return self._durable > position

    def read(self, position: Position, *, max_records: int, max_bytes: int) -> tuple[list[bytes], Position]:
        """Durable records from ``position`` on (at most the limits), and the position after them.
        Moves to the next segment when ``position`` is at the end of a finished one."""
        durable = self.durable_position()
        segment, offset = position
        while (segment, offset) < durable:
            limit = durable[1] if segment == durable[0] else None
            path = self._path(segment)
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    want = max_bytes if limit is None else min(max_bytes, limit - offset)
                    data = f.read(max(want, 0))
                    if limit is None and not data:
                        segment, offset = segment + 1, 0  # that segment is finished and fully read
                        continue
            except FileNotFoundError:
                segment, offset = segment + 1, 0
                continue
            records, end = scan(data)
            if not records and data:
                if len(data) >= max_bytes and end == 0:
                    # One record larger than max_bytes: read exactly that record.
                    length = _HEADER.unpack_from(data, 0)[0]
                    return self.read(position, max_records=max_records, max_bytes=length + _HEADER.size)
                log.error("audit spool %s: unreadable record at offset %d; skipping the segment", path.name, offset)
                segment, offset = segment + 1, 0
                continue
            records = records[:max_records]
            if records:
                last_offset, last_payload = records[-1]
                end = last_offset + _HEADER.size + len(last_payload)
            return [p for _, p in records], (segment, offset + end)
        return [], (segment, offset)

    def release(self, position: Position) -> int:
        """Delete the segments wholly before ``position`` (their records are stored elsewhere)."""
        removed = 0
        with self._lock:
            current = self._segment
        for n in self.segments():
            if n < position[0] and n < current:
                self._path(n).unlink(missing_ok=True)
                removed += 1
        return removed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
