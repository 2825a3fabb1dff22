"""Mutual TLS for every listening port, and TLS contexts for clients.

Server side uses pyOpenSSL because its verification callback lets one trust policy decide
about every client certificate (CA-issued or imported, revoked, expired) during the handshake
and log each refusal with the certificate subject; the stdlib ``ssl`` module exposes neither.
Only TLS 1.2 and 1.3 with the BCP 195 (RFC 9325) AEAD cipher suites are offered.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse import participants
from clearinghouse.peer import Peer
from clearinghouse.pki import fingerprint, subject_of

log = logging.getLogger("clearinghouse.tls")

# RFC 9325 section 4.2 recommended TLS 1.2 suites (TLS 1.3 suites are OpenSSL's defaults, all AEAD).
BCP195_TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)

# Verification errors that only say "the issuer is not one of our CAs": tolerable for a
# certificate that was imported (pinned) by an administrator, fatal for anything else.
_UNTRUSTED_ISSUER_ERRORS = frozenset({2, 18, 19, 20, 21})

HANDSHAKE_TIMEOUT = 30.0


class TlsRefused(ConnectionError):
    """The TLS handshake did not complete, or the client certificate was refused (already logged)."""


@dataclass
class _HandshakeState:
    address: str
    errors: list[tuple[int, int]] = field(default_factory=list)
    participant: participants.ParticipantView | None = None
    refusal: str = ""
    subject: str = ""  # of the refused certificate, for the audit trail


class TrustPolicy:
    """Decides whether a client certificate is accepted: it must belong to a registered, unrevoked
    participant, be within its validity period, and chain to the clearinghouse CA unless the
    participant's certificate was imported (then the certificate itself is the trust anchor)."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def lookup(self, cert: x509.Certificate) -> participants.ParticipantView | None:
        with self._sessions() as session:
            return participants.find_by_fingerprint(session, fingerprint(cert))

    def judge(
        self, leaf: x509.Certificate, errors: list[tuple[int, int]]
    ) -> tuple[participants.ParticipantView | None, str]:
        """Return (participant, "") when accepted, (None, reason) when refused."""
        fatal = [(d, e) for d, e in errors if e not in _UNTRUSTED_ISSUER_ERRORS]
        if fatal:
            depth, err = fatal[0]
            return None, f"certificate verification failed at depth {depth}: {_verify_error_text(err)}"
        p = self.lookup(leaf)
        if p is None:
            if errors:
                return None, "certificate is not issued by the clearinghouse CA and not imported as a participant"
            return None, "certificate is not registered to any participant"
        if p.revoked:
            return None, f"certificate of participant {p.name!r} is revoked"
        if errors and p.origin != "imported":
            return None, f"certificate of participant {p.name!r} does not chain to the clearinghouse CA"
        return p, ""


def _verify_error_text(err: int) -> str:
    texts = {
        9: "certificate is not yet valid",
        10: "certificate has expired",
        7: "certificate signature failure",
        23: "certificate revoked",
        24: "invalid CA certificate",
        26: "unsupported certificate purpose",
    }
    return texts.get(err, f"X509 verify error {err}")


