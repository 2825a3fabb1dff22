"""A SOAP 1.2 endpoint: hardened request intake (MTOM or plain), WS-Addressing, role checks,
and dispatch to spyne services by wsa:Action.

Order of work for each POST: read the body (MTOM attachments stream to the spool), parse the
root part with the hardened parser, check the envelope and its addressing headers, check the
peer's role, then let spyne dispatch to the operation. Responses get WS-Addressing headers
(Action, MessageID, RelatesTo) and are MTOM-packaged when the operation returns attachments
or the request itself was MTOM.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree
from spyne import AnyXml, Application, ServiceBase, const, rpc
from spyne.protocol.soap import Soap12
from spyne.server.wsgi import WsgiApplication

from clearinghouse.config import Settings
from clearinghouse.errors import AccessDenied, SoapFaultError
from clearinghouse.https import PEER_ENVIRON_KEY
from clearinghouse.peer import Peer
from clearinghouse.soap import envelope as soapenv
from clearinghouse.soap.mtom import MtomError, MtomMessage, MtomWriter, parse_multipart_related
from clearinghouse.soap.wsdl import render_wsdl
from clearinghouse.xmlsafe import NS, XmlRejected, parse_xml

log = logging.getLogger("clearinghouse.soap")

# spyne ends a request with a full gc.collect() at most once per MIN_GC_INTERVAL seconds (to release
# file descriptors held by garbage): a pause of 100+ ms that some request pays every second. Files
# here are closed explicitly (MtomMessage.close), so Python's own generational collection suffices.
const.MIN_GC_INTERVAL = float("inf")

_REQUEST_KEY = "clearinghouse.soap_request"
_RESULT_KEY = "clearinghouse.soap_result"
_ACTION_KEY = "clearinghouse.soap_action"
# soapenv.envelope binds the SOAP namespace to the prefix "s".
_EMPTY_BODY, _BODY_OPEN, _BODY_CLOSE = b"<s:Body/>", b"<s:Body>", b"</s:Body>"
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


class _IheSoap12(Soap12):
    """spyne's SOAP 1.2 protocol, taking the envelope we already parsed and dispatching on wsa:Action."""

    def __init__(self, operations: dict[str, Operation], tns: str) -> None:
        super().__init__(validator=None)
        self._by_action = operations
        self._tns = tns

    def create_in_document(self, ctx: Any, charset: str | None = None) -> None:
        ctx.in_document = (ctx.transport.req_env[_REQUEST_KEY].envelope, {})

    def decompose_incoming_envelope(self, ctx: Any, message: str = Soap12.REQUEST) -> None:
        super().decompose_incoming_envelope(ctx, message)
        request: SoapRequest = ctx.transport.req_env[_REQUEST_KEY]
        ctx.method_request_string = f"{{{self._tns}}}{self._by_action[request.action].name}"

    def serialize(self, ctx: Any, message: str) -> None:
        if ctx.out_error is not None or message != self.RESPONSE:
            return super().serialize(ctx, message)
        request: SoapRequest = ctx.transport.req_env[_REQUEST_KEY]
        result: SoapResult = ctx.transport.req_env[_RESULT_KEY]
        op = self._by_action[request.action]
        body = None if result.body_xml is not None else result.body
        ctx.out_document = soapenv.envelope(body, action=op.response_action, relates_to=request.message_id)
        return None

    def create_out_string(self, ctx: Any, charset: str | None = None) -> None:
        super().create_out_string(ctx, charset)
        result: SoapResult | None = ctx.transport.req_env.get(_RESULT_KEY)
        if ctx.out_error is not None or result is None or result.body_xml is None:
            return
        # The envelope was serialised with an empty Body; the pre-serialised body goes inside it.
        head, empty, tail = b"".join(ctx.out_string).rpartition(_EMPTY_BODY)
        if not empty:
            raise RuntimeError("serialised envelope has no empty Body to fill")
        ctx.out_string = [head, _BODY_OPEN, result.body_xml, _BODY_CLOSE, tail]


def _service_for(name: str, operations: list[Operation]) -> type[ServiceBase]:
    def make(op: Operation) -> Any:
        def method(ctx: Any, _body: Any) -> Any:
            request: SoapRequest = ctx.transport.req_env[_REQUEST_KEY]
            result = op.handler(request)
            ctx.transport.req_env[_RESULT_KEY] = result
            return result.body

        # spyne keys methods by function name, so each operation needs its own.
        method.__name__ = method.__qualname__ = op.name.replace("-", "_")
        return rpc(AnyXml, _body_style="bare", _returns=AnyXml, _in_message_name=op.name)(method)

    attrs = {op.name.replace("-", "_"): make(op) for op in operations}
    return type(name, (ServiceBase,), attrs)


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
        app = Application(
            [_service_for(name, operations)],
            tns=tns,
            name=name,
            in_protocol=_IheSoap12(self.operations, tns),
            out_protocol=_IheSoap12(self.operations, tns),
        )
        self._spyne = WsgiApplication(app)

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
        # spyne can only describe the types it models; these payloads are ebRS/XDS.b documents that
        # our own code validates, so the WSDL is rendered from the operation table (docs/decisions.md).
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
        inner = dict(environ)
        inner.update(
            {
                "wsgi.input": io.BytesIO(b""),
                "CONTENT_TYPE": soapenv.SOAP12_CONTENT_TYPE,
                "CONTENT_LENGTH": "0",
                _REQUEST_KEY: request,
            }
        )
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"], captured["headers"] = status, headers

        try:
            out = b"".join(self._spyne(inner, capture))
        except Exception as exc:  # noqa: BLE001 - any handler bug becomes a Receiver fault, never a dropped socket
            log.exception("%s: %s failed", self.name, request.action)
            self._audit(request, None, exc)
            raise SoapFaultError("internal error", code="Receiver", http_status=500) from None
        result: SoapResult | None = inner.get(_RESULT_KEY)
        if result is None or not captured.get("status", "").startswith("200"):
            log.error("%s: %s: spyne returned %s: %s", self.name, request.action, captured.get("status"), out[:2000])
            self._audit(request, None, RuntimeError(f"internal error: spyne returned {captured.get('status')}"))
            raise SoapFaultError("internal error", code="Receiver", http_status=500)
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
