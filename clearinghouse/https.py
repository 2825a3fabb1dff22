"""The HTTPS listener: cheroot's WSGI server with the clearinghouse's mutual TLS.

cheroot streams request bodies (``wsgi.input`` reads from the socket as the application asks),
which the MTOM codec relies on to keep multi-gigabyte submissions out of memory.
"""

from __future__ import annotations

import _pyio
import logging
import threading
from collections.abc import Callable
from typing import Any

from cheroot import errors as cheroot_errors
from cheroot import wsgi
from cheroot.makefile import StreamReader, StreamWriter
from cheroot.ssl import Adapter

from clearinghouse.tls import BrowserTLS, ServerTLS, TlsRefused, TlsStream

log = logging.getLogger("clearinghouse.https")

PEER_ENVIRON_KEY = "clearinghouse.peer"

# One TLS record carries at most 16 KiB of plaintext, so a single recv never returns more; larger
# buffers would only be allocated (and, by _pyio, zeroed) for nothing on every record.
_MAX_RECV = 64 * 1024


class _TlsRawIO(_pyio.RawIOBase):
    def __init__(self, stream: TlsStream) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        # _pyio's RawIOBase.read allocates and zeroes a bytearray of ``size`` (1 MiB when the MTOM
        # parser reads) for each TLS record of <= 16 KiB; pyOpenSSL allocates another one.
        if size is None or size < 0:
            return self.readall()
        return self._stream.recv(min(size, _MAX_RECV))

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        return self._stream.recv_into(view, min(len(view), _MAX_RECV))

    def write(self, b: Any) -> int:
        # pyOpenSSL takes any buffer: no copy (SSL_write sends one record and reports its length).
        return self._stream.send(b)


class _Reader(StreamReader):
    def __init__(self, stream: TlsStream, bufsize: int) -> None:  # noqa: D107
        _pyio.BufferedReader.__init__(self, _TlsRawIO(stream), bufsize)
        self.bytes_read = 0


class _Writer(StreamWriter):
    def __init__(self, stream: TlsStream, bufsize: int) -> None:  # noqa: D107
        _pyio.BufferedWriter.__init__(self, _TlsRawIO(stream), bufsize)
        self.bytes_written = 0

    def _flush_unlocked(self) -> None:
        # cheroot's version sends bytes(whole buffer) and drops what went out: with partial TLS
        # writes of 16 KiB that copies a 1 MiB MTOM chunk 64 times. Send slices of a view instead.
        self._checkClosed("flush of closed file")
        sent = 0
        with memoryview(self._write_buf) as view:
            try:
                while sent < len(view):
                    with view[sent:] as rest:
                        sent += self.raw.write(rest)
            except _pyio.BlockingIOError as exc:
                sent += exc.characters_written
        del self._write_buf[:sent]


class _SocketFacade:
    """What cheroot expects of an accepted connection, backed by a TlsStream."""

    def __init__(self, stream: TlsStream) -> None:
        self.stream = stream

    def fileno(self) -> int:
        return self.stream.sock.fileno()

    def settimeout(self, seconds: float | None) -> None:
        self.stream.settimeout(seconds or 0)

    def gettimeout(self) -> float | None:
        return None

    def getpeername(self) -> Any:
        return self.stream.sock.getpeername()

    def getsockname(self) -> Any:
        return self.stream.sock.getsockname()

    def recv(self, n: int) -> bytes:
        return self.stream.recv(n)

    def sendall(self, data: bytes) -> None:
        self.stream.sendall(data)

    def send(self, data: bytes) -> int:
        return self.stream.send(data)

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        self.stream.close()


class MutualTlsAdapter(Adapter):
    """A cheroot SSL adapter delegating the handshake and client authentication to ServerTLS."""

    def __init__(self, tls: ServerTLS | BrowserTLS) -> None:
        super().__init__("", "")
        self.tls = tls

    def bind(self, sock: Any) -> Any:
        return sock

    def wrap(self, sock: Any) -> tuple[Any, dict[str, Any]]:
        try:
            stream, peer = self.tls.accept(sock)
        except TlsRefused as exc:
            raise cheroot_errors.FatalSSLAlert(str(exc)) from exc
        env = self.get_environ()
        if peer is None:  # server authentication only (clearinghouse.tls.BrowserTLS)
            return _SocketFacade(stream), env
        env[PEER_ENVIRON_KEY] = peer
        env["SSL_CLIENT_S_DN"] = peer.subject
        env["SSL_CLIENT_VERIFY"] = "SUCCESS"
        return _SocketFacade(stream), env

    def get_environ(self) -> dict[str, Any]:
        return {"wsgi.url_scheme": "https", "HTTPS": "on"}

    def makefile(self, sock: Any, mode: str = "r", bufsize: int = -1) -> Any:
        size = bufsize if bufsize and bufsize > 0 else 64 * 1024
        if "r" in mode:
            return _Reader(sock.stream, size)
        return _Writer(sock.stream, size)


class _Server(wsgi.Server):
    def error_log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        # Refused handshakes are already logged (with the certificate subject) by the trust policy;
        # cheroot's own report of the dropped connection is detail for debugging only.
        log.log(logging.DEBUG if level < logging.ERROR else level, "%s", msg, exc_info=traceback)


class HttpsServer:
    """A threaded HTTPS server for one WSGI application, started and stopped from the outside."""

    def __init__(
        self,
        host: str,
        port: int,
        app: Callable[..., Any],
        tls: ServerTLS | BrowserTLS,
        *,
        threads: int = 16,
        max_request_bytes: int = 0,
    ) -> None:
        self.server = _Server(
            (host, port),
            app,
            numthreads=threads,
            server_name="isn-clearinghouse",
            max=-1,
            request_queue_size=64,
            timeout=60,
            shutdown_timeout=5,
            accepted_queue_timeout=5,
        )
        self.server.ssl_adapter = MutualTlsAdapter(tls)
        self.server.max_request_body_size = max_request_bytes
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.server.prepare()
        self._thread = threading.Thread(target=self.server.serve, name="https", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server.bind_addr[1]

    def stop(self) -> None:
        self.server.stop()
        if self._thread:
            self._thread.join(timeout=10)
