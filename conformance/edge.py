"""The reference edge: feeds the patient (ITI-8) and submits a study (ITI-41), as a site's edge
server does, and prints the access code sheet the patient takes home."""

from __future__ import annotations

import datetime as dt
import secrets
import ssl
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

from lxml import etree

from clearinghouse import audit
from clearinghouse.audit import AuditNode, AuditSink, Party
from clearinghouse.mllp import MllpClient
from clearinghouse.rsna_id import compute_rsna_id, patient_cx
from clearinghouse.soap.client import SoapClient, SoapReply
from clearinghouse.soap.mtom import cid_href, content_id_for
from clearinghouse.xmlsafe import NS, qname
from conformance import xds_builder as xb
from conformance.faults import Fault, WithoutStartInfo, wrong_dob
from conformance.study import Study

ITI41_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"  # the alphabet RSNA's edge prints access codes in
DCM_MODALITY_SCHEME = "1.2.840.10008.2.16.4"
DICOM_UID_SCHEME = "1.2.840.10008.2.6.1"
FORMAT_TEXT_REPORT = xb.Code("urn:ihe:rad:TEXT", "1.3.6.1.4.1.19376.1.2.3", "Text report")
FORMAT_PDF_REPORT = xb.Code("urn:ihe:rad:PDF", "1.3.6.1.4.1.19376.1.2.3", "PDF report")


class EdgeError(RuntimeError):
    """The clearinghouse refused the feed or the submission; the message carries its answer."""


def new_access_code() -> str:
    """20 random z-base-32 characters, printed in groups of five."""
    raw = "".join(secrets.choice(ZBASE32) for _ in range(20))
    return "-".join(raw[i : i + 5] for i in range(0, 20, 5))


def feed_message(
    patient_id: str, *, event: str = "A04", control_id: str | None = None, structure: bool = True
) -> bytes:
    """An HL7 v2.5 ADT feed carrying only the affinity-domain patient id: no name, no birth date
    (``structure=False`` leaves MSH-9.3 out, the BAD_FEED fault)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    pid, authority = patient_id.split("^^^", 1)
    segments = [
        f"MSH|^~\\&|ISN-EDGE|SITE|CLEARINGHOUSE|ISN|{now}||ADT^{event}{'^ADT_A01' if structure else ''}|"
        f"{control_id or uuid.uuid4().hex[:20]}|P|2.5",
        f"EVN|{event}|{now}",
        f"PID|||{pid}^^^{authority}",
        "PV1||O",
    ]
    return ("\r".join(segments) + "\r").encode()


def _event_code(modality: str) -> xb.Code:
    return xb.Code(modality, DCM_MODALITY_SCHEME, modality)


def document_specs(study: Study, *, faults: Collection[Fault] = (), repository_unique_id: str) -> list[xb.DocSpec]:
    """One DocumentEntry per DICOM instance (uniqueId = SOP Instance UID, formatCode = SOP Class UID)
    and one for the report, described from what the files say."""
    events = [_event_code(m) for m in study.modalities] or [_event_code("OT")]
    when = next((i.study_datetime for i in study.instances if i.study_datetime), "") or dt.datetime.now(
        dt.UTC
    ).strftime("%Y%m%d%H%M%S")
    specs = []
    for inst in study.instances:
        specs.append(
            xb.DocSpec(
                unique_id=inst.sop_instance_uid,
                mime_type="application/dicom",
                hash=inst.sha1,
                size=inst.size,
                class_code=xb.CLASS_IMAGES,
                type_code=xb.TYPE_IMAGING_STUDY,
                format_code=xb.Code(inst.sop_class_uid, DICOM_UID_SCHEME, "DICOM object"),
                event_codes=[_event_code(inst.modality or "OT")],
                creation_time=inst.study_datetime or when,
                service_start_time=inst.study_datetime or when,
                service_stop_time=None,
                title=inst.description or f"{inst.modality} image",
                reference_ids=[f"{inst.study_instance_uid}^^^^urn:ihe:iti:xds:2013:studyInstanceUID"],
                repository_unique_id=repository_unique_id,
                author_person=None,
            )
        )
    if study.report is not None:
        specs.append(
            xb.DocSpec(
                unique_id=xb.new_oid(),
                mime_type=study.report.mime_type,
                hash=study.report.sha1,
                size=study.report.size,
                class_code=xb.CLASS_REPORTS,
                type_code=xb.TYPE_IMAGING_STUDY,
                format_code=FORMAT_PDF_REPORT if study.report.mime_type == "application/pdf" else FORMAT_TEXT_REPORT,
                event_codes=events,
                creation_time=when,
                service_start_time=when,
                service_stop_time=None,
                title="Radiology report",
                repository_unique_id=repository_unique_id,
                author_person=None,
            )
        )
    if specs and Fault.MISSING_SLOT in faults:
        specs[0].omit = frozenset({"creationTime"})
    if specs and Fault.BAD_HASH in faults:
        specs[0].hash = "0" * 40
    return specs


def provide_and_register_request(
    patient_id: str, study: Study, specs: list[xb.DocSpec], *, source_id: str, inline: bool
) -> tuple[etree._Element, list[tuple[str, str, object]]]:
    """The ITI-41 body, with the documents as MTOM parts streamed from their files (or inline base64)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    sor = xb.submission(patient_id, specs, source_id=source_id, submission_time=now, ss_author_person=None)
    root = etree.Element(qname("xdsb", "ProvideAndRegisterDocumentSetRequest"), nsmap={"xdsb": NS["xdsb"]})
    root.append(sor)
    paths = [i.path for i in study.instances] + ([study.report.path] if study.report else [])
    parts: list[tuple[str, str, object]] = []
    for n, (de_id, path) in enumerate(zip(xb.document_entry_ids(sor), paths, strict=True), start=1):
        doc = etree.SubElement(root, qname("xdsb", "Document"), id=de_id)
        if inline:
            import base64

            doc.text = base64.b64encode(path.read_bytes()).decode()
        else:
            cid = content_id_for(n, "edge.isn")
            etree.SubElement(doc, qname("xop", "Include"), nsmap={"xop": NS["xop"]}, href=cid_href(cid))
            parts.append((cid, "application/octet-stream", path))
    return root, parts


