"""What this node audits, derived at the narrowest points of the transport layers: after each SOAP
operation (from its request and response), after each HL7 message over MLLP (from the message and
its ACK), after each refused TLS handshake, and after each SOAP call this node makes as a client.

The ``Auditor`` reads only what a remote peer would see on the wire, so no actor has to know about
auditing beyond the hook its transport already offers. Every method swallows its own errors: a bug
in auditing is logged, never turned into a failed transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lxml import etree

from clearinghouse import audit, hl7
from clearinghouse.audit import AuditMessage, AuditNode, AuditSink, DocumentRef, Party, StudyRef
from clearinghouse.errors import AccessDenied
from clearinghouse.https import PEER_ENVIRON_KEY
from clearinghouse.peer import Peer
from clearinghouse.xmlsafe import NS

if TYPE_CHECKING:
    from clearinghouse.soap.endpoint import Operation, SoapRequest, SoapResult

log = logging.getLogger("clearinghouse.audit")

# ebXML/XDS identifiers the events are read from (ITI TF-3 4.2.5).
SUBMISSION_SET_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SUBMISSION_SET_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
QUERY_PATIENT_SLOTS = ("$XDSDocumentEntryPatientId", "$XDSSubmissionSetPatientId", "$XDSFolderPatientId", "$patientId")
XDSI_NS = "urn:ihe:rad:xdsi-b:2009"
# RAD-68 travels as ITI-41 (same action, same message): what makes it RAD-68 is a DocumentEntry whose
# formatCode is the Key Object Selection SOP Class, the imaging manifest (RAD TF-3 4.68.4.1.2).
FORMAT_CODE_SCHEME = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
KOS_FORMAT_CODE = "1.2.840.10008.5.1.4.1.1.88.59"
STATUS_OUTCOME = {"Success": audit.SUCCESS, "PartialSuccess": audit.MINOR_FAILURE, "Failure": audit.SERIOUS_FAILURE}
ACK_OUTCOME = {"AA": audit.SUCCESS, "CA": audit.SUCCESS}


def _submission(body: etree._Element) -> tuple[str, str]:
    """(patient id, submission set uniqueId) of a SubmitObjectsRequest, or of the one inside ITI-41/RAD-68."""
    patient = uid = ""
    for ident in body.iter(f"{{{NS['rim']}}}ExternalIdentifier"):
        scheme = ident.get("identificationScheme")
        if scheme == SUBMISSION_SET_PATIENT_ID and not patient:
            patient = ident.get("value", "")
        elif scheme == SUBMISSION_SET_UNIQUE_ID and not uid:
            uid = ident.get("value", "")
    return patient, uid


def imaging_submission(body: etree._Element) -> bool:
    """Whether an ITI-41 request carries an imaging manifest, which makes it RAD-68."""
    for c in body.iter(f"{{{NS['rim']}}}Classification"):
        if c.get("classificationScheme") == FORMAT_CODE_SCHEME and c.get("nodeRepresentation") == KOS_FORMAT_CODE:
            return True
    return False


def _query(body: etree._Element) -> tuple[str, str, str]:
    """(stored query id, patient id, home community id) of an AdhocQueryRequest."""
    q = body.find("rim:AdhocQuery", NS)
    if q is None:
        return "", "", ""
    patient = ""
    for slot in q.findall("rim:Slot", NS):
        if slot.get("name") in QUERY_PATIENT_SLOTS:
            value = (slot.findtext("rim:ValueList/rim:Value", default="", namespaces=NS) or "").strip()
            patient = value.strip("()").strip().strip("'")
            break
    return q.get("id", ""), patient, q.get("home", "")


def _documents(root: etree._Element, element: str) -> list[DocumentRef]:
    out = []
    for d in root.iter(f"{{{NS['xdsb']}}}{element}"):
        uid = (d.findtext("xdsb:DocumentUniqueId", default="", namespaces=NS) or "").strip()
        if uid:
            out.append(
                DocumentRef(
                    uid,
                    (d.findtext("xdsb:RepositoryUniqueId", default="", namespaces=NS) or "").strip(),
                    (d.findtext("xdsb:HomeCommunityId", default="", namespaces=NS) or "").strip(),
                )
            )
    return out


def outcome_of(body: etree._Element | None) -> tuple[int, str]:
    """EventOutcomeIndicator and description of an ebRS response (or of one nested, as in ITI-43)."""
    if body is None:
        return audit.MAJOR_FAILURE, "no response"
    status = body.get("status")
    if status is None:
        nested = body.find("rs:RegistryResponse", NS)
        status = nested.get("status") if nested is not None else None
    if status is None:
        return audit.SUCCESS, ""
    outcome = STATUS_OUTCOME.get(status.rsplit(":", 1)[-1], audit.SERIOUS_FAILURE)
    codes = [e.get("errorCode", "") for e in body.iter(f"{{{NS['rs']}}}RegistryError")]
    return outcome, " ".join(dict.fromkeys(c for c in codes if c))


def peer_party(peer: Peer | None, address: str = "") -> Party:
    if peer is None:
        return Party("unknown", address)
    return Party(peer.participant or peer.subject, address, peer.subject)


class Auditor:
    """Builds this node's audit events and emits them to ``sink``."""

    def __init__(self, sink: AuditSink, node: AuditNode) -> None:
        self.sink = sink
        self.node = node

    def emit(self, message: AuditMessage | bytes) -> None:
        self.sink.emit(message)

    def _emit_all(self, build: Callable[[], Iterable[AuditMessage]]) -> None:
        try:
            for message in build():
                self.sink.emit(message)
        except Exception:  # noqa: BLE001 - auditing must never break the transaction it records
            log.exception("could not build an audit event")

    def own_party(self, url: str) -> Party:
        return Party(url, self.node.hostname, alt_user_id=self.node.process_id)

    # --- SOAP server side (SoapEndpoint.audit_hook) ---

    def soap_operation(
        self, op: Operation, request: SoapRequest, result: SoapResult | None, error: BaseException | None
    ) -> None:
        self._emit_all(lambda: self._soap_events(op, request, result, error))

    def _soap_events(
        self, op: Operation, request: SoapRequest, result: SoapResult | None, error: BaseException | None
    ) -> list[AuditMessage]:
        env = request.environ
        here = _endpoint_url(env, self.node.hostname)
        peer = peer_party(request.peer, env.get("REMOTE_ADDR", ""))
        me = self.own_party(here)
        if isinstance(error, AccessDenied):
            return [
                audit.restricted_function(
                    node=self.node, endpoint=here, peer=peer, transaction=op.transaction, reason=str(error)
                )
            ]
        if result is not None:
            outcome, description = outcome_of(result.body)
        else:
            outcome, description = audit.MAJOR_FAILURE, str(error or "no response")
        body = request.body
        t = op.transaction
        common: dict[str, Any] = {"node": self.node, "outcome": outcome, "outcome_description": description}
        if t in ("ITI-41", "RAD-68", "ITI-42"):
            patient, uid = _submission(body)
            build = audit.register_document_set if t == "ITI-42" else audit.provide_and_register
            if t == "ITI-41" and imaging_submission(body):
                t = "RAD-68"  # audited as ITI-41 with the RAD-68 EventTypeCode (RAD TF-3 4.68.4.1.4)
            extra = {} if t == "ITI-42" else {"transaction": t}
            return [
                build(
                    audit.RECIPIENT,
                    source=peer,
                    destination=me,
                    patient_id=patient,
                    submission_set_uid=uid,
                    **extra,
                    **common,
                )
            ]
        if t == "ITI-57":
            patient, uid = _submission(body)
            return [
                audit.update_document_set(
                    audit.RECIPIENT, source=peer, destination=me, patient_id=patient, submission_set_uid=uid, **common
                )
            ]
        if t == "ITI-62":
            ids = [r.get("id", "") for r in body.iter(f"{{{NS['rim']}}}ObjectRef") if r.get("id")]
            return [audit.delete_document_set(source=peer, registry=me, object_ids=ids, **common)]
        if t == "ITI-18":
            query_id, patient, home = _query(body)
            return [
                audit.registry_stored_query(
                    consumer=peer,
                    registry=me,
                    query_id=query_id,
                    query=etree.tostring(body),
                    patient_id=patient,
                    home_community_id=home,
                    **common,
                )
            ]
        if t == "ITI-43":
            returned = _documents(result.body, "DocumentResponse") if result is not None else []
            documents = returned or _documents(body, "DocumentRequest")
            return [
                audit.retrieve_document_set(audit.SOURCE, repository=me, consumer=peer, documents=documents, **common)
            ]
        if t == "ITI-86":
            documents = _documents(body, "DocumentRequest")
            return [audit.remove_documents(administrator=peer, repository=me, documents=documents, **common)]
        if t == "RAD-69":
            studies = [
                StudyRef(s.get("studyInstanceUID", ""))
                for s in body.iter(f"{{{XDSI_NS}}}StudyRequest")
                if s.get("studyInstanceUID")
            ]
            return [
                audit.retrieve_imaging_document_set(audit.SOURCE, source=me, consumer=peer, studies=studies, **common)
            ]
        log.warning("no audit event is defined for %s; transaction not audited", t)
        return []

    # --- SOAP requests refused before dispatch (SoapEndpoint.refusal_hook) ---

    def soap_refused(self, environ: dict[str, Any], reason: str, transaction: str) -> None:
        peer = environ.get(PEER_ENVIRON_KEY)
        party = peer_party(peer, environ.get("REMOTE_ADDR", ""))
        if peer is None:
            party = Party(environ.get("REMOTE_ADDR", "") or "unknown", environ.get("REMOTE_ADDR", ""))
        here = _endpoint_url(environ, self.node.hostname)
        self._emit_all(
            lambda: [
                audit.malformed_request(
                    node=self.node, endpoint=here, peer=party, reason=reason, transaction=transaction
                )
            ]
        )

    # --- SOAP client side (SoapClient.audit_hook): this node as the source of a transaction ---

    def soap_call(
        self, url: str, action: str, body: etree._Element, reply_body: etree._Element | None, error: str
    ) -> None:
        def build() -> list[AuditMessage]:
            if action != "urn:ihe:iti:2007:RegisterDocumentSet-b":
                return []
            outcome, description = outcome_of(reply_body) if reply_body is not None else (audit.SERIOUS_FAILURE, error)
            patient, uid = _submission(body)
            return [
                audit.register_document_set(
                    audit.SOURCE,
                    node=self.node,
                    source=self.own_party(f"{self.node.app_name}@{self.node.hostname}/xds/repository"),
                    destination=Party(url, _host_of(url)),
                    patient_id=patient,
                    submission_set_uid=uid,
                    outcome=outcome,
                    outcome_description=description or error,
                )
            ]

        self._emit_all(build)

    # --- HL7 v2 over MLLP (MllpServer.audit_hook) ---

    def hl7_message(self, listener: str, peer: Peer, address: str, message: bytes, response: bytes) -> None:
        self._emit_all(lambda: self._hl7_events(listener, peer, address, message, response))

    def _hl7_events(
        self, listener: str, peer: Peer, address: str, message: bytes, response: bytes
    ) -> list[AuditMessage]:
        msg = _parse_hl7(message)
        ack = _parse_hl7(response)
        code = ack.get("MSA", 1) if ack is not None else ""
        outcome = ACK_OUTCOME.get(code, audit.SERIOUS_FAILURE)
        description = "" if outcome == audit.SUCCESS else f"ACK {code or '?'}: {_ack_text(ack)}".strip()
        if msg is None or not (msg.message_type == "ADT" or (msg.message_type, msg.trigger_event) == ("QBP", "Q23")):
            if outcome == audit.SUCCESS:
                log.info("no audit event is defined for an accepted HL7 message of this type")
                return []
            # Refused before it reached a transaction: unreadable, or a message type this listener does not take.
            what = f"{msg.message_type}^{msg.trigger_event}" if msg is not None else "unreadable HL7 message"
            host = address.rsplit(":", 1)[0]
            return [
                audit.malformed_request(
                    node=self.node,
                    endpoint=f"mllp+tls://{self.node.hostname}/{listener}",
                    peer=Party(peer.participant or peer.subject or host, host, peer.subject),
                    reason=f"{what}: {description}",
                )
            ]
        sender = Party(
            "|".join((msg.sending_application, msg.sending_facility)), address.rsplit(":", 1)[0], peer.subject
        )
        receiver = Party(
            "|".join((msg.receiving_application, msg.receiving_facility)), self.node.hostname, alt_user_id=listener
        )
        if msg.message_type == "ADT":
            ids = _cx_list(msg, "PID", 3)
            if msg.trigger_event == "A40":
                ids += _cx_list(msg, "MRG", 1)
            return [
                audit.patient_identity_feed(
                    node=self.node,
                    source=sender,
                    destination=receiver,
                    trigger_event=msg.trigger_event,
                    patient_ids=ids,
                    message_control_id=msg.control_id,
                    outcome=outcome,
                    outcome_description=description,
                )
            ]
        if msg.message_type == "QBP" and msg.trigger_event == "Q23":
            qpd = next((s for s in msg.segments("QPD")), None)
            query = msg.separators.field.join(qpd.fields).encode() if qpd is not None else b""
            found = _cx_list(ack, "PID", 3) if ack is not None else []
            return [
                audit.pix_query(
                    node=self.node,
                    consumer=sender,
                    manager=receiver,
                    query=query,
                    message_control_id=msg.control_id,
                    patient_ids=found,
                    outcome=outcome,
                    outcome_description=description,
                )
            ]
        log.info("no audit event is defined for HL7 %s^%s", msg.message_type, msg.trigger_event)
        return []

    def hl7_frame_refused(self, listener: str, peer: Peer, address: str, reason: str) -> None:
        """MllpServer.refusal_hook: a frame refused before any handler read it (too large, cut off)."""
        host = address.rsplit(":", 1)[0]
        self._emit_all(
            lambda: [
                audit.malformed_request(
                    node=self.node,
                    endpoint=f"mllp+tls://{self.node.hostname}/{listener}",
                    peer=Party(peer.participant or peer.subject or host, host, peer.subject),
                    reason=reason,
                )
            ]
        )

    def hl7_refused(self, transaction: str, peer: Peer, reason: str) -> None:
        self._emit_all(
            lambda: [
                audit.restricted_function(
                    node=self.node, endpoint=transaction, peer=peer_party(peer), transaction=transaction, reason=reason
                )
            ]
        )

    # --- TLS (ServerTLS.audit_hook) ---

    def tls_refused(self, address: str, local: str, subject: str, reason: str) -> None:
        def build() -> list[AuditMessage]:
            host = address.rsplit(":", 1)[0]
            peer = Party(subject or address, host, subject)
            events = [
                audit.node_authentication_failure(node=self.node, endpoint=f"tls://{local}", peer=peer, reason=reason)
            ]
            if subject:  # a certificate was presented and refused: a failed login of that identity
                events.append(
                    audit.user_authentication(
                        node=self.node, user=peer, login=True, outcome=audit.MINOR_FAILURE, description=reason
                    )
                )
            return events

        self._emit_all(build)