def server_context(cert_path: Path, key_path: Path) -> SSL.Context:
    """A server context with this server's identity: TLS 1.2/1.3, BCP 195 suites, no compression or
    renegotiation. Client authentication is the caller's to add."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(BCP195_TLS12_CIPHERS.encode())
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
    ctx.use_certificate_chain_file(str(cert_path))
    ctx.use_privatekey_file(str(key_path))
    ctx.check_privatekey()
    return ctx


class ServerTLS:
    """The server's TLS identity and trust policy; ``accept`` performs a handshake on an accepted socket."""

    # Called for each refused handshake with (peer address, local address, certificate subject or "",
    # reason); set by the composition (clearinghouse.audit_events.Auditor.tls_refused). Must not raise.
    audit_hook: Callable[[str, str, str, str], None] | None = None

    def __init__(self, cert_path: Path, key_path: Path, ca_path: Path, policy: TrustPolicy) -> None:
        self.policy = policy
        self._states: dict[int, _HandshakeState] = {}
        self._lock = threading.Lock()
        ctx = server_context(cert_path, key_path)
        ctx.load_verify_locations(str(ca_path))
        # No client CA list is sent, so that a site whose certificate comes from its own CA
        # (imported here) still presents it.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE, self._verify)
        ctx.set_session_id(b"isn-clearinghouse")
        self.context = ctx

    def _verify(self, conn: SSL.Connection, cert: Any, errnum: int, depth: int, ok: int) -> bool:
        state: _HandshakeState = conn.get_app_data()
        if not ok:
            state.errors.append((depth, errnum))
        if depth > 0:
            return True  # judged at the leaf, with every chain error known
        leaf = cert.to_cryptography()
        participant, reason = self.policy.judge(leaf, state.errors)
        if participant is None:
            if not state.refusal:
                state.refusal = reason
                state.subject = subject_of(leaf)
                log.warning("TLS refused: peer %s subject %r: %s", state.address, subject_of(leaf), reason)
            return False
        state.participant = participant
        return True

    def accept(self, sock: socket.socket) -> tuple[TlsStream, Peer]:
        """Handshake on an accepted TCP socket (blocking, bounded by HANDSHAKE_TIMEOUT)."""
        try:
            host, port = sock.getpeername()[:2]
            address = f"{host}:{port}"
        except OSError:
            address = "?"
        _set_kernel_timeouts(sock, HANDSHAKE_TIMEOUT)
        conn = SSL.Connection(self.context, sock)
        state = _HandshakeState(address)
        conn.set_app_data(state)
        conn.set_accept_state()
        try:
            conn.do_handshake()
        except (SSL.Error, OSError) as exc:
            reason = state.refusal
            if not state.refusal:
                reason = _handshake_failure(exc)
                log.warning("TLS refused: peer %s: %s", address, reason)
            if state.refusal or not _closed_before_hello(exc):
                self._audit_refusal(address, sock, state.subject, reason)
            _close_quietly(conn, sock)
            raise TlsRefused(state.refusal or str(exc)) from exc
        finally:
            conn.set_app_data(None)
        leaf = conn.get_peer_certificate()
        if leaf is None or state.participant is None:
            self._audit_refusal(address, sock, state.subject, "no client certificate")
            _close_quietly(conn, sock)
            raise TlsRefused("no client certificate")
        leaf_crypto = leaf.to_cryptography()
        p = state.participant
        peer = Peer(subject_of(leaf_crypto), fingerprint(leaf_crypto), p.name, p.roles)
        return TlsStream(conn, sock, address), peer

    def _audit_refusal(self, address: str, sock: socket.socket, subject: str, reason: str) -> None:
        hook = self.audit_hook
        if hook is None:
            return
        try:
            host, port = sock.getsockname()[:2]
            hook(address, f"{host}:{port}", subject, reason)
        except Exception:  # noqa: BLE001 - auditing never changes how a connection is handled
            log.exception("TLS refusal audit hook failed")


class BrowserTLS:
    """TLS for people's browsers (the web console): the server authenticates itself with its
    certificate, the client presents none; who is on the other end is settled by signing in.
    ``accept`` has ServerTLS's shape and answers no peer."""

    audit_hook: Callable[[str, str, str, str], None] | None = None

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.context = server_context(cert_path, key_path)
        self.context.set_session_id(b"isn-clearinghouse-console")

    def accept(self, sock: socket.socket) -> tuple[TlsStream, None]:
        try:
            host, port = sock.getpeername()[:2]
            address = f"{host}:{port}"
        except OSError:
            address = "?"
        _set_kernel_timeouts(sock, HANDSHAKE_TIMEOUT)
        conn = SSL.Connection(self.context, sock)
        conn.set_accept_state()
        try:
            conn.do_handshake()
        except (SSL.Error, OSError) as exc:
            # Browsers abandon handshakes routinely (an untrusted certificate, a speculative
            # connection): worth a debug line, not a security alert.
            log.debug("console TLS handshake with %s failed: %s", address, _handshake_failure(exc))
            _close_quietly(conn, sock)
            raise TlsRefused(str(exc)) from exc
        return TlsStream(conn, sock, address), None


