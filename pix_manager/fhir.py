"""PIXm: ITI-83 Mobile Patient Identifier Cross-reference Query, FHIR R4 ``Patient/$ihe-pix`` (JSON).

GET [base]/Patient/$ihe-pix?sourceIdentifier=urn:oid:OID|value{&targetSystem=urn:oid:OID}
answers 200 with a Parameters resource (one targetIdentifier per cross-referenced identifier,
the source identifier excluded), or an OperationOutcome: 404 not-found for an unknown identifier,
400 code-invalid for an unknown source domain, 403 code-invalid for an unknown target system
(ITI-83 2:3.83.4.2.2). Only identifiers are held here, so no targetId (Patient reference) is given.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from clearinghouse import audit
from clearinghouse.errors import (
    PixError,
    PixInvalidField,
    PixMissingField,
    PixUnknownDomain,
    PixUnknownPatientId,
    PixUnknownTargetDomain,
)
from clearinghouse.https import PEER_ENVIRON_KEY
from pix_manager.auditing import PixAuditor
from pix_manager.identifiers import Authority, RawIdentifier
from pix_manager.manager import PixManager

log = logging.getLogger("pix_manager.fhir")

PATH = "/fhir/Patient/$ihe-pix"
FHIR_JSON = "application/fhir+json; charset=utf-8"
OID_PREFIX = "urn:oid:"
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
# The diagnostics ITI-83 prescribes for each failure.
DIAGNOSTICS = {
    PixUnknownPatientId: "sourceIdentifier Patient Identifier not found",
    PixUnknownDomain: "sourceIdentifier Assigning Authority not found",
    PixUnknownTargetDomain: "targetSystem not found",
}
STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    406: "406 Not Acceptable",
    500: "500 Internal Server Error",
}


def _response(start_response: Callable[..., Any], status: int, resource: dict[str, Any]) -> list[bytes]:
    body = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    start_response(
        STATUS.get(status, f"{status} Error"), [("Content-Type", FHIR_JSON), ("Content-Length", str(len(body)))]
    )
    return [body]


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def parameters(identifiers: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """A Parameters resource with one targetIdentifier per (system, value)."""
    resource: dict[str, Any] = {"resourceType": "Parameters"}
    params = [
        {"name": "targetIdentifier", "valueIdentifier": {"use": "official", "system": system, "value": value}}
        for system, value in identifiers
    ]
    if params:  # FHIR JSON never carries an empty array
        resource["parameter"] = params
    return resource


def token(text: str, where: str) -> RawIdentifier:
    """sourceIdentifier: ``system|value`` with the system an OID URI (ITI TF-2 Appendix Z.2.2)."""
    system, bar, value = text.partition("|")
    if not bar:
        raise PixInvalidField("sourceIdentifier must be system|value", location=where)
    return RawIdentifier(value, _authority(system), where, where)


def _authority(system: str) -> Authority:
    # A system that is not an OID URI cannot be one of the configured domains; kept so that the
    # resolver reports it as an unknown assigning authority.
    oid = system.removeprefix(OID_PREFIX) if system.startswith(OID_PREFIX) else system
    return Authority(universal_id=oid, universal_id_type="ISO" if system.startswith(OID_PREFIX) else "URI")


def _acceptable(environ: dict[str, Any], formats: list[str]) -> bool:
    if formats:
        return all(f.split(";")[0].strip().lower() in JSON_FORMATS for f in formats)
    accept = environ.get("HTTP_ACCEPT", "")
    if not accept.strip():
        return True
    kinds = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return any(k in JSON_FORMATS or k in ("*/*", "application/*") for k in kinds)


class PixmApp:
    """The WSGI application at /fhir/Patient/$ihe-pix."""

    def __init__(self, manager: PixManager, auditor: PixAuditor | None = None) -> None:
        self.manager = manager
        self.auditor = auditor

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return _response(start_response, 405, operation_outcome("not-supported", "$ihe-pix is invoked with GET"))
        peer = environ.get(PEER_ENVIRON_KEY)
        if peer is None or not peer.has_role("consumer"):
            who = peer.subject if peer is not None else "an unauthenticated client"
            return _response(
                start_response,
                403,
                operation_outcome("forbidden", f"{who} may not use ITI-83: role 'consumer' required"),
            )
        params = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if not _acceptable(environ, params.get("_format", [])):
            return _response(start_response, 406, operation_outcome("not-supported", "only FHIR JSON is served"))
        sources = params.get("sourceIdentifier", [])
        targets_text = [t for value in params.get("targetSystem", []) for t in value.split(",") if t]
        status, resource, found, source = 200, {}, [], None
        try:
            if len(sources) != 1:
                raise PixMissingField("exactly one sourceIdentifier is required", location="sourceIdentifier")
            source = token(sources[0], "sourceIdentifier")
            targets = [RawIdentifier("", _authority(t), "targetSystem") for t in targets_text]
            answer = self.manager.query(source, targets)
            if answer.errors:
                raise answer.errors[0]
            config = answer.config
            found = [(OID_PREFIX + config.by_id[i.domain_id].oid, i.value) for i in answer.identifiers]
            resource = parameters(found)
        except PixError as exc:
            status = exc.http_status
            resource = operation_outcome(exc.fhir_code, DIAGNOSTICS.get(type(exc), exc.text))
            if type(exc) in DIAGNOSTICS:
                resource["issue"][0]["details"] = {"text": exc.text}
        if self.auditor is not None:
            patients = [f"{v}^^^&{s.removeprefix(OID_PREFIX)}&ISO" for s, v in found]
            if source is not None:
                patients.insert(0, f"{source.value}^^^&{source.authority.universal_id}&ISO")
            self.auditor.query(
                transaction="ITI-83",
                peer=peer,
                address=environ.get("REMOTE_ADDR", ""),
                endpoint=f"https://{environ.get('HTTP_HOST', '')}{PATH}",
                query=environ.get("QUERY_STRING", "").encode(),
                query_id="",
                patient_ids=patients,
                outcome=audit.SUCCESS if status == 200 else audit.MINOR_FAILURE,
                description="" if status == 200 else resource["issue"][0]["diagnostics"],
            )
        return _response(start_response, status, resource)