def _endpoint_url(environ: dict[str, Any], fallback_host: str) -> str:
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', fallback_host)}:{environ.get('SERVER_PORT', '')}"
    return f"https://{host}{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}"


def _host_of(url: str) -> str:
    return urlsplit(url).hostname or ""


def _parse_hl7(data: bytes) -> hl7.Message | None:
    try:
        return hl7.parse_message(data)
    except hl7.MalformedMessage as exc:
        return exc.partial
    except Exception:  # noqa: BLE001 - unreadable bytes: nothing to audit from them
        return None


def _ack_text(ack: hl7.Message | None) -> str:
    if ack is None:
        return ""
    return ack.get("ERR", 8) or ack.get("MSA", 3) or ack.get("ERR", 1, 4, subcomponent=2)


def _cx_list(msg: hl7.Message, segment: str, field: int) -> list[str]:
    """Every CX identifier in ``segment``-``field`` (all occurrences, all repetitions) as ID^^^&OID&TYPE."""
    out = []
    for seg in msg.segments(segment):
        for rep in range(1, seg.repetition_count(field) + 1):
            value = seg.get(field, 1, rep)
            if not value:
                continue
            ns, oid, kind = seg.get(field, 4, rep, 1), seg.get(field, 4, rep, 2), seg.get(field, 4, rep, 3)
            out.append(f"{value}^^^{ns}&{oid}&{kind}" if oid else (f"{value}^^^{ns}" if ns else value))
    return out