def _closed_before_hello(exc: BaseException) -> bool:
    """A connection closed before any TLS was spoken (a port probe, a listener waking itself): not an
    authentication attempt, so not a security alert."""
    return isinstance(exc, SSL.SysCallError) and bool(exc.args) and exc.args[0] in (-1, 104)


def _handshake_failure(exc: BaseException) -> str:
    if isinstance(exc, SSL.WantReadError):
        return "TLS handshake timed out"
    text = str(exc)
    if "http request" in text:
        return "plain HTTP sent to a TLS port"
    if "peer did not return a certificate" in text or "certificate required" in text:
        return "no client certificate presented"
    if "unsupported protocol" in text or "wrong version" in text:
        return "TLS version not allowed (TLS 1.2 or 1.3 required)"
    if "no shared cipher" in text:
        return "no shared cipher suite (BCP 195 suites required)"
    return f"TLS handshake failed: {text or exc.__class__.__name__}"


def _set_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    # pyOpenSSL on a non-blocking socket makes callers poll; a blocking socket with kernel
    # timeouts keeps reads efficient and still bounds how long a silent peer holds a thread.
    sock.setblocking(True)
    secs = int(seconds)
    usecs = int((seconds - secs) * 1_000_000)
    tv = struct.pack("ll", secs, usecs)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def _close_quietly(conn: SSL.Connection, sock: socket.socket) -> None:
    try:
        conn.shutdown()
    except Exception:  # noqa: BLE001 - the peer may already be gone; nothing to report
        pass
    sock.close()


def _is_abrupt_close(exc: SSL.Error) -> bool:
    # A peer that closes the TCP connection without a TLS close_notify (common among HTTP
    # clients once they have their response) surfaces as an empty error or "unexpected eof".
    return not exc.args or not exc.args[0] or "unexpected eof" in str(exc).lower()


class TlsStream:
    """A blocking byte stream over an established TLS connection."""

    def __init__(self, conn: SSL.Connection, sock: socket.socket, address: str) -> None:
        self.conn = conn
        self.sock = sock
        self.address = address

    def settimeout(self, seconds: float) -> None:
        _set_kernel_timeouts(self.sock, seconds)

    def recv(self, n: int) -> bytes:
        try:
            return self.conn.recv(n)
        except SSL.ZeroReturnError:
            return b""
        except SSL.WantReadError as exc:
            raise TimeoutError("TLS read timed out") from exc
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] in (-1, 104, 32):  # unexpected EOF, reset, broken pipe
                return b""
            raise ConnectionError(str(exc)) from exc
        except SSL.Error as exc:
            if _is_abrupt_close(exc):
                return b""
            raise ConnectionError(str(exc)) from exc

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0) -> int:
        try:
            return self.conn.recv_into(buffer, nbytes or None)
        except SSL.ZeroReturnError:
            return 0
        except SSL.WantReadError as exc:
            raise TimeoutError("TLS read timed out") from exc
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] in (-1, 104, 32):
                return 0
            raise ConnectionError(str(exc)) from exc
        except SSL.Error as exc:
            if _is_abrupt_close(exc):
                return 0
            raise ConnectionError(str(exc)) from exc

    def send(self, data: bytes | memoryview) -> int:
        try:
            return self.conn.send(data)
        except SSL.WantWriteError as exc:
            raise TimeoutError("TLS write timed out") from exc
        except SSL.Error as exc:
            raise ConnectionError(str(exc)) from exc

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self.send(bytes(view[: 1 << 16]))
            view = view[sent:]

    def close(self) -> None:
        _close_quietly(self.conn, self.sock)


def client_context(
    ca_path: Path | str, cert_path: Path | str | None = None, key_path: Path | str | None = None
) -> ssl.SSLContext:
    """A stdlib client context for talking to a clearinghouse (tests, simulators, remote registry)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(str(ca_path))
    if cert_path:
        ctx.load_cert_chain(str(cert_path), str(key_path) if key_path else None)
    return ctx
