"""ITI-20 Record Audit Event receivers: syslog over TLS (RFC 5425) and over UDP (RFC 5426).

TLS: the clearinghouse's mutual TLS listener (``clearinghouse.mllp.MllpServer`` with its accept loop,
per-connection threads and clean stop), speaking octet-counted syslog instead of MLLP. Whatever was
read from a connection is made durable before the next bytes are read from it, and before the
connection is closed (with a TLS close_notify) when the sender ends it: a sender that closes and
waits for our close_notify knows every record it sent is stored.

UDP: one datagram is one message; datagrams waiting in the socket buffer are taken together and
made durable in one spool write. UDP has no flow control: a sender that outruns the buffer loses
datagrams in the kernel, which is why ITI-20 recommends TLS.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from atna.record import Received
from atna.repository import AuditRecordRepository
from atna.syslog import FrameSplitter
from clearinghouse.mllp import MllpServer, ServerTLSLike, TlsStreamLike
from clearinghouse.peer import Peer

log = logging.getLogger("atna.receivers")

READ_CHUNK = 64 * 1024
GATHER_BYTES = 1024 * 1024  # read at most this much before making it durable
UDP_MAX = 65535
UDP_BATCH = 2000


def _no_responses(peer: Peer, message: bytes) -> bytes:
    """Syslog has no responses; this listener's ``_converse`` never calls the MLLP handler."""
    raise RuntimeError("the syslog listener does not answer messages")


class SyslogTlsServer(MllpServer):
    def __init__(
        self,
        host: str,
        port: int,
        tls: ServerTLSLike,
        repository: AuditRecordRepository,
        *,
        max_message_bytes: int,
        idle_timeout: float = 3600.0,
        max_connections: int = 256,
    ) -> None:
        super().__init__(
            host,
            port,
            tls,
            _no_responses,
            max_message_bytes=max_message_bytes,
            name="syslog-tls",
            idle_timeout=idle_timeout,
            max_connections=max_connections,
        )
        self.repository = repository
        self.tls = tls
        self.received = 0
        # Called with (peer, records) once records of a connection are durable (e.g. the conformance
        # recorder, which judges what a participant audits). Must not raise.
        self.observers: list[Callable[[Peer, list[Received]], None]] = []

    def _converse(self, stream: TlsStreamLike, peer: Peer, address: str) -> None:
        splitter = FrameSplitter(self.max_message_bytes)
        host = address.rsplit(":", 1)[0]
        subject = peer.subject
        while True:
            data, ended = _gather(stream)
            now = datetime.now(UTC)
            frames = splitter.feed(data) if data else []
            records = [Received(now, "tls", host, subject, f.data, f.declared_length, f.broken) for f in frames]
            if ended or splitter.broken:
                tail = splitter.close()
                if tail is not None:
                    note = "the connection ended inside a syslog frame"
                    records.append(Received(now, "tls", host, subject, tail.data, tail.declared_length, note))
            if records:
                try:
                    self.repository.ingest(records)
                except Exception:
                    # Not durable: reset the connection rather than close it politely, so that a sender
                    # waiting for our close_notify does not take its records as stored.
                    log.exception(
                        "syslog-tls: %d record(s) from %s could not be spooled; resetting", len(records), address
                    )
                    _abort(stream)
                    return
                self.received += len(records)
                for observer in self.observers:
                    try:
                        observer(peer, records)
                    except Exception:  # noqa: BLE001 - an observer never costs a stored record
                        log.exception("syslog-tls: observer failed")
            if splitter.broken:
                log.warning(
                    "syslog-tls: %s (%r) broke RFC 5425 framing; stored what it sent, closing", address, subject
                )
                return
            if ended:
                return


def _abort(stream: TlsStreamLike) -> None:
    sock = getattr(stream, "sock", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def _gather(stream: TlsStreamLike) -> tuple[bytes, bool]:
    """Read what has arrived (blocking for the first bytes only), up to GATHER_BYTES; (data, ended)."""
    chunks: list[bytes] = []
    total = 0
    conn = getattr(stream, "conn", None)
    sock = getattr(stream, "sock", None)
    while total < GATHER_BYTES:
        try:
            chunk = stream.recv(READ_CHUNK)
        except Exception as exc:  # noqa: BLE001 - timeouts, resets, TLS errors all end the connection
            log.info("syslog-tls: connection closed: %s", exc or type(exc).__name__)
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        total += len(chunk)
        if conn is None or sock is None:
            break
        if conn.pending() <= 0:
            try:
                readable, _, _ = select.select([sock], [], [], 0)
            except (OSError, ValueError):
                break
            if not readable:
                break
    return b"".join(chunks), False


class SyslogUdpServer:
    def __init__(self, host: str, port: int, repository: AuditRecordRepository, *, max_message_bytes: int) -> None:
        self.host = host
        self._requested_port = port
        self.repository = repository
        self.max_message_bytes = max_message_bytes
        self.received = 0
        self._sock: socket.socket | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1] if self._sock is not None else self._requested_port

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        except OSError:
            pass
        sock.bind((self.host, self._requested_port))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._loop, name="syslog-udp", daemon=True)
        self._thread.start()
        log.info("syslog-udp: listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()

    def _loop(self) -> None:
        assert self._sock is not None
        sock = self._sock
        while not self._stopping.is_set():
            batch: list[Received] = []
            try:
                data, addr = sock.recvfrom(UDP_MAX)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                log.warning("syslog-udp: receive failed: %s", exc)
                continue
            now = datetime.now(UTC)
            batch.append(self._record(now, data, addr))
            sock.setblocking(False)
            try:
                while len(batch) < UDP_BATCH:
                    data, addr = sock.recvfrom(UDP_MAX)
                    batch.append(self._record(now, data, addr))
            except (BlockingIOError, InterruptedError):
                pass
            finally:
                sock.settimeout(0.2)
            try:
                self.repository.ingest(batch)
                self.received += len(batch)
            except Exception:  # noqa: BLE001 - nothing to answer on UDP; the failure is logged loudly
                log.exception("syslog-udp: %d datagram(s) could not be spooled", len(batch))

    def _record(self, now: datetime, data: bytes, addr: tuple) -> Received:
        kept = data[: self.max_message_bytes]
        return Received(now, "udp", str(addr[0]), "", kept, len(data))