@dataclass
class Submission:
    access_code: str
    dob: str
    password: str | None
    rsna_id: str
    patient_id: str
    study: Study
    unique_ids: list[str]
    reply_status: str


class EdgeSimulator:
    """Talks to a clearinghouse as an edge: ITI-8 over MLLP/TLS, ITI-41 over HTTPS with MTOM."""

    def __init__(
        self,
        repository: SoapClient,
        feed_url: str,
        feed_context: ssl.SSLContext,
        *,
        affinity_domain_oid: str,
        repository_unique_id: str,
        source_id: str = xb.SOURCE_ID,
        faults: Collection[Fault] = (),
        audit: AuditSink | None = None,
        node: AuditNode | None = None,
    ) -> None:
        parts = urlsplit(feed_url)
        if parts.scheme != "mllp+tls" or not parts.hostname or not parts.port:
            raise ValueError(f"{feed_url}: the feed address must look like mllp+tls://host:port")
        if Fault.BAD_MTOM in faults:
            repository = SoapClient(WithoutStartInfo(repository.transport), repository.spool_dir)
        self.repository = repository
        self.feed_host, self.feed_port, self.feed_context = parts.hostname, parts.port, feed_context
        self.oid = affinity_domain_oid
        self.repository_unique_id = repository_unique_id
        self.source_id = source_id
        self.faults = frozenset(faults)
        self.audit = audit
        self.node = node or AuditNode(source_id="ISN-EDGE-SIMULATOR")

    def _audit_export(self, patient_id: str, submission_set_uid: str, ok: bool, reason: str = "") -> None:
        """ITI-41 Export by the Document Source (ITI TF-2b 3.41.5.1.1), unless told not to."""
        if self.audit is None or Fault.NO_AUDIT in self.faults:
            return
        me = Party(self.node.application.user_id, address=self.node.hostname, alt_user_id=self.node.process_id)
        t = self.repository.transport
        host = getattr(t, "host", "in-process")
        repository = Party(f"https://{host}:{getattr(t, 'port', 0)}{getattr(t, 'path', '')}", address=host)
        self.audit.emit(
            audit.provide_and_register(
                audit.SOURCE,
                node=self.node,
                source=me,
                destination=repository,
                patient_id=patient_id,
                submission_set_uid=submission_set_uid,
                outcome=audit.SUCCESS if ok else audit.SERIOUS_FAILURE,
                outcome_description=reason,
            )
        )

    def feed(self, patient_id: str) -> bytes:
        client = MllpClient(self.feed_host, self.feed_port, self.feed_context)
        try:
            ack = client.send(feed_message(patient_id, structure=Fault.BAD_FEED not in self.faults))
        finally:
            client.close()
        if b"MSA|AA|" not in ack:
            raise EdgeError(f"the patient identity feed was not accepted: {ack.decode(errors='replace')!r}")
        return ack

    def submit(
        self,
        patient_id: str,
        study: Study,
        *,
        inline: bool = False,
        specs: list[xb.DocSpec] | None = None,
    ) -> tuple[SoapReply, str]:
        """Send ITI-41 for ``study`` filed under ``patient_id``; returns the reply and the request's MessageID."""
        specs = specs if specs is not None else self.document_specs(study)
        request, parts = provide_and_register_request(patient_id, study, specs, source_id=self.source_id, inline=inline)
        message_id = f"urn:uuid:{uuid.uuid4()}"
        try:
            reply = self.repository.call(
                ITI41_ACTION, request, attachments=parts or None, mtom=not inline, message_id=message_id
            )
        except Exception as exc:
            # A failed export is audited too (ITI TF-2b 3.41.5.1.1: the event records the outcome).
            self._audit_export(patient_id, xb.submission_set_unique_id(request), False, str(exc))
            raise
        reply.close()
        ok = reply.body.get("status") == SUCCESS
        self._audit_export(
            patient_id, xb.submission_set_unique_id(request), ok, "" if ok else str(registry_errors(reply.body))
        )
        return reply, message_id

    def document_specs(self, study: Study) -> list[xb.DocSpec]:
        return document_specs(study, faults=self.faults, repository_unique_id=self.repository_unique_id)

    def send(
        self,
        study: Study,
        *,
        dob: str,
        password: str | None = None,
        access_code: str | None = None,
        inline: bool = False,
    ) -> Submission:
        """What an edge does for one exam: new access code, feed the RSNA-ID, submit the study."""
        code = access_code or new_access_code()
        rsna = compute_rsna_id(code, dob, password)
        patient = patient_cx(rsna, self.oid)
        self.feed(patient)
        submitted_as = patient
        if Fault.WRONG_RSNA_ID in self.faults:
            submitted_as = patient_cx(compute_rsna_id(code, wrong_dob(dob), password), self.oid)
        specs = self.document_specs(study)
        reply, _ = self.submit(submitted_as, study, inline=inline, specs=specs)
        status = reply.body.get("status", "")
        if status != SUCCESS:
            raise EdgeError(f"submission refused: {status}: {registry_errors(reply.body)}")
        return Submission(code, dob, password, rsna, patient, study, [s.unique_id or "" for s in specs], status)


def registry_errors(body: etree._Element) -> list[tuple[str | None, str | None]]:
    return [(e.get("errorCode"), e.get("codeContext")) for e in body.iter(qname("rs", "RegistryError"))]


def access_sheet(sub: Submission, clearinghouse: str) -> str:
    """The sheet a patient takes home: what to type into the PHR, nothing that identifies them."""
    images = len(sub.study.instances)
    lines = [
        "RSNA Image Share - your images are ready",
        "",
        f"  Access code:    {sub.access_code}",
        "  Date of birth:  as registered at the front desk",
        f"  Password:       {'the one you chose' if sub.password else 'none'}",
        "",
        f"  {images} image{'s' if images != 1 else ''}"
        f"{' and the report' if sub.study.report else ''} ({sub.study.total_bytes:,} bytes),"
        f" modalities: {', '.join(sub.study.modalities) or '-'}",
        f"  Clearinghouse: {clearinghouse}",
        f"  Patient ID (RSNA-ID): {sub.patient_id}",
    ]
    return "\n".join(lines)
