"""MLLP (HL7 v2 Minimal Lower Layer Protocol, IHE ITI TF-2x C.2.1) over TLS: framing, a threaded
server and a small client.

A frame is ``<VT=0x0B> message <FS=0x1C><CR=0x0D>``. Peers are untrusted, so a frame is never
buffered past the configured limit, and nothing a handler does can take the server down.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from clearinghouse import hl7, logging_setup
from clearinghouse.errors import HL7Error
from clearinghouse.peer import Peer

log = logging.getLogger("clearinghouse.mllp")

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
CHUNK = 64 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# After refusing an oversized frame, how long to swallow what the peer is still sending so
# that closing does not reset the connection before the peer has read our ACK.
DRAIN_SECONDS = 2.0


class MllpFrameError(ConnectionError):
    """The byte stream is not valid MLLP (e.g. the connection ended inside a frame)."""


class MllpFrameTooLarge(MllpFrameError):
    """A frame exceeds the limit; ``prefix`` is its beginning (enough to read the MSH)."""

    def __init__(self, limit: int, prefix: bytes) -> None:
        super().__init__(f"MLLP frame exceeds the {limit}-byte limit")
        self.limit = limit
        self.prefix = prefix


def frame(message: bytes) -> bytes:
    return START_BLOCK + message + END_BLOCK


def read_frame(recv: Callable[[int], bytes], buffer: bytearray, max_bytes: int) -> bytes | None:
    """The next message from ``recv``, or None at a clean end of stream (between frames).

    ``buffer`` carries bytes already received past the previous frame; keep passing the same one.
    Bytes outside a frame (line noise, stray CR/LF) are discarded.
    """
    scan = 1  # where the end block may first occur: bytes before it were searched already
    while True:
        start = buffer.find(START_BLOCK)
        if start < 0:
            buffer.clear()
        elif start > 0:
            del buffer[:start]
            scan = 1
        if buffer:
            end = buffer.find(END_BLOCK, scan)
            if end > max_bytes + 1 or (end < 0 and _pending(buffer) > max_bytes):
                raise MllpFrameTooLarge(max_bytes, bytes(buffer[1:4097]))
            if end >= 0:
                message = bytes(buffer[1:end])
                del buffer[: end + len(END_BLOCK)]
                return message
            scan = max(1, len(buffer) - 1)
        data = recv(CHUNK)
        if not data:
            if buffer:
                raise MllpFrameError("connection closed in the middle of an MLLP frame")
            return None
        buffer += data


def _pending(buffer: bytearray) -> int:
    """Message bytes received so far in an unterminated frame (a trailing FS may be the end block)."""
    return len(buffer) - 1 - (buffer[-1:] == END_BLOCK[:1])


class FrameReader:
    """read_frame with its buffer, for one connection."""

    def __init__(self, recv: Callable[[int], bytes], max_bytes: int) -> None:
        self._recv = recv
        self._max = max_bytes
        self._buffer = bytearray()

    def read(self) -> bytes | None:
        return read_frame(self._recv, self._buffer, self._max)


class TlsStreamLike(Protocol):
    def recv(self, n: int) -> bytes: ...
    def sendall(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class ServerTLSLike(Protocol):
    def accept(self, sock: socket.socket) -> tuple[TlsStreamLike, Peer]: ...


# A handler answers with one message, several (an enhanced-mode accept acknowledgement followed by
# the application acknowledgement) or none (a message that must not be answered, such as an ACK).
Handler = Callable[[Peer, bytes], "bytes | Sequence[bytes] | None"]


class MllpServer:
    """Accepts TLS connections and answers each framed message with ``handler(peer, message)``.

    One thread per connection: feeds are few, long-lived connections from known sites.
    Subclasses speaking another framing over the same TLS listener override ``_converse``.
    """

    # Called after each answered message with (listener name, peer, address, message, response);
    # set by the composition (clearinghouse.audit_events.Auditor.hl7_message). Must not raise.
    audit_hook: Callable[[str, Peer, str, bytes, bytes], None] | None = None
    # Called for each frame refused before it reached the handler (over the size limit, cut off by the
    # connection's end, a timeout or a read error inside it) with (listener name, peer, address, reason);
    # set by the composition (clearinghouse.audit_events.Auditor.hl7_frame_refused). Must not raise.
    refusal_hook: Callable[[str, Peer, str, str], None] | None = None

    def __init__(
        self,
        host: str,
        port: int,
        tls: ServerTLSLike,
        handler: Handler,
        *,
        max_message_bytes: int,
        name: str = "mllp",
        idle_timeout: float = 300.0,
        max_connections: int = 64,
    ) -> None:
        self.host, self.name = host, name
        self._requested_port = port
        self._tls = tls
        self._handler = handler
        # Further observers of each answered message, same arguments as audit_hook (e.g. the
        # conformance recorder); each is called after audit_hook and must not raise.
        self.observers: list[Callable[[str, Peer, str, bytes, bytes], None]] = []
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        # A dup of each live connection's socket: the TLS layer owns the original, and
        # shutdown() through the dup is what wakes a thread blocked reading it (see stop()).
        self._wakers: dict[threading.Thread, socket.socket] = {}
        self._threads: set[threading.Thread] = set()
        self._accept_thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._listener is None:
            return self._requested_port
        return self._listener.getsockname()[1]

    def start(self) -> None:
        if self._listener is not None:
            raise RuntimeError(f"{self.name}: already started")
        self._listener = socket.create_server((self.host, self._requested_port), backlog=64)
        # A timeout lets the accept loop notice stop() even where closing a listening socket
        # does not interrupt accept() in another thread.
        self._listener.settimeout(0.2)
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True)
        self._accept_thread.start()
        log.info("%s: listening on %s:%d", self.name, self.host, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every live connection; wait (bounded) for their threads."""
        self._stopping.set()
        if self._listener is not None:
            _quietly(self._listener.shutdown, socket.SHUT_RDWR)  # wakes accept() at once on Linux
            _quietly(self._listener.close)
        with self._lock:
            for waker in self._wakers.values():
                _quietly(waker.shutdown, socket.SHUT_RDWR)
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for t in ([self._accept_thread] if self._accept_thread else []) + threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("%s: %d connection thread(s) still busy after stop: %s", self.name, len(stuck), stuck)
        log.info("%s: stopped", self.name)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    break
                log.warning("%s: accept failed: %s", self.name, exc)
                time.sleep(0.1)  # e.g. out of file descriptors: do not spin
                continue
            peer_addr = f"{address[0]}:{address[1]}"
            try:
                waker = sock.dup()
            except OSError as exc:
                log.warning("%s: dropping connection from %s: %s", self.name, peer_addr, exc)
                _quietly(sock.close)
                continue
            with self._lock:
                if self._stopping.is_set() or len(self._threads) >= self.max_connections:
                    log.warning(
                        "%s: refusing connection from %s: %s",
                        self.name,
                        peer_addr,
                        "stopping" if self._stopping.is_set() else "too many connections",
                    )
                    _quietly(sock.close)
                    _quietly(waker.close)
                    continue
                t = threading.Thread(
                    target=self._serve, args=(sock, peer_addr), name=f"{self.name}-{peer_addr}", daemon=True
                )
                self._threads.add(t)
                self._wakers[t] = waker
                t.start()  # under the lock, so that stop() never joins a thread not yet started

    def _serve(self, sock: socket.socket, address: str) -> None:
        me = threading.current_thread()
        stream: TlsStreamLike | None = None
        # A request id for the connection (its handshake, refusal and log lines; a syslog connection's
        # records); each HL7 message gets its own in _converse (clearinghouse.logging_setup).
        logging_setup.begin(self.name)
        try:
            sock.settimeout(self.idle_timeout)
            try:
                stream, peer = self._tls.accept(sock)
            except Exception as exc:  # noqa: BLE001 - TlsRefused is already logged by the TLS layer
                log.debug("%s: handshake with %s failed: %s", self.name, address, exc)
                return
            settimeout = getattr(stream, "settimeout", None)
            if settimeout is not None:
                settimeout(self.idle_timeout)  # the TLS layer bounds only the handshake
            log.info("%s: connection from %s, subject %r", self.name, address, peer.subject)
            self._converse(stream, peer, address)
        finally:
            _quietly(stream.close if stream is not None else sock.close)
            with self._lock:
                waker = self._wakers.pop(me, None)
                if waker is not None:
                    _quietly(waker.close)
                self._threads.discard(me)
            logging_setup.end()

    def _converse(self, stream: TlsStreamLike, peer: Peer, address: str) -> None:
        buffer = bytearray()
        while not self._stopping.is_set():
            try:
                message = read_frame(stream.recv, buffer, self.max_message_bytes)
            except MllpFrameTooLarge as exc:
                log.warning("%s: %s from %s (%r): refused, closing", self.name, exc, address, peer.subject)
                # Audited before the answer goes out, like every other refusal (docs/atna.md).
                self._refused(peer, address, f"{exc}; the message was refused unread ({_header_hint(exc.prefix)})")
                self._refuse_oversized(stream, exc)
                return
            except Exception as exc:  # noqa: BLE001 - timeouts, resets, TLS errors, truncated frames
                if self._stopping.is_set():
                    return
                reason = str(exc) or type(exc).__name__
                log.info("%s: connection from %s closed: %s", self.name, address, reason)
                if isinstance(exc, MllpFrameError) or buffer.find(START_BLOCK) >= 0:
                    # A frame was begun and never ended: whatever it carried is dropped unread and unstored.
                    pending = buffer[buffer.find(START_BLOCK) + 1 :] if buffer.find(START_BLOCK) >= 0 else b""
                    self._refused(
                        peer,
                        address,
                        f"incomplete MLLP frame ({len(pending)} bytes, no end block): {reason}; "
                        f"nothing was stored ({_header_hint(bytes(pending[:4096]))})",
                    )
                return
            if message is None:
                log.debug("%s: %s closed the connection", self.name, address)
                return
            with logging_setup.request_scope("mllp"):  # the message's request id, in logs and audit records
                response = self._dispatch(peer, message)
                frames = [response] if isinstance(response, bytes) else list(response or ())
                hooks = ([self.audit_hook] if self.audit_hook is not None else []) + self.observers
                for hook in hooks:
                    try:
                        hook(self.name, peer, address, message, frames[0] if frames else b"")
                    except Exception:  # noqa: BLE001 - auditing never fails the exchange it records
                        log.exception("%s: audit hook failed", self.name)
            try:
                stream.sendall(b"".join(frame(r) for r in frames))
            except Exception as exc:  # noqa: BLE001 - the peer went away before its answer
                log.info("%s: could not answer %s: %s", self.name, address, exc)
                return

    def _dispatch(self, peer: Peer, message: bytes) -> bytes | Sequence[bytes] | None:
        try:
            return self._handler(peer, message)
        except Exception:
            log.exception("%s: handler failed on a message from %r", self.name, peer.subject)
        error = HL7Error("internal error while processing the message", ack_code="AE", error_code="207")
        try:
            return hl7.build_ack(hl7.parse_message(message), "AE", error=error)
        except hl7.MalformedMessage as exc:
            return hl7.build_ack(exc.partial, "AE", error=error)

    def _refused(self, peer: Peer, address: str, reason: str) -> None:
        hook = self.refusal_hook
        if hook is None:
            return
        try:
            hook(self.name, peer, address, reason)
        except Exception:  # noqa: BLE001 - auditing never changes the answer
            log.exception("%s: refusal audit hook failed", self.name)

    def _refuse_oversized(self, stream: TlsStreamLike, exc: MllpFrameTooLarge) -> None:
        error = HL7Error(f"message exceeds the {exc.limit}-byte limit of this server", ack_code="AR", error_code="207")
        try:
            stream.sendall(frame(hl7.build_ack(hl7.header_of(exc.prefix), "AR", error=error)))
        except Exception:  # noqa: BLE001 - best effort: the connection is closed either way
            return
        with self._lock:
            waker = self._wakers.get(threading.current_thread())
        if waker is not None:
            _drain(waker)

    def __enter__(self) -> MllpServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _header_hint(prefix: bytes) -> str:
    """What the refused frame said it was (MSH-9 and MSH-10), for the audit record and the log."""
    try:
        msg = hl7.header_of(prefix) if prefix else None
    except Exception:  # noqa: BLE001 - hostile bytes: the hint is only a courtesy
        msg = None
    if msg is None:
        return "no readable MSH segment"
    return f"MSH-9 {msg.message_type}^{msg.trigger_event}, MSH-10 {msg.control_id!r}"


