"""The ITI-81 endpoint on the HTTPS port, for participants with the ``auditor`` role:

- ``GET /fhir/AuditEvent?...``: search, a FHIR R4 searchset Bundle (JSON) with paging links;
- ``GET /fhir/AuditEvent/{id}``: one AuditEvent;
- ``GET /fhir/AuditEvent/{id}/original``: the audit message exactly as it was received (XML).

Each use of the audit log is itself audited (DICOM "Audit Log Used"), each refusal too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import Engine

from atna import fhir, search
from clearinghouse import audit
from clearinghouse.audit_events import Auditor, peer_party
from clearinghouse.https import PEER_ENVIRON_KEY

log = logging.getLogger("atna.api")

PATH = "/fhir/AuditEvent"
ROLE = "auditor"
FHIR_JSON = "application/fhir+json; charset=utf-8"


class AuditEventApi:
    def __init__(self, engine: Engine, auditor: Auditor | None = None) -> None:
        self.engine = engine
        self.auditor = auditor

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        base = _base_url(environ)
        peer = environ.get(PEER_ENVIRON_KEY)
        if peer is None or not peer.has_role(ROLE):
            reason = f"{peer.subject if peer else 'unauthenticated peer'} may not use ITI-81: role 'auditor' required"
            log.warning("refused: %s", reason)
            if self.auditor is not None:
                self.auditor.emit(
                    audit.restricted_function(
                        node=self.auditor.node,
                        endpoint=base,
                        peer=peer_party(peer, environ.get("REMOTE_ADDR", "")),
                        transaction="ITI-81",
                        reason=reason,
                    )
                )
            return _json(start_response, "403 Forbidden", fhir.operation_outcome([reason], code="forbidden"))
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _json(
                start_response, "405 Method Not Allowed", fhir.operation_outcome(["use GET"], code="not-supported")
            )
        rest = path[len(PATH) :].strip("/")
        try:
            if not rest:
                return self._search(environ, start_response, base)
            parts = rest.split("/")
            if not parts[0].isdigit() or len(parts) > 2 or (len(parts) == 2 and parts[1] != "original"):
                return _json(
                    start_response,
                    "404 Not Found",
                    fhir.operation_outcome([f"no such resource: {path}"], code="not-found"),
                )
            return self._read(environ, start_response, base, int(parts[0]), original=len(parts) == 2)
        except fhir.SearchError as exc:
            self._used(environ, base, audit.SERIOUS_FAILURE, str(exc))
            return _json(start_response, "400 Bad Request", fhir.operation_outcome([str(exc)], code="invalid"))

    def _search(self, environ: dict[str, Any], start_response: Callable[..., Any], base: str) -> list[bytes]:
        params = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        strict = "handling=strict" in environ.get("HTTP_PREFER", "").replace(" ", "")
        query = fhir.parse_search(params, strict=strict)
        with self.engine.connect() as conn:
            total, rows = search.run(conn, query)
        resources = [fhir.to_audit_event(r, search.parsed_of(r), base) for r in rows]
        warnings = [f"unknown search parameter {n!r} ignored" for n in query.ignored]
        self._used(environ, base, audit.SUCCESS, "", environ.get("QUERY_STRING", "").encode())
        return _json(start_response, "200 OK", fhir.bundle(base, query, total, resources, warnings))

    def _read(
        self, environ: dict[str, Any], start_response: Callable[..., Any], base: str, rid: int, *, original: bool
    ) -> list[bytes]:
        with self.engine.connect() as conn:
            row = search.get(conn, rid)
        if row is None:
            return _json(
                start_response,
                "404 Not Found",
                fhir.operation_outcome([f"AuditEvent/{rid} does not exist"], code="not-found"),
            )
        self._used(environ, base, audit.SUCCESS, "", f"AuditEvent/{rid}{'/original' if original else ''}".encode())
        if original:
            body = fhir.original_xml(row)
            start_response("200 OK", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        return _json(start_response, "200 OK", fhir.to_audit_event(row, search.parsed_of(row), base))

    def _used(self, environ: dict[str, Any], base: str, outcome: int, description: str, query: bytes = b"") -> None:
        if self.auditor is None:
            return
        self.auditor.emit(
            audit.audit_log_used(
                node=self.auditor.node,
                auditor=peer_party(environ.get(PEER_ENVIRON_KEY), environ.get("REMOTE_ADDR", "")),
                log_uri=base,
                query=query,
                outcome=outcome,
                outcome_description=description,
            )
        )


def _base_url(environ: dict[str, Any]) -> str:
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '')}"
    return f"https://{host}{PATH}"


def _json(start_response: Callable[..., Any], status: str, doc: dict[str, Any]) -> list[bytes]:
    body = json.dumps(doc, separators=(",", ":")).encode()
    start_response(status, [("Content-Type", FHIR_JSON), ("Content-Length", str(len(body)))])
    return [body]
