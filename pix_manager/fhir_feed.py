"""PIXm ITI-104 Patient Identity Feed FHIR (PIXm Rev. 3.0, 2:3.104) and the Patient resources it makes:

- ``PUT [base]/Patient?identifier=urn:oid:OID|value``: Add or Revise Patient, a FHIR R4 conditional update
  (http.html#cond-update). The identifier names the source's record in its own domain; no live
  resource with it: 201 Created, else 200 OK; both with Location, ETag and Last-Modified and the
  resource as stored. The identifiers of the body in configured domains are linked with it, exactly as
  one ITI-8 PID-3 list (ITI-10 subscribers and the registry hear of new ones the same way).
- the same PUT with ``Patient.link`` of type ``replaced-by``: Resolve Duplicate Patient, the A40 merge
  of the request's identifier (subsumed) into the link's (surviving); the resource is kept inactive.
- ``DELETE [base]/Patient?identifier=...``: Remove Patient (conditional delete), 204 No Content: the
  identifier leaves the cross-reference and is never returned again by PIX queries.
- ``GET [base]/Patient/{id}`` (and ``/_history/{version}`` of the current version): read, for the
  ``targetId`` ITI-83 gives; 410 Gone once removed.
- ``GET [base]/metadata``: the CapabilityStatement ITI-104 requires (conditionalUpdate, conditionalDelete).

Refusals are OperationOutcomes with the status FHIR R4 gives an update (``PixError.fhir_write_status``):
400 for a body or parameter that cannot be read, 422 for what the manager's rules refuse (an unknown
domain, a merge of an unknown or retired identifier), 403 for a participant without the ``source`` role
or not the domain's source. Each request is audited (pix_manager.auditing.PixAuditor.fhir_feed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from clearinghouse import audit
from clearinghouse.errors import (
    PixError,
    PixInvalidField,
    PixMalformedResource,
    PixMissingField,
    PixUnknownPatientId,
)
from clearinghouse.https import PEER_ENVIRON_KEY
from clearinghouse.peer import Peer
from pix_manager import patients
from pix_manager.auditing import PixAuditor
from pix_manager.fhir import JSON, OID_PREFIX, authority, negotiate, operation_outcome, send
from pix_manager.fhir_patient import PatientBody, media_kind, parse_patient, referenced_id
from pix_manager.identifiers import (
    Identifier,
    PixConfig,
    RawIdentifier,
    audit_cx,
    check_source,
    check_value,
    resolve_domain,
)
from pix_manager.manager import LinkRequest, MergeRequest, PixManager, RemoveRequest

log = logging.getLogger("pix_manager.fhir_feed")

PATIENT_PATH = "/fhir/Patient"
METADATA_PATH = "/fhir/metadata"
MAX_BODY_BYTES = 1 << 20  # a Patient resource; anything larger is not one
FEED_ROLE = "source"  # the role ITI-8 and ITI-44 sources have
READ_ROLES = ("consumer", "source")
PIXM_MANAGER_CAPABILITIES = "https://profiles.ihe.net/ITI/PIXm/CapabilityStatement/IHE.PIXm.Manager"
PIX_OPERATION = "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix"
CAPABILITY_DATE = "2026-11-23"


class _Refused(Exception):
    """An answer decided before any work: status and OperationOutcome (not a PixError: no HL7 meaning)."""

    def __init__(self, status: int, code: str, text: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(text)
        self.status, self.code, self.text, self.headers = status, code, text, list(headers)


def _base(environ: dict[str, Any]) -> str:
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    return f"https://{host}/fhir"


def identifier_param(params: dict[str, list[str]]) -> RawIdentifier:
    """The conditional ``identifier=system|value`` (one, both parts); no other search parameter is
    supported, so a request with another cannot be matched and is refused rather than half-applied."""
    others = sorted(k for k in params if k not in ("identifier", "_format"))
    if others:
        raise PixMalformedResource(
            f"only the identifier search parameter is supported, not {', '.join(others)}", location=others[0]
        )
    values = params.get("identifier", [])
    if len(values) != 1:
        raise PixMissingField("exactly one identifier=system|value parameter is required", location="identifier")
    system, bar, value = values[0].partition("|")
    if not bar or not system or not value:
        raise PixMalformedResource("the identifier parameter must be system|value", location="identifier")
    return RawIdentifier(value, authority(system), "identifier", "identifier")


def _read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if length > MAX_BODY_BYTES:
        raise _Refused(413, "too-costly", f"the request body is larger than {MAX_BODY_BYTES} bytes")
    stream = environ["wsgi.input"]
    data = stream.read(length) if length >= 0 else stream.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise _Refused(413, "too-costly", f"the request body is larger than {MAX_BODY_BYTES} bytes")
    return data


def capability_statement(base: str) -> dict[str, Any]:
    """What this PIX Manager serves at [base] (FHIR R4 capabilitystatement.html), elements in order."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": CAPABILITY_DATE,
        "kind": "instance",
        "instantiates": [PIXM_MANAGER_CAPABILITIES],
        "software": {"name": "ISN Image Clearinghouse PIX Manager"},
        "implementation": {"description": "PIXm Patient Identifier Cross-reference Manager", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "description": "Mutual TLS: a registered participant's certificate; ITI-104 needs the "
                    "source role, ITI-83 and read the consumer role (read: consumer or source).",
                },
                "resource": [
                    {
                        "type": "Patient",
                        "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "delete"}],
                        "versioning": "versioned",
                        "readHistory": False,
                        "updateCreate": False,
                        "conditionalCreate": False,
                        "conditionalRead": "not-supported",
                        "conditionalUpdate": True,
                        "conditionalDelete": "single",
                        "searchParam": [
                            {
                                "name": "identifier",
                                "definition": "http://hl7.org/fhir/SearchParameter/Patient-identifier",
                                "type": "token",
                                "documentation": "conditional update and delete only: the source's "
                                "identifier in its own domain, urn:oid:OID|value",
                            }
                        ],
                        "operation": [{"name": "ihe-pix", "definition": PIX_OPERATION}],
                    }
                ],
            }
        ],
    }


