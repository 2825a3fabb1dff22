"""PIXv3: ITI-44 Patient Identity Feed HL7 V3 and ITI-45 PIXV3 Query, HL7 v3 messages over SOAP 1.2
(ITI TF-2b 3.44, 3.45; wrappers per ITI TF-2x Appendix O), served at /pix/v3.

ITI-44: PRPA_IN201301UV02 (add), PRPA_IN201302UV02 (revise) and PRPA_IN201304UV02 (merge), each
answered by an MCCI_IN000002UV01 acknowledgement (AA, or AE/AR with acknowledgementDetail carrying
the HL7 table 0357 code and the XPath of what was wrong). ITI-45: PRPA_IN201309UV02 answered by
PRPA_IN201310UV02 with QueryAck OK/NF/AE and the six cases of 3.45.4.2.3.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from copy import deepcopy
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from clearinghouse import audit, hl7
from clearinghouse.config import Settings
from clearinghouse.errors import HL7Error, PixError, PixMissingField
from clearinghouse.soap.endpoint import Operation, SoapEndpoint, SoapRequest, SoapResult
from clearinghouse.xmlsafe import parse_xml
from pix_manager.auditing import PixAuditor
from pix_manager.identifiers import Authority, Identifier, PixConfig, RawIdentifier, audit_cx
from pix_manager.manager import LinkRequest, MergeRequest, MessageKey, PixManager, digest

log = logging.getLogger("pix_manager.v3")

V3 = "urn:hl7-org:v3"
NS = {"hl7": V3}
TNS = "urn:ihe:iti:pixv3:2007"
INTERACTION_ROOT = "2.16.840.1.113883.1.6"
TABLE_0357 = "2.16.840.1.113883.12.357"
ADD, REVISE, MERGE, QUERY = "PRPA_IN201301UV02", "PRPA_IN201302UV02", "PRPA_IN201304UV02", "PRPA_IN201309UV02"
ACK, QUERY_RESPONSE = "MCCI_IN000002UV01", "PRPA_IN201310UV02"


def q(local: str) -> str:
    return f"{{{V3}}}{local}"


def _sub(parent: etree._Element, local: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, q(local), {k: v for k, v in attrs.items() if v is not None})


def _ii(el: etree._Element | None) -> tuple[str, str]:
    if el is None:
        return "", ""
    return (el.get("root") or "").strip(), (el.get("extension") or "").strip()


def _ii_key(el: etree._Element | None) -> str:
    root, ext = _ii(el)
    return f"{root}^{ext}" if ext else root


def _raw_ii(el: etree._Element, where: str) -> RawIdentifier:
    """An II as a patient identifier (ITI TF-2x Appendix E): root the assigning authority's OID,
    extension the identifier in it."""
    root, ext = _ii(el)
    return RawIdentifier(
        ext,
        Authority(universal_id=root, universal_id_type="ISO" if root else ""),
        f"{where}/@extension",
        f"{where}/@root",
    )


class PixV3Service:
    """Builds the /pix/v3 SoapEndpoint; its handlers run ITI-44/45 on the PixManager."""

    def __init__(self, manager: PixManager, settings: Settings, auditor: PixAuditor | None = None) -> None:
        self.manager = manager
        self.settings = settings
        self.auditor = auditor
        # This manager as an HL7 v3 device: the home community's OID, "pix-manager" within it.
        self.device = (settings.home_community_id.removeprefix("urn:oid:"), "pix-manager")

    def endpoint(self) -> SoapEndpoint:
        ops = [
            Operation(
                name=f"PIXManager_{interaction}",
                transaction="ITI-44",
                action=f"urn:hl7-org:v3:{interaction}",
                response_action=f"urn:hl7-org:v3:{ACK}",
                body_tag=q(interaction),
                response_tag=q(ACK),
                role="source",
                handler=self.feed,
            )
            for interaction in (ADD, REVISE, MERGE)
        ]
        ops.append(
            Operation(
                name=f"PIXManager_{QUERY}",
                transaction="ITI-45",
                action=f"urn:hl7-org:v3:{QUERY}",
                response_action=f"urn:hl7-org:v3:{QUERY_RESPONSE}",
                body_tag=q(QUERY),
                response_tag=q(QUERY_RESPONSE),
                role="consumer",
                handler=self.query,
            )
        )
        return SoapEndpoint("PIXManager", TNS, ops, self.settings)

    # --- wrappers (Appendix O) ---

    def _wrapper(self, request: etree._Element, interaction: str) -> etree._Element:
        root = etree.Element(q(interaction), nsmap={None: V3}, ITSVersion="XML_1.0")
        _sub(root, "id", root=str(uuid.uuid4()))
        _sub(root, "creationTime", value=datetime.now(UTC).strftime("%Y%m%d%H%M%S"))
        _sub(root, "interactionId", root=INTERACTION_ROOT, extension=interaction)
        processing = request.find("hl7:processingCode", NS)
        _sub(root, "processingCode", code=(processing.get("code") if processing is not None else None) or "P")
        _sub(root, "processingModeCode", code="T")
        _sub(root, "acceptAckCode", code="NE")
        receiver = _sub(_sub(root, "receiver", typeCode="RCV"), "device", classCode="DEV", determinerCode="INSTANCE")
        their = request.find("hl7:sender/hl7:device/hl7:id", NS)
        their_root, their_ext = _ii(their)
        _sub(receiver, "id", root=their_root or None, extension=their_ext or None)
        if their is None or not their_root:
            receiver.find(q("id")).set("nullFlavor", "UNK")  # type: ignore[union-attr]
        sender = _sub(_sub(root, "sender", typeCode="SND"), "device", classCode="DEV", determinerCode="INSTANCE")
        _sub(sender, "id", root=self.device[0], extension=self.device[1])
        return root

    def _acknowledgement(
        self, parent: etree._Element, request: etree._Element, code: str, errors: Sequence[HL7Error]
    ) -> None:
        ack = _sub(parent, "acknowledgement")
        _sub(ack, "typeCode", code=code)
        target = _sub(ack, "targetMessage")
        root, ext = _ii(request.find("hl7:id", NS))
        _sub(target, "id", root=root or None, extension=ext or None)
        for error in errors:
            detail = _sub(ack, "acknowledgementDetail", typeCode="E")
            _sub(
                detail,
                "code",
                code=error.error_code,
                codeSystem=TABLE_0357,
                displayName=hl7.ERROR_TEXTS.get(error.error_code, "Application error"),
            )
            etree.SubElement(detail, q("text")).text = error.text
            if error.location:
                etree.SubElement(detail, q("location")).text = error.location

    def mcci_ack(self, request: etree._Element, code: str, errors: Sequence[HL7Error] = ()) -> etree._Element:
        root = self._wrapper(request, ACK)
        self._acknowledgement(root, request, code, errors)
        return root

    # --- ITI-44 ---

    def feed(self, req: SoapRequest) -> SoapResult:
        body = req.body
        interaction = etree.QName(body).localname
        message_id = _ii_key(body.find("hl7:id", NS))
        identifiers: list[str] = []
        try:
            request = feed_request(body, interaction)
            if not message_id:
                raise PixMissingField("the message id is missing", location=f"/{interaction}/id")
            sender = "|".join((req.peer.participant, _ii_key(body.find("hl7:sender/hl7:device/hl7:id", NS))))
            content = body.find("hl7:controlActProcess", NS)
            fingerprint = digest(etree.tostring(content, method="c14n"))
            key = MessageKey(sender, message_id, fingerprint, "ITI-44", f"/{interaction}/id")
            applied = self.manager.apply(req.peer, request, key=key, response=etree.tostring(self.mcci_ack(body, "AA")))
            ack = parse_xml(applied.response, max_bytes=len(applied.response), max_depth=64)
            code, description = "AA", "duplicate message" if applied.duplicate else ""
            with self.manager.engine.connect() as conn:
                config = self.manager.config(conn)
            identifiers = [_cx(config, i) for i in applied.identifiers]
        except HL7Error as exc:
            log.info(
                "PIX ITI-44 %s %s from %r: %s %s at %s: %s",
                interaction,
                message_id,
                req.peer.subject,
                exc.ack_code,
                exc.error_code,
                exc.location or "-",
                exc.text,
            )
            code, description = exc.ack_code, f"{exc.error_code}: {exc.text}"
            ack = self.mcci_ack(body, exc.ack_code, [exc])
        except Exception:
            log.exception("PIX ITI-44 %s from %r failed", interaction, req.peer.subject)
            error = HL7Error("internal error while storing the message; send it again", error_code="207")
            code, description = "AE", error.text
            ack = self.mcci_ack(body, "AE", [error])
        if self.auditor is not None:
            self.auditor.v3_feed(
                interaction=interaction,
                peer=req.peer,
                address=req.environ.get("REMOTE_ADDR", ""),
                endpoint=_endpoint(req.environ),
                patient_ids=identifiers or _claimed_ids(body),
                message_id=message_id,
                outcome=audit.SUCCESS if code == "AA" else audit.SERIOUS_FAILURE,
                description=description,
            )
        return SoapResult(ack)

    # --- ITI-45 ---

    def query(self, req: SoapRequest) -> SoapResult:
        body = req.body
        qbp = body.find("hl7:controlActProcess/hl7:queryByParameter", NS)
        errors: list[HL7Error] = []
        found: list[Identifier] = []
        config: PixConfig | None = None
        source: RawIdentifier | None = None
        try:
            source, targets = query_parameters(body)
            answer = self.manager.query(source, targets)
            config, errors = answer.config, list(answer.errors)
            if answer.queried is not None and not targets:
                # 3.45.4.2.3 case 2: without DataSource, identifiers of the other domains.
                found = [i for i in answer.identifiers if i.domain_id != answer.queried.domain_id]
            else:
                found = answer.identifiers
        except PixError as exc:
            errors = [exc]
        status = "AE" if errors else ("OK" if found else "NF")
        response = self._wrapper(body, QUERY_RESPONSE)
        self._acknowledgement(response, body, "AE" if errors else "AA", errors)
        cap = _sub(response, "controlActProcess", classCode="CACT", moodCode="EVN")
        _sub(cap, "code", code="PRPA_TE201310UV02", codeSystem=INTERACTION_ROOT)
        if status == "OK" and config is not None:
            event = _sub(_sub(cap, "subject", typeCode="SUBJ"), "registrationEvent", classCode="REG", moodCode="EVN")
            _sub(event, "id", nullFlavor="NA")
            _sub(event, "statusCode", code="active")
            patient = _sub(_sub(event, "subject1", typeCode="SBJ"), "patient", classCode="PAT")
            for ident in found:
                _sub(patient, "id", root=config.by_id[ident.domain_id].oid, extension=ident.value)
            _sub(patient, "statusCode", code="active")
            person = _sub(patient, "patientPerson", classCode="PSN", determinerCode="INSTANCE")
            _sub(person, "name", nullFlavor="NA")  # no name from any domain is passed on
            custodian = _sub(_sub(event, "custodian", typeCode="CST"), "assignedEntity", classCode="ASSIGNED")
            _sub(custodian, "id", root=self.device[0])
        query_ack = _sub(cap, "queryAck")
        query_id = qbp.find("hl7:queryId", NS) if qbp is not None else None
        if query_id is not None:
            query_ack.append(deepcopy(query_id))
        _sub(query_ack, "queryResponseCode", code=status)
        if qbp is not None:
            cap.append(deepcopy(qbp))
        if self.auditor is not None:
            queried = audit_cx(source.value, source.authority.universal_id) if source is not None else ""
            self.auditor.query(
                transaction="ITI-45",
                peer=req.peer,
                address=req.environ.get("REMOTE_ADDR", ""),
                endpoint=_endpoint(req.environ),
                query=etree.tostring(qbp) if qbp is not None else b"",
                query_id=_ii_key(query_id),
                patient_ids=[queried] + ([_cx(config, i) for i in found] if config else []),
                outcome=audit.SUCCESS if not errors else audit.MINOR_FAILURE,
                description="; ".join(f"{e.error_code}: {e.text}" for e in errors),
            )
        return SoapResult(response)


def feed_request(body: etree._Element, interaction: str) -> LinkRequest | MergeRequest:
    """The identifiers of an ITI-44 message: patient.id (the source's identifiers), asOtherIDs.id
    (linked when their root is a configured domain) and, for a merge, the prior registered ids."""
    base = f"/{interaction}/controlActProcess/subject/registrationEvent"
    event = body.find("hl7:controlActProcess/hl7:subject/hl7:registrationEvent", NS)
    patient = event.find("hl7:subject1/hl7:patient", NS) if event is not None else None
    if patient is None:
        raise PixMissingField(
            "the message has no patient (registrationEvent/subject1/patient)", location=f"{base}/subject1/patient"
        )
    ids = [_raw_ii(el, f"{base}/subject1/patient/id[{n}]") for n, el in enumerate(patient.findall("hl7:id", NS), 1)]
    if not ids:
        raise PixMissingField("the patient has no id", location=f"{base}/subject1/patient/id")
    if interaction != MERGE:
        others_path = "hl7:patientPerson/hl7:asOtherIDs/hl7:id"
        others = [
            _raw_ii(el, f"{base}/subject1/patient/patientPerson/asOtherIDs/id[{n}]")
            for n, el in enumerate(patient.findall(others_path, NS), 1)
        ]
        # The registry is fed with the HL7 v2 event each interaction stands for (ITI TF-2b 3.44.4.1.1).
        return LinkRequest(ids, others, event="A01" if interaction == ADD else "A08")
    prior_path = "hl7:replacementOf/hl7:priorRegistration/hl7:subject1/hl7:priorRegisteredRole/hl7:id"
    where = f"{base}/replacementOf/priorRegistration/subject1/priorRegisteredRole/id"
    prior = [_raw_ii(el, f"{where}[{n}]") for n, el in enumerate(event.findall(prior_path, NS), 1)]  # type: ignore[union-attr]
    if not prior:
        raise PixMissingField("a merge needs the prior registered role's id", location=where)
    return MergeRequest(ids, prior)


def query_parameters(body: etree._Element) -> tuple[RawIdentifier, list[RawIdentifier]]:
    """PatientIdentifier (exactly one, with exactly one value) and the DataSource values."""
    base = f"/{QUERY}/controlActProcess/queryByParameter/parameterList"
    params = body.find("hl7:controlActProcess/hl7:queryByParameter/hl7:parameterList", NS)
    if params is None:
        raise PixMissingField("the query has no parameterList", location=base)
    patient_ids = params.findall("hl7:patientIdentifier", NS)
    values = patient_ids[0].findall("hl7:value", NS) if len(patient_ids) == 1 else []
    if len(values) != 1:
        raise PixMissingField(
            "exactly one patientIdentifier with one value is required", location=f"{base}/patientIdentifier/value"
        )
    root, ext = _ii(values[0])
    where = f"{base}/patientIdentifier/value"
    source = RawIdentifier(ext, Authority(universal_id=root, universal_id_type="ISO" if root else ""), where, where)
    targets = []
    for n, ds in enumerate(params.findall("hl7:dataSource", NS), 1):
        where = f"{base}/dataSource[{n}]/value"
        root, ext = _ii(ds.find("hl7:value", NS))
        targets.append(
            RawIdentifier(ext, Authority(universal_id=root, universal_id_type="ISO" if root else ""), where, where)
        )
    return source, targets


def _cx(config: PixConfig, ident: Identifier) -> str:
    return audit_cx(ident.value, config.by_id[ident.domain_id].oid)


def _claimed_ids(body: etree._Element) -> list[str]:
    """For the audit of a refused feed: the patient ids as the message gave them."""
    out = []
    for el in body.iter(q("id")):
        parent = el.getparent()
        if parent is not None and etree.QName(parent).localname in ("patient", "priorRegisteredRole"):
            root, ext = _ii(el)
            if ext:
                out.append(audit_cx(ext, root))
    return out


def _endpoint(environ: dict[str, Any]) -> str:
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    return f"https://{host}{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}"
