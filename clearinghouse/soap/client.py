"""A SOAP 1.2 client for the clearinghouse's own transactions: the repository's ITI-42 to the
registry, the test edge and PHR, and the simulators. Two transports, one interface: HTTPS with
a client certificate, or a WSGI application called in process (the same messages, no socket).
"""

from __future__ import annotations

import http.client
import io
import ssl
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from lxml import etree

from clearinghouse.https import PEER_ENVIRON_KEY
from clearinghouse.peer import Peer
from clearinghouse.soap import envelope as soapenv
from clearinghouse.soap.mtom import MtomMessage, MtomWriter, parse_multipart_related
from clearinghouse.xmlsafe import parse_xml

MAX_RESPONSE_ENVELOPE = 256 * 1024 * 1024


class SoapClientError(RuntimeError):
    """The peer answered with something other than a SOAP response (or a SOAP Fault)."""


class SoapFault(SoapClientError):
    def __init__(self, code: str, subcode: str, reason: str, status: int) -> None:
        super().__init__(f"SOAP fault {code}{'/' + subcode if subcode else ''} (HTTP {status}): {reason}")
        self.code, self.subcode, self.reason, self.status = code, subcode, reason, status


@dataclass
class SoapReply:
    status: int
    content_type: str
    envelope: etree._Element
    body: etree._Element
    mtom: MtomMessage | None

    @property
    def action(self) -> str | None:
        return soapenv.header_value(self.envelope, "Action")

    @property
    def relates_to(self) -> str | None:
        return soapenv.header_value(self.envelope, "RelatesTo")

    def close(self) -> None:
        if self.mtom is not None:
            self.mtom.close()


class Transport(Protocol):
    def post(self, headers: dict[str, str], body: Iterable[bytes], length: int | None) -> tuple[int, str, BinaryIO]: ...


class HttpsTransport:
    def __init__(self, url: str, context: ssl.SSLContext, timeout: float = 600.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https":
            raise ValueError(f"{url}: only https URLs are allowed")
        self.host, self.port = parts.hostname or "localhost", parts.port or 443
        self.path = parts.path or "/"
        self.context, self.timeout = context, timeout
        self._conn: http.client.HTTPSConnection | None = None

    def post(self, headers: dict[str, str], body: Iterable[bytes], length: int | None) -> tuple[int, str, BinaryIO]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout)
        self._conn = conn
        hdrs = dict(headers)
        if length is not None:
            hdrs["Content-Length"] = str(length)
        conn.request("POST", self.path, body=body, headers=hdrs, encode_chunked=length is None)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp  # type: ignore[return-value]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class WsgiTransport:
    """Calls a WSGI application directly, as the given authenticated peer."""

    def __init__(self, app: Callable[..., Iterable[bytes]], peer: Peer, path: str = "/") -> None:
        self.app, self.peer, self.path = app, peer, path

    def post(self, headers: dict[str, str], body: Iterable[bytes], length: int | None) -> tuple[int, str, BinaryIO]:
        data = b"".join(body)
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": self.path,
            "QUERY_STRING": "",
            "SERVER_NAME": "in-process",
            "SERVER_PORT": "0",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "https",
            "wsgi.input": io.BytesIO(data),
            "wsgi.errors": io.StringIO(),
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "CONTENT_TYPE": headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(data)),
            PEER_ENVIRON_KEY: self.peer,
        }
        got: dict[str, Any] = {}

        def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> None:
            got["status"], got["headers"] = status, dict((k.lower(), v) for k, v in hdrs)

        out = b"".join(self.app(environ, start_response))
        return int(got["status"].split()[0]), got["headers"].get("content-type", ""), io.BytesIO(out)

    def close(self) -> None:
        pass


class SoapClient:
    # Called after each ``call`` with (action, request body, reply body or None, error text); set by the
    # composition to audit the transactions this node initiates. Must not raise.
    audit_hook: Callable[[str, etree._Element, etree._Element | None, str], None] | None = None

    def __init__(self, transport: Transport, spool_dir: Path | None = None) -> None:
        self.transport = transport
        self.spool_dir = spool_dir or Path(tempfile.gettempdir())

    def call(
        self,
        action: str,
        body: etree._Element,
        *,
        attachments: list[tuple[str, str, Any]] | None = None,
        mtom: bool = False,
        to: str | None = None,
        message_id: str | None = None,
    ) -> SoapReply:
        env = soapenv.envelope(body, action=action, to=to, message_id=message_id)
        if self.audit_hook is None:
            return self.send_envelope(soapenv.to_bytes(env), attachments=attachments, mtom=mtom)
        try:
            reply = self.send_envelope(soapenv.to_bytes(env), attachments=attachments, mtom=mtom)
        except Exception as exc:
            self.audit_hook(action, body, None, str(exc) or type(exc).__name__)
            raise
        self.audit_hook(action, body, reply.body, "")
        return reply

    def send_envelope(
        self, env_bytes: bytes, *, attachments: list[tuple[str, str, Any]] | None = None, mtom: bool = False
    ) -> SoapReply:
        if attachments or mtom:
            writer = MtomWriter(env_bytes, attachments or [])
            status, ctype, stream = self.transport.post(
                {"Content-Type": writer.content_type}, writer, writer.content_length
            )
        else:
            status, ctype, stream = self.transport.post(
                {"Content-Type": soapenv.SOAP12_CONTENT_TYPE}, [env_bytes], len(env_bytes)
            )
        return self._reply(status, ctype, stream)

    def _reply(self, status: int, ctype: str, stream: BinaryIO) -> SoapReply:
        mtom = None
        try:
            if ctype.lower().startswith("multipart/related"):
                mtom = parse_multipart_related(
                    stream, ctype, self.spool_dir, max_root_bytes=MAX_RESPONSE_ENVELOPE, max_total_bytes=1 << 40
                )
                root = mtom.root
            else:
                root = stream.read(MAX_RESPONSE_ENVELOPE + 1)
            if not ctype.lower().startswith(("multipart/related", "application/soap+xml")):
                raise SoapClientError(f"HTTP {status}, unexpected Content-Type {ctype!r}: {root[:300]!r}")
            env = parse_xml(root, max_bytes=MAX_RESPONSE_ENVELOPE, max_depth=200)
            body = soapenv.body_child(env)
            if body is None:
                raise SoapClientError(f"HTTP {status}: SOAP response without a single body element")
            if body.tag == f"{{{soapenv.SOAP}}}Fault":
                raise _fault_from(body, status)
            return SoapReply(status, ctype, env, body, mtom)
        except BaseException:
            if mtom is not None:
                mtom.close()
            raise


def _fault_from(fault: etree._Element, status: int) -> SoapFault:
    ns = {"s": soapenv.SOAP}
    code = (fault.findtext("s:Code/s:Value", namespaces=ns) or "").split(":")[-1]
    sub = (fault.findtext("s:Code/s:Subcode/s:Value", namespaces=ns) or "").split(":")[-1]
    reason = fault.findtext("s:Reason/s:Text", namespaces=ns) or ""
    return SoapFault(code, sub, reason, status)


def https_client(
    url: str, ca: Path | str, cert: Path | str, key: Path | str, spool_dir: Path | None = None
) -> SoapClient:
    from clearinghouse.tls import client_context

    return SoapClient(HttpsTransport(url, client_context(ca, cert, key)), spool_dir)
