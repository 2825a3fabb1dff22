"""PIXm: ITI-83 Mobile Patient Identifier Cross-reference Query, FHIR R4 ``Patient/$ihe-pix``, as PIXm
Rev. 3.0 (2:3.83) defines it, in JSON or XML.

GET [base]/Patient/$ihe-pix?sourceIdentifier=urn:oid:OID|value{&targetSystem=urn:oid:OID}
answers 200 with a Parameters resource (one targetIdentifier per cross-referenced identifier,
the source identifier excluded), or an OperationOutcome: 404 not-found for an unknown identifier,
400 code-invalid for an unknown source domain, 403 code-invalid for an unknown target system
(2:3.83.4.2.2). targetId (0..*) references the manager's Patient resources of the person found, the
ones ITI-104 feeds created (pix_manager/fhir_feed.py); identifiers fed by ITI-8 or ITI-44 have none.

The format is chosen as FHIR R4 http.html#mime-type says: ``_format`` (json, xml or a MIME type) wins
over the Accept header; without either, JSON. A request for neither format gets 406.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import quoteattr

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
from pix_manager import patients as patient_resources
from pix_manager.auditing import PixAuditor
from pix_manager.identifiers import Authority, RawIdentifier, audit_cx
from pix_manager.manager import PixManager, QueryAnswer

log = logging.getLogger("pix_manager.fhir")

PATH = "/fhir/Patient/$ihe-pix"
FHIR_JSON = "application/fhir+json; charset=utf-8"
FHIR_XML = "application/fhir+xml; charset=utf-8"
FHIR_NS = "http://hl7.org/fhir"
OID_PREFIX = "urn:oid:"
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
XML_FORMATS = frozenset({"xml", "text/xml", "application/xml", "application/fhir+xml"})
JSON, XML = "json", "xml"
# The diagnostics ITI-83 prescribes for each failure.
DIAGNOSTICS = {
    PixUnknownPatientId: "sourceIdentifier Patient Identifier not found",
    PixUnknownDomain: "sourceIdentifier Assigning Authority not found",
    PixUnknownTargetDomain: "targetSystem not found",
}


def send(
    start_response: Callable[..., Any],
    status: int,
    resource: dict[str, Any] | None,
    fmt: str = JSON,
    headers: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    """Answer with ``resource`` as FHIR JSON or XML (``fmt``), or with no body when it is None."""
    line = f"{status} {HTTPStatus(status).phrase}"
    if resource is None:
        start_response(line, [*headers, ("Content-Length", "0")])
        return []
    if fmt == XML:
        body, ctype = to_xml(resource), FHIR_XML
    else:
        body, ctype = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), FHIR_JSON
    start_response(line, [*headers, ("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def to_xml(resource: dict[str, Any]) -> bytes:
    """FHIR R4 XML of a resource given as its JSON dictionary (xml.html): the root element is named by
    resourceType in the FHIR namespace, every primitive is an element with a ``value`` attribute, a
    list is repeated elements. Element order is the dictionary's, so the builders here list elements
    in the order of their FHIR definitions."""
    parts = [f'<{resource["resourceType"]} xmlns="{FHIR_NS}">']

    def element(name: str, value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                element(name, item)
        elif isinstance(value, dict):
            parts.append(f"<{name}>")
            for key, child in value.items():
                element(key, child)
            parts.append(f"</{name}>")
        else:
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            parts.append(f"<{name} value={quoteattr(text)}/>")

    for key, value in resource.items():
        if key != "resourceType":
            element(key, value)
    parts.append(f"</{resource['resourceType']}>")
    return ('<?xml version="1.0" encoding="UTF-8"?>' + "".join(parts)).encode("utf-8")


def operation_outcome(
    code: str, diagnostics: str, severity: str = "error", details: str = "", expression: str = ""
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code}
    if details:  # OperationOutcome.issue order: severity, code, details, diagnostics, location, expression
        issue["details"] = {"text": details}
    issue["diagnostics"] = diagnostics
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def parameters(identifiers: Iterable[tuple[str, str]], target_ids: Iterable[str] = ()) -> dict[str, Any]:
    """A Parameters resource with one targetIdentifier per (system, value), then one targetId per
    reference to a Patient resource of this manager (``Patient/{id}``)."""
    resource: dict[str, Any] = {"resourceType": "Parameters"}
    params = [
        {"name": "targetIdentifier", "valueIdentifier": {"use": "official", "system": system, "value": value}}
        for system, value in identifiers
    ]
    params += [{"name": "targetId", "valueReference": {"reference": ref}} for ref in target_ids]
    if params:  # FHIR JSON never carries an empty array
        resource["parameter"] = params
    return resource


def token(text: str, where: str) -> RawIdentifier:
    """sourceIdentifier: ``system|value`` with the system an OID URI (ITI TF-2 Appendix Z.2.2)."""
    system, bar, value = text.partition("|")
    if not bar:
        raise PixInvalidField("sourceIdentifier must be system|value", location=where)
    return RawIdentifier(value, authority(system), where, where)


def authority(system: str) -> Authority:
    """The assigning authority a FHIR identifier system names: ``urn:oid:OID`` is the ISO OID."""
    # A system that is not an OID URI cannot be one of the configured domains; kept so that the
    # resolver reports it as an unknown assigning authority.
    oid = system.removeprefix(OID_PREFIX) if system.startswith(OID_PREFIX) else system
    return Authority(universal_id=oid, universal_id_type="ISO" if system.startswith(OID_PREFIX) else "URI")


def _kind(media: str) -> str | None:
    media = media.split(";")[0].strip().lower()
    return JSON if media in JSON_FORMATS else XML if media in XML_FORMATS else None


def negotiate(formats: list[str], accept: str) -> str | None:
    """JSON or XML as asked by ``_format`` (which wins) or the Accept header (by q-value, then order);
    None when neither can be given."""
    if formats:
        kinds = {_kind(f) for f in formats}
        return kinds.pop() if len(kinds) == 1 and None not in kinds else None
    if not accept.strip():
        return JSON
    ranked = []
    for n, part in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        kind = JSON if media.lower() in ("*/*", "application/*") else _kind(media)
        if kind is not None and q > 0:
            ranked.append((-q, n, kind))
    return min(ranked)[2] if ranked else None


class PixmApp:
    """The WSGI application at /fhir/Patient/$ihe-pix."""

    def __init__(self, manager: PixManager, auditor: PixAuditor | None = None) -> None:
        self.manager = manager
        self.auditor = auditor

    def _target_ids(self, answer: QueryAnswer, targets: list[str]) -> list[str]:
        """The Patient resources (ITI-104) of the person found: those keyed by the identifiers answered,
        and by the queried one unless targetSystem leaves its domain out."""
        keys = list(answer.identifiers)
        queried = answer.queried
        if queried is not None and (not targets or OID_PREFIX + answer.config.by_id[queried.domain_id].oid in targets):
            keys.insert(0, queried)
        with self.manager.engine.connect() as conn:
            return [p.reference for p in patient_resources.live_for(conn, keys)]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        params = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        fmt = negotiate(params.get("_format", []), environ.get("HTTP_ACCEPT", ""))
        if fmt is None:
            return send(start_response, 406, operation_outcome("not-supported", "FHIR JSON and FHIR XML are served"))
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return send(start_response, 405, operation_outcome("not-supported", "$ihe-pix is invoked with GET"), fmt)
        peer = environ.get(PEER_ENVIRON_KEY)
        if peer is None or not peer.has_role("consumer"):
            who = peer.subject if peer is not None else "an unauthenticated client"
            return send(
                start_response,
                403,
                operation_outcome("forbidden", f"{who} may not use ITI-83: role 'consumer' required"),
                fmt,
            )
        sources = params.get("sourceIdentifier", [])
        targets_text = [t for value in params.get("targetSystem", []) for t in value.split(",") if t]
        status, resource, found, source = 200, {}, [], None
        try:
            if len(sources) != 1:
                raise PixMissingField("exactly one sourceIdentifier is required", location="sourceIdentifier")
            source = token(sources[0], "sourceIdentifier")
            targets = [RawIdentifier("", authority(t), "targetSystem") for t in targets_text]
            answer = self.manager.query(source, targets)
            if answer.errors:
                raise answer.errors[0]
            config = answer.config
            found = [(OID_PREFIX + config.by_id[i.domain_id].oid, i.value) for i in answer.identifiers]
            resource = parameters(found, self._target_ids(answer, targets_text))
        except PixError as exc:
            status = exc.http_status
            known = type(exc) in DIAGNOSTICS
            resource = operation_outcome(
                exc.fhir_code, DIAGNOSTICS.get(type(exc), exc.text), details=exc.text if known else ""
            )
        if self.auditor is not None:
            patients = [audit_cx(v, s.removeprefix(OID_PREFIX)) for s, v in found]
            if source is not None:
                patients.insert(0, audit_cx(source.value, source.authority.universal_id))
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
        return send(start_response, status, resource, fmt)
