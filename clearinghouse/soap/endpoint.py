"""A SOAP 1.2 endpoint: hardened request intake (MTOM or plain), WS-Addressing, role checks,
and dispatch to the operation named by wsa:Action.

Order of work for each POST: read the body (MTOM attachments stream to the spool), parse the
root part with the hardened parser, check the envelope and its addressing headers, check the
peer's role, then call the operation's handler. Responses get WS-Addressing headers
(Action, MessageID, RelatesTo) and are MTOM-packaged when the operation returns attachments
or the request itself was MTOM.

The dispatch is ours, not spyne's (docs/decisions.md): by the time a request reaches it, this module
has already parsed, checked and routed the envelope, and the handlers read and build lxml elements, so
spyne's contexts, events and object model only added ~0.7 ms of CPU to each ITI-18 request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from clearinghouse.config import Settings
from clearinghouse.errors import AccessDenied, SoapFaultError
from clearinghouse.https import PEER_ENVIRON_KEY
from clearinghouse.peer import Peer
from clearinghouse.soap import envelope as soapenv
from clearinghouse.soap.mtom import MtomError, MtomMessage, MtomWriter, parse_multipart_related
from clearinghouse.soap.wsdl import render_wsdl
from clearinghouse.xmlsafe import NS, XmlRejected, parse_xml

log = logging.getLogger("clearinghouse.soap")

_ACTION_KEY = "clearinghouse.soap_action"
# Depth bound when an observer asks for a pre-serialised body as an element (written by us, but bounded anyway).
_MAX_DEPTH = 256


@dataclass
class SoapRequest:
    peer: Peer
    envelope: etree._Element
    body: etree._Element
    message_id: str
    action: str
    mtom: MtomMessage | None
    environ: dict[str, Any]


@dataclass
class SoapResult:
    body: etree._Element
    # (content_id, content_type, source) parts for an MTOM response; see MtomWriter.
    attachments: list[tuple[str, str, Any]] = field(default_factory=list)
    force_mtom: bool = False
    # The body already serialised (UTF-8, no XML declaration), sent as is in place of ``body``, which
    # then holds only the response element's outline (its tag and status) for audit and metrics: an
    # ITI-18 answer spliced from stored XML is not parsed only to be serialised again.
    body_xml: bytes | None = None

    def document(self) -> etree._Element:
        """The whole body as an element (parses ``body_xml`` when the body travels serialised)."""
        if self.body_xml is None:
            return self.body
        return parse_xml(self.body_xml, max_bytes=len(self.body_xml), max_depth=_MAX_DEPTH)


@dataclass(frozen=True)
class Operation:
    name: str  # WSDL operation name, e.g. DocumentRegistry_RegisterDocumentSet-b
    transaction: str  # e.g. ITI-42
    action: str
    response_action: str
    body_tag: str  # qualified name of the expected body element
    role: str
    handler: Callable[[SoapRequest], SoapResult]
    response_tag: str  # qualified name of the response body element
    mtom: bool = False  # the transaction carries documents as MTOM/XOP attachments


class SoapEndpoint:
    """The WSGI application of one SOAP endpoint (for example /xds/registry)."""

    # Called after each operation with (operation, request, result or None, error or None); set by
    # the composition (clearinghouse.audit_events.Auditor.soap_operation). Must not raise.
    audit_hook: Callable[[Operation, SoapRequest, SoapResult | None, BaseException | None], None] | None = None
    # Called for each request refused before dispatch (not XML, hostile XML, too large, wrong envelope,
    # missing addressing, unknown action, MIME errors) with (environ, reason, transaction or ""); set by
    # the composition (clearinghouse.audit_events.Auditor.soap_refused). Must not raise.
    refusal_hook: Callable[[dict[str, Any], str, str], None] | None = None

    def __init__(self, name: str, tns: str, operations: list[Operation], settings: Settings) -> None:
        self.name = name
        self.tns = tns
        self.settings = settings
        self.operations = {op.action: op for op in operations}
        # Further observers of each operation, same arguments as audit_hook (e.g. the conformance
        # recorder); each is called after audit_hook and must not raise.
        self.observers: list[Callable[[Operation, SoapRequest, SoapResult | None, BaseException | None], None]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "GET":
            if environ.get("QUERY_STRING", "").lower() in ("wsdl", "wsdl="):
                return self._wsdl(environ, start_response)
            return _plain(start_response, "405 Method Not Allowed", b"POST a SOAP 1.2 message, or GET ?wsdl\n")
        if method != "POST":
            return _plain(start_response, "405 Method Not Allowed", b"POST a SOAP 1.2 message\n")
        mtom: MtomMessage | None = None
        relates_to = None
        dispatching = False
        try:
            mtom, root = self._read_body(environ)
            request = self._request(environ, root, mtom)
            relates_to = request.message_id
            op = self.operations[request.action]
            if not request.peer.has_role(op.role):
                raise AccessDenied(request.peer.subject, op.transaction, op.role)
            dispatching = True
            return self._dispatch(environ, start_response, request)
        except AccessDenied as exc:
            log.warning("refused: %s", exc)
            self._audit(request, None, exc)
            return _fault(start_response, SoapFaultError(str(exc), code="Sender", http_status=403), relates_to)
        except SoapFaultError as exc:
            log.warning("%s: SOAP fault to %s: %s", self.name, _subject(environ), exc.reason)
            if not dispatching:  # a dispatched operation was audited by _dispatch
                self._refused(environ, exc)
            return _fault(start_response, exc, relates_to)
        finally:
            if mtom is not None:
                mtom.close()

    def _wsdl(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        # A generated WSDL (spyne's) can only describe the types a framework models; these payloads are
        # ebRS/XDS.b documents our own code validates, so it is rendered from the operation table.
        host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT')}"
        location = f"https://{host}{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}"
        body = render_wsdl(self.name, self.tns, location, list(self.operations.values()))
        start_response("200 OK", [("Content-Type", "text/xml; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    def _read_body(self, environ: dict[str, Any]) -> tuple[MtomMessage | None, bytes]:
        ctype = environ.get("CONTENT_TYPE", "")
        base = ctype.split(";", 1)[0].strip().lower()
        stream = environ["wsgi.input"]
        s = self.settings
        if base == "multipart/related":
            try:
                mtom = parse_multipart_related(
                    stream,
                    ctype,
                    s.spool_dir,
                    max_root_bytes=s.max_envelope_bytes,
                    max_total_bytes=s.max_request_bytes,
                    seal=True,  # documents in flight are never plaintext on disk (docs/storage.md)
                )
            except MtomError as exc:
                raise SoapFaultError(f"malformed MTOM/XOP message: {exc}", http_status=exc.http_status) from exc
            return mtom, mtom.root
        if base == "text/xml":
            raise SoapFaultError(
                "SOAP 1.1 (text/xml) is not supported: IHE XDS.b requires SOAP 1.2 (application/soap+xml)",
                code="VersionMismatch",
                http_status=400,
            )
        if base != "application/soap+xml":
            raise SoapFaultError(
                f"unsupported Content-Type {base or '(none)'!r}: send application/soap+xml or MTOM multipart/related",
                http_status=415,
            )
        length = environ.get("CONTENT_LENGTH") or ""
        limit = s.max_envelope_bytes
        if length.isdigit() and int(length) > limit:
            raise SoapFaultError(f"SOAP message of {length} bytes exceeds the limit of {limit} bytes", http_status=413)
        data = stream.read(int(length)) if length.isdigit() else stream.read(limit + 1)
        if len(data) > limit:
            raise SoapFaultError(f"SOAP message exceeds the limit of {limit} bytes", http_status=413)
        return None, data

    def _request(self, environ: dict[str, Any], root: bytes, mtom: MtomMessage | None) -> SoapRequest:
        try:
            env = parse_xml(root, max_bytes=self.settings.max_envelope_bytes, max_depth=self.settings.max_xml_depth)
        except XmlRejected as exc:
            raise SoapFaultError(str(exc), http_status=400) from exc
        if env.tag == f"{{{NS['soap11']}}}Envelope":
            raise SoapFaultError("SOAP 1.1 envelope received: SOAP 1.2 is required", code="VersionMismatch")
        if env.tag != f"{{{soapenv.SOAP}}}Envelope":
            raise SoapFaultError("the message is not a SOAP 1.2 Envelope")
        header = env.find(f"{{{soapenv.SOAP}}}Header")
        for block in header if header is not None else []:
            if not isinstance(block.tag, str):
                continue
            must = block.get(f"{{{soapenv.SOAP}}}mustUnderstand", "false").lower() in ("true", "1")
            if must and not block.tag.startswith(f"{{{soapenv.WSA}}}"):
                raise SoapFaultError(f"header block {block.tag} is not understood", code="MustUnderstand")
        action = soapenv.header_value(env, "Action")
        environ[_ACTION_KEY] = action  # what a refusal's audit names, once known
        if not action:
            raise SoapFaultError("WS-Addressing Action header is required", subcode="MessageAddressingHeaderRequired")
        if action not in self.operations:
            raise SoapFaultError(
                f"action {action!r} is not supported at this endpoint; supported: {sorted(self.operations)}",
                subcode="ActionNotSupported",
            )
        message_id = soapenv.header_value(env, "MessageID")
        if not message_id:
            raise SoapFaultError(
                "WS-Addressing MessageID header is required", subcode="MessageAddressingHeaderRequired"
            )
        reply_to = env.find(f"{{{soapenv.SOAP}}}Header/{{{soapenv.WSA}}}ReplyTo/{{{soapenv.WSA}}}Address")
        if reply_to is not None and (reply_to.text or "").strip() != soapenv.WSA_ANONYMOUS:
            raise SoapFaultError(
                "only the anonymous ReplyTo address is supported", subcode="OnlyAnonymousAddressSupported"
            )
        body = soapenv.body_child(env)
        op = self.operations[action]
        if body is None or body.tag != op.body_tag:
            raise SoapFaultError(
                f"{op.transaction} ({action}) expects exactly one {op.body_tag} in the SOAP Body, got "
                f"{body.tag if body is not None else 'none'}"
            )
        peer = environ.get(PEER_ENVIRON_KEY)
        if peer is None:
            raise SoapFaultError("no authenticated client certificate", http_status=403)
        return SoapRequest(peer, env, body, message_id, action, mtom, environ)

    def _dispatch(
        self, environ: dict[str, Any], start_response: Callable[..., Any], request: SoapRequest
    ) -> Iterable[bytes]:
        op = self.operations[request.action]
        try:
            result = op.handler(request)
            out = response_envelope(op, request, result)
        except Exception as exc:  # noqa: BLE001 - any handler bug becomes a Receiver fault, never a dropped socket
            log.exception("%s: %s failed", self.name, request.action)
            self._audit(request, None, exc)
            raise SoapFaultError("internal error", code="Receiver", http_status=500) from None
        self._audit(request, result, None)
        if result.attachments or result.force_mtom or request.mtom is not None:
            writer = MtomWriter(out, result.attachments)
            headers = [("Content-Type", writer.content_type)]
            if writer.content_length is not None:
                headers.append(("Content-Length", str(writer.content_length)))
            start_response("200 OK", headers)
            return writer
        start_response("200 OK", [("Content-Type", soapenv.SOAP12_CONTENT_TYPE), ("Content-Length", str(len(out)))])
        return [out]

    def _audit(self, request: SoapRequest, result: SoapResult | None, error: BaseException | None) -> None:
        hook = self.audit_hook
        for observer in ([hook] if hook is not None else []) + self.observers:
            try:
                observer(self.operations[request.action], request, result, error)
            except Exception:  # noqa: BLE001 - auditing never fails the transaction it records
                log.exception("%s: audit hook failed", self.name)

    def _refused(self, environ: dict[str, Any], exc: SoapFaultError) -> None:
        hook = self.refusal_hook
        if hook is None:
            return
        op = self.operations.get(environ.get(_ACTION_KEY) or "")
        try:
            hook(environ, exc.reason, op.transaction if op is not None else "")
        except Exception:  # noqa: BLE001 - auditing never changes the answer
            log.exception("%s: refusal audit hook failed", self.name)


def response_envelope(op: Operation, request: SoapRequest, result: SoapResult) -> bytes:
    """The response envelope (XML declaration, UTF-8) with the WS-Addressing headers of the reply to ``request``."""
    if result.body_xml is None:
        return soapenv.to_bytes(soapenv.envelope(result.body, action=op.response_action, relates_to=request.message_id))
    return soapenv.reply_bytes(result.body_xml, action=op.response_action, relates_to=request.message_id)


def _subject(environ: dict[str, Any]) -> str:
    peer = environ.get(PEER_ENVIRON_KEY)
    return peer.subject if peer else "unauthenticated peer"


def _fault(start_response: Callable[..., Any], exc: SoapFaultError, relates_to: str | None) -> list[bytes]:
    subcode_ns = exc.subcode_ns or (soapenv.WSA if exc.subcode else "")
    body = soapenv.to_bytes(
        soapenv.fault(exc.code, exc.reason, subcode=exc.subcode, subcode_ns=subcode_ns, relates_to=relates_to)
    )
    status = {
        400: "400 Bad Request",
        403: "403 Forbidden",
        413: "413 Content Too Large",
        415: "415 Unsupported Media Type",
        500: "500 Internal Server Error",
    }.get(exc.http_status, "400 Bad Request")
    start_response(status, [("Content-Type", soapenv.SOAP12_CONTENT_TYPE), ("Content-Length", str(len(body)))])
    return [body]


def _plain(start_response: Callable[..., Any], status: str, text: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(text)))])
    return [text]