class PatientFeedApp:
    """The WSGI application at /fhir/Patient, /fhir/Patient/{id} and /fhir/metadata."""

    def __init__(self, manager: PixManager, auditor: PixAuditor | None = None) -> None:
        self.manager = manager
        self.auditor = auditor

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        params = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        fmt = negotiate(params.get("_format", []), environ.get("HTTP_ACCEPT", ""))
        if fmt is None:
            return send(start_response, 406, operation_outcome("not-supported", "FHIR JSON and XML are served"), JSON)
        path = (environ.get("PATH_INFO", "") or "/").rstrip("/")
        method = environ.get("REQUEST_METHOD", "GET")
        peer: Peer | None = environ.get(PEER_ENVIRON_KEY)
        try:
            if path == METADATA_PATH:
                if method != "GET":
                    raise _Refused(405, "not-supported", "metadata is read with GET", [("Allow", "GET")])
                if peer is None:
                    raise _Refused(403, "forbidden", "a registered participant's certificate is required")
                return send(start_response, 200, capability_statement(_base(environ)), fmt)
            if path == PATIENT_PATH:
                if method in ("PUT", "DELETE"):
                    return self.feed(environ, start_response, method, peer, params, fmt)
                raise _Refused(
                    405,
                    "not-supported",
                    "Patient takes a conditional update (PUT) or delete (DELETE) by identifier; search is not served",
                    [("Allow", "PUT, DELETE")],
                )
            if method != "GET":
                raise _Refused(405, "not-supported", "Patient resources are read with GET", [("Allow", "GET")])
            return self.read(environ, start_response, path.removeprefix(PATIENT_PATH + "/"), peer, fmt)
        except _Refused as refused:
            return send(
                start_response, refused.status, operation_outcome(refused.code, refused.text), fmt, refused.headers
            )

    # --- ITI-104 ---

    def feed(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        method: str,
        peer: Peer | None,
        params: dict[str, list[str]],
        fmt: str,
    ) -> list[bytes]:
        address, endpoint = environ.get("REMOTE_ADDR", ""), _base(environ) + "/Patient"
        if peer is None or not peer.has_role(FEED_ROLE):
            who = peer.subject if peer is not None else "an unauthenticated client"
            reason = f"{who} may not use ITI-104: role '{FEED_ROLE}' required"
            if self.auditor is not None:
                self.auditor.refused(
                    peer=peer, address=address, endpoint=endpoint, transaction="ITI-104", reason=reason
                )
            return send(start_response, 403, operation_outcome("forbidden", reason), fmt)
        action, patient_id, resource_ref = ("D" if method == "DELETE" else "U"), "", ""
        status, answer, headers = 500, None, []
        try:
            key_raw = identifier_param(params)
            patient_id = audit_cx(key_raw.value, key_raw.authority.universal_id)
            if method == "DELETE":
                status, stored = self._remove(peer, key_raw)
                resource_ref = stored.reference if stored is not None else ""
            else:
                status, stored, answer = self._update(environ, peer, key_raw)
                action = "C" if status == 201 else "U"
                resource_ref = stored.reference
                location = f"{_base(environ)}/{stored.reference}/_history/{stored.version}"
                headers = [
                    ("Location", location),
                    ("ETag", f'W/"{stored.version}"'),
                    ("Last-Modified", format_datetime(stored.updated_at, usegmt=True)),
                ]
                if "return=minimal" in environ.get("HTTP_PREFER", ""):
                    answer = None
            outcome, description = audit.SUCCESS, ""
        except _Refused as refused:
            status, answer, headers = refused.status, operation_outcome(refused.code, refused.text), refused.headers
            outcome, description = audit.SERIOUS_FAILURE, refused.text
        except PixError as exc:
            status = exc.fhir_write_status
            answer = operation_outcome(exc.fhir_code, exc.text, expression=exc.location)
            outcome, description = audit.SERIOUS_FAILURE, f"{status} {exc.fhir_code}: {exc.text}"
            log.info("PIXm ITI-104 %s from %r refused: %s", method, peer.subject, exc.text)
        except Exception:
            log.exception("PIXm ITI-104 %s from %r failed", method, peer.subject)
            status = 500
            answer = operation_outcome("exception", "internal error while storing the patient; send it again")
            outcome, description = audit.SERIOUS_FAILURE, "internal error"
        if self.auditor is not None:
            self.auditor.fhir_feed(
                action=action,
                peer=peer,
                address=address,
                endpoint=endpoint,
                patient_id=patient_id,
                resource=resource_ref,
                outcome=outcome,
                description=description,
            )
        return send(start_response, status, answer, fmt, headers)

    def _resolve_key(self, config: PixConfig, peer: Peer, key_raw: RawIdentifier) -> Identifier:
        """The request's identifier in a configured domain this participant is the source of."""
        domain = resolve_domain(config, key_raw.authority, location="identifier")
        check_source(domain, peer.participant, location="identifier")
        return Identifier(domain.id, check_value(key_raw.value, location="identifier"))

    def _update(
        self, environ: dict[str, Any], peer: Peer, key_raw: RawIdentifier
    ) -> tuple[int, patients.StoredPatient, dict[str, Any]]:
        kind = media_kind(environ.get("CONTENT_TYPE", ""))
        if kind is None:
            raise _Refused(415, "not-supported", "the body must be application/fhir+json or application/fhir+xml")
        body = parse_patient(_read_body(environ), kind)
        with self.manager.engine.connect() as conn:
            config = self.manager.config(conn)
            key = self._resolve_key(config, peer, key_raw)
            existing = patients.find_live(conn, key)
            surviving_raw = self._surviving(conn, config, body)
        if body.id is not None and (existing is None or body.id != existing.logical_id):
            # http.html#cond-update: an id that is not the matched resource's is the client's error;
            # this server assigns ids, so an id with no match is refused as well.
            raise PixMalformedResource(
                f"Patient.id {body.id!r} is not the id of the Patient resource this identifier names", location="id"
            )
        others = [
            RawIdentifier(value, authority(system), f"Patient.identifier[{n}].value", f"Patient.identifier[{n}].system")
            for n, (system, value) in enumerate(body.identifiers)
        ]
        if surviving_raw is not None:
            request: LinkRequest | MergeRequest = MergeRequest([surviving_raw], [key_raw])
        else:
            # The registry hears the HL7 v2 event this stands for, as ITI-44 add/revise (A01/A08).
            request = LinkRequest([key_raw], others, event="A01" if existing is None else "A08")
        self.manager.apply(peer, request, key=None, response=b"")
        with self.manager.engine.connect() as conn:
            config = self.manager.config(conn)
        kept = _kept_identifiers(config, key, others)
        surviving = (
            Identifier(config.by_oid[surviving_raw.authority.universal_id].id, surviving_raw.value)
            if surviving_raw is not None
            else None
        )
        active = False if surviving is not None else (body.active if body.active is not None else True)
        stored, created = self._save(key, kept, active, surviving)
        with self.manager.engine.connect() as conn:
            target = patients.find_live(conn, surviving) if surviving is not None else None
        return (201 if created else 200), stored, patients.to_resource(stored, config, target)

    def _save(
        self, key: Identifier, kept: list[tuple[str, str]], active: bool, surviving: Identifier | None
    ) -> tuple[patients.StoredPatient, bool]:
        # The cross-reference is committed by now; the resource is written after it. Two first PUTs of one
        # identifier racing each other meet at the unique index: the loser updates what the winner created.
        for attempt in (1, 2):
            try:
                with self.manager.engine.begin() as conn:
                    return patients.save(conn, key, kept, active=active, replaced_by=surviving)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _surviving(self, conn: Connection, config: PixConfig, body: PatientBody) -> RawIdentifier | None:
        """The surviving identifier of a replaced-by link (Resolve Duplicate Patient), if the body has one."""
        if not body.replaced_by:
            return None
        if len(body.replaced_by) > 1:
            raise PixInvalidField("a Patient is replaced by one surviving patient, not several", location="link")
        target = body.replaced_by[0]
        if target.system and target.value:
            return RawIdentifier(
                target.value, authority(target.system), "link.other.identifier.value", "link.other.identifier.system"
            )
        logical_id = referenced_id(target.reference) if target.reference else None
        if logical_id is None:
            raise PixMalformedResource(
                "the replaced-by link needs other.identifier (system and value) or a reference to a Patient",
                location="link.other",
            )
        survivor = patients.by_logical_id(conn, logical_id)
        if survivor is None or survivor.deleted:
            raise PixUnknownPatientId(
                f"the replaced-by link references Patient/{logical_id}, which this manager does not hold",
                location="link.other.reference",
            )
        domain = config.by_id[survivor.key.domain_id]
        return RawIdentifier(
            survivor.key.value,
            authority(OID_PREFIX + domain.oid),
            "link.other.reference",
            "link.other.reference",
        )

    def _remove(self, peer: Peer, key_raw: RawIdentifier) -> tuple[int, patients.StoredPatient | None]:
        with self.manager.engine.connect() as conn:
            key = self._resolve_key(self.manager.config(conn), peer, key_raw)
        self.manager.apply(peer, RemoveRequest(key_raw), key=None, response=b"")
        with self.manager.engine.begin() as conn:
            stored = patients.mark_deleted(conn, key)
        # http.html#3.1.0.7.1: success, or nothing matched, is 200 with a body or 204 without one.
        return 204, stored

    # --- read ---

    def read(
        self, environ: dict[str, Any], start_response: Callable[..., Any], rest: str, peer: Peer | None, fmt: str
    ) -> list[bytes]:
        address, endpoint = environ.get("REMOTE_ADDR", ""), _base(environ) + "/Patient"
        if peer is None or not any(peer.has_role(r) for r in READ_ROLES):
            who = peer.subject if peer is not None else "an unauthenticated client"
            reason = f"{who} may not read Patient resources: role 'consumer' or 'source' required"
            if self.auditor is not None:
                self.auditor.refused(peer=peer, address=address, endpoint=endpoint, transaction="", reason=reason)
            return send(start_response, 403, operation_outcome("forbidden", reason), fmt)
        logical_id, _, history = rest.partition("/_history/")
        with self.manager.engine.connect() as conn:
            config = self.manager.config(conn)
            stored = patients.by_logical_id(conn, logical_id) if "/" not in logical_id else None
            surviving = (
                patients.find_live(conn, stored.replaced_by)
                if stored is not None and stored.replaced_by is not None
                else None
            )
        if stored is None or (history and history != str(stored.version)):
            # Only the current version is kept, so an earlier one is as unknown as a wrong id.
            return send(start_response, 404, operation_outcome("not-found", f"no Patient/{rest}"), fmt)
        domain = config.by_id.get(stored.key.domain_id)
        patient_id = audit_cx(stored.key.value, domain.oid) if domain is not None else ""
        if self.auditor is not None:
            self.auditor.fhir_feed(
                action="R",
                peer=peer,
                address=address,
                endpoint=endpoint,
                patient_id=patient_id,
                resource=stored.reference,
                outcome=audit.MINOR_FAILURE if stored.deleted else audit.SUCCESS,
                description="the Patient resource was removed" if stored.deleted else "",
                transaction=None,
            )
        if stored.deleted:
            return send(start_response, 410, operation_outcome("deleted", f"{stored.reference} was removed"), fmt)
        headers = [
            ("ETag", f'W/"{stored.version}"'),
            ("Last-Modified", format_datetime(stored.updated_at, usegmt=True)),
        ]
        return send(start_response, 200, patients.to_resource(stored, config, surviving), fmt, headers)


def _kept_identifiers(config: PixConfig, key: Identifier, others: list[RawIdentifier]) -> list[tuple[str, str]]:
    """What the resource records: the key, then the body's identifiers in configured domains (those the
    cross-reference linked); identifiers of other systems (a national number, a URL) are not kept."""
    out = {(config.by_id[key.domain_id].oid, key.value): None}
    for raw in others:
        domain = config.by_oid.get(raw.authority.universal_id) if raw.authority.universal_id_type == "ISO" else None
        if domain is not None:
            out[(domain.oid, raw.value)] = None
    return list(out)