def _drain(sock: socket.socket) -> None:
    """Half-close and discard incoming bytes for a while: closing with unread data makes the
    kernel send a reset, which can destroy the ACK before the peer reads it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + DRAIN_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(CHUNK):
                return
    except OSError:
        return


def _quietly(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except OSError:
        pass


class MllpClient:
    """One MLLP connection (TLS when ``ssl_context`` is given) used for many request/response pairs."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        timeout: float = 30.0,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self._sock = ssl_context.wrap_socket(sock, server_hostname=host) if ssl_context else sock
        except BaseException:
            sock.close()
            raise
        self._reader = FrameReader(self._sock.recv, max_response_bytes)
        self._lock = threading.Lock()

    def send(self, message: bytes) -> bytes:
        """Send one message and wait for its response (serialised: MLLP has no request ids)."""
        with self._lock:
            self._sock.sendall(frame(message))
            response = self._reader.read()
        if response is None:
            raise MllpFrameError("connection closed before a response was received")
        return response

    def close(self) -> None:
        _quietly(self._sock.close)

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def send_message(
    host: str, port: int, message: bytes, ssl_context: ssl.SSLContext | None, timeout: float = 30.0
) -> bytes:
    """Send one message on a new connection and return the response."""
    with MllpClient(host, port, ssl_context, timeout) as client:
        return client.send(message)
