"""XDS-I.b at the repository: RAD-68 Provide and Register Imaging Document Set (checks on top of
ITI-41) and RAD-69 Retrieve Imaging Document Set.

RAD-68 travels as ITI-41 (same action and message); what makes a submission RAD-68 is a
DocumentEntry whose formatCode is the KOS SOP Class: the imaging manifest. In this clearinghouse the
edge sends the images with their manifest, so the repository indexes every DICOM document it stores
by Study / Series / SOP Instance UID, and RAD-69 serves them by those UIDs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.errors import (
    RegistryErrorItem,
    XdsError,
    XDSMissingDocument,
    XDSRepositoryError,
    XDSRepositoryMetadataError,
    XDSUnknownRepositoryId,
)
from clearinghouse.registry_response import add_registry_error
from clearinghouse.soap.mtom import MtomPart, cid_href, content_id_for
from clearinghouse.soap.spool import SpoolFile, SpoolWriter, iter_plaintext
from clearinghouse.xmlsafe import NS, qname
from repository import kos
from repository.dicom import InstanceInfo, NotDicom, instance_info, read_dataset, transcode_stream, transcode_target
from repository.models import DicomInstance, StoredDocument
from repository.retrieve import unreadable_context
from repository.store import StoredObjectMissing
from repository.store_sealed import SealedStore, UnreadableDocument

XDSI = "urn:ihe:rad:xdsi-b:2009"
DICOM_MIME_TYPE = "application/dicom"
FORMAT_CODE_SCHEME = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
STATUS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
MAX_INSTANCES_PER_REQUEST = 10000


def format_codes(extrinsic: etree._Element) -> list[str]:
    """The formatCode values (nodeRepresentation) of a DocumentEntry element."""
    return [
        c.get("nodeRepresentation", "")
        for c in extrinsic.findall(f"{{{NS['rim']}}}Classification")
        if c.get("classificationScheme") == FORMAT_CODE_SCHEME
    ]


@dataclass
class SubmittedDocument:
    """What RAD-68 needs to know of one document of an ITI-41 submission."""

    entry_id: str
    unique_id: str
    mime_type: str
    path: Path
    extrinsic: etree._Element
    spool: SpoolFile | None = None  # the sealed spool file holding ``path``'s content, when sealed

    def open(self) -> BinaryIO:
        """The plaintext content (seekable), whether the spool file is sealed or not."""
        return self.spool.open() if self.spool is not None else open(self.path, "rb")  # type: ignore[return-value]

    @property
    def is_manifest(self) -> bool:
        return kos.KOS_SOP_CLASS in format_codes(self.extrinsic)


def _error(doc: SubmittedDocument, message: str) -> RegistryErrorItem:
    return RegistryErrorItem(
        XDSRepositoryMetadataError.code,
        f"DocumentEntry {doc.entry_id} (uniqueId {doc.unique_id}): {message}",
        doc.entry_id,
    )


def held_instances(session: Session, sop_instance_uids: Iterable[str]) -> dict[str, list[InstanceInfo]]:
    """Instances the repository already holds, by SOP Instance UID."""
    found: dict[str, list[InstanceInfo]] = {}
    wanted = sorted(set(sop_instance_uids))
    for i in range(0, len(wanted), 500):
        rows = session.scalars(select(DicomInstance).where(DicomInstance.sop_instance_uid.in_(wanted[i : i + 500])))
        for r in rows:
            info = InstanceInfo(r.study_uid, r.series_uid, r.sop_instance_uid, r.sop_class_uid, r.transfer_syntax_uid)
            found.setdefault(r.sop_instance_uid, []).append(info)
    return found


def check_imaging_submission(
    documents: Sequence[SubmittedDocument], session: Session, repository_unique_id: str
) -> dict[str, InstanceInfo]:
    """Index the DICOM documents of a submission and, when it carries a manifest (RAD-68), validate
    the manifest and require every instance it references to be held. Returns uniqueId -> instance
    for the DICOM documents; raises XdsError (XDSRepositoryMetadataError) listing every problem.

    In a plain ITI-41 submission a document labelled application/dicom that is not DICOM is stored
    as sent (a repository does not judge content); in RAD-68 every DICOM document must be one.
    """
    imaging = any(d.is_manifest for d in documents)
    errors: list[RegistryErrorItem] = []
    instances: dict[str, InstanceInfo] = {}
    datasets = {}
    for doc in documents:
        if doc.mime_type != DICOM_MIME_TYPE and not doc.is_manifest:
            continue
        try:
            with doc.open() as fh:
                ds = read_dataset(fh)
            instances[doc.unique_id] = instance_info(ds)
            datasets[doc.unique_id] = ds
        except NotDicom as exc:
            if imaging:
                errors.append(_error(doc, f"{exc} (mimeType {doc.mime_type})"))
    submitted: dict[str, list[InstanceInfo]] = {}
    for info in instances.values():
        submitted.setdefault(info.sop_instance_uid, []).append(info)
    for doc in documents:
        if not doc.is_manifest:
            continue
        if doc.mime_type != DICOM_MIME_TYPE:
            errors.append(_error(doc, f"an imaging manifest has mimeType {DICOM_MIME_TYPE}, not {doc.mime_type}"))
        ds = datasets.get(doc.unique_id)
        if ds is None:
            continue
        problems = kos.check_manifest(ds, unique_id=doc.unique_id, repository_unique_id=repository_unique_id)
        refs, _gaps = kos.evidence(ds)
        held = held_instances(session, [r.sop_instance_uid for r in refs])
        for uid, infos in submitted.items():
            held.setdefault(uid, []).extend(infos)
        problems += kos.check_references_held(refs, held)
        errors += [_error(doc, f"imaging manifest: {p}") for p in problems]
    if errors:
        raise XdsError.many(errors)
    return instances


def index_rows(unique_id: str, info: InstanceInfo) -> DicomInstance:
    return DicomInstance(
        document_unique_id=unique_id,
        study_uid=info.study_uid,
        series_uid=info.series_uid,
        sop_instance_uid=info.sop_instance_uid,
        sop_class_uid=info.sop_class_uid,
        transfer_syntax_uid=info.transfer_syntax_uid,
    )


# --- RAD-69 --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceRequest:
    study_uid: str
    series_uid: str
    repository_unique_id: str
    sop_instance_uid: str
    home_community_id: str


def parse_request(request: etree._Element) -> tuple[list[InstanceRequest], list[str], list[str]]:
    """The instances asked for, the transfer syntaxes accepted, and what is malformed
    (RAD TF-3 4.69.4.1.2: Study > Series > DocumentRequest, and a TransferSyntaxUIDList)."""
    problems: list[str] = []
    wanted: list[InstanceRequest] = []
    studies = request.findall(f"{{{XDSI}}}StudyRequest")
    if not studies:
        problems.append("a RetrieveImagingDocumentSetRequest holds at least one StudyRequest")
    for study in studies:
        study_uid = (study.get("studyInstanceUID") or "").strip()
        if not study_uid:
            problems.append("a StudyRequest has no studyInstanceUID")
        series_list = study.findall(f"{{{XDSI}}}SeriesRequest")
        if not series_list:
            problems.append(f"StudyRequest {study_uid} holds no SeriesRequest")
        for series in series_list:
            series_uid = (series.get("seriesInstanceUID") or "").strip()
            if not series_uid:
                problems.append(f"a SeriesRequest of study {study_uid} has no seriesInstanceUID")
            docs = series.findall("xdsb:DocumentRequest", NS)
            if not docs:
                problems.append(f"SeriesRequest {series_uid} holds no DocumentRequest")
            for doc in docs:
                wanted.append(
                    InstanceRequest(
                        study_uid,
                        series_uid,
                        (doc.findtext("xdsb:RepositoryUniqueId", namespaces=NS) or "").strip(),
                        (doc.findtext("xdsb:DocumentUniqueId", namespaces=NS) or "").strip(),
                        (doc.findtext("xdsb:HomeCommunityId", namespaces=NS) or "").strip(),
                    )
                )
    syntaxes = [
        (t.text or "").strip()
        for t in request.findall(f"{{{XDSI}}}TransferSyntaxUIDList/{{{XDSI}}}TransferSyntaxUID")
        if (t.text or "").strip()
    ]
    if not syntaxes:
        problems.append("TransferSyntaxUIDList must name at least one TransferSyntaxUID")
    if len(wanted) > MAX_INSTANCES_PER_REQUEST:
        problems.append(f"at most {MAX_INSTANCES_PER_REQUEST} instances per request")
    return wanted, syntaxes, problems


@dataclass
class ImagingRetrieveResult:
    body: etree._Element
    attachments: list[MtomPart]


def _not_supported(
    uid: str, instance: DicomInstance, syntaxes: Sequence[str], reason: BaseException | None = None
) -> str:
    """codeContext for an instance none of whose accepted transfer syntaxes can be produced
    (RAD TF-3 4.69.4.2.3)."""
    why = f" ({reason})" if reason is not None else ""
    return (
        f"transfer syntax not supported: instance {uid} is held in transfer syntax "
        f"{instance.transfer_syntax_uid} and cannot be provided in any of {', '.join(syntaxes)}{why}"
    )


def _streamed_then_deleted(spool: SpoolFile) -> Iterator[bytes]:
    try:
        yield from iter_plaintext(spool)
    finally:
        spool.path.unlink(missing_ok=True)


def _sealed_reencoded(store: SealedStore, held: StoredDocument, target: str, spool_dir: Path) -> SpoolFile:
    """The instance re-encoded in ``target``, as a sealed spool file (the caller deletes it).

    pydicom reads a file out of order, so the verified plaintext goes to a sealed spool first; both
    that copy and the re-encoded one are sealed under keys held only in memory, so no plaintext of
    the instance is ever on disk (docs/storage.md). UnreadableDocument, or ValueError and the other
    errors of ``transcode_stream``."""
    source = SpoolWriter(spool_dir, prefix="rad69-in-")
    try:
        with source:
            for block in store.plaintext(held):
                source.write(block)
        assert source.spool is not None
        out = SpoolWriter(spool_dir, prefix="rad69-")
        try:
            with source.spool.open() as fh:
                transcode_stream(fh, target, out)  # type: ignore[arg-type]
            out.close()
        except BaseException:
            out.discard()
            raise
        assert out.spool is not None
        return out.spool
    finally:
        source.discard()


def retrieve_imaging_document_set(
    request: etree._Element,
    *,
    repository_unique_id: str,
    sessions: sessionmaker[Session],
    store: SealedStore,
    spool_dir: Path,
) -> ImagingRetrieveResult:
    """RAD-69: every instance asked for, in one of the transfer syntaxes accepted, as MTOM parts of
    an ITI-43 style RetrieveDocumentSetResponse; a RegistryError (location: the SOP Instance UID)
    for each one that cannot be served, PartialSuccess when some could."""
    wanted, syntaxes, problems = parse_request(request)
    response = etree.Element(qname("xdsb", "RetrieveDocumentSetResponse"), nsmap={"xdsb": NS["xdsb"], "rs": NS["rs"]})
    registry_response = etree.SubElement(response, qname("rs", "RegistryResponse"))
    errors = etree.Element(qname("rs", "RegistryErrorList"))
    attachments: list[MtomPart] = []
    for problem in problems:
        add_registry_error(errors, XDSRepositoryError.code, problem, "RetrieveImagingDocumentSetRequest")
    if problems:
        wanted = []
    with sessions() as session:
        for i, item in enumerate(wanted, start=1):
            uid = item.sop_instance_uid
            if item.repository_unique_id != repository_unique_id:
                add_registry_error(
                    errors,
                    XDSUnknownRepositoryId.code,
                    f"repositoryUniqueId {item.repository_unique_id!r} is not this repository ({repository_unique_id})",
                    uid,
                )
                continue
            found = session.execute(
                select(DicomInstance, StoredDocument)
                .join(StoredDocument, StoredDocument.unique_id == DicomInstance.document_unique_id)
                .where(
                    DicomInstance.sop_instance_uid == uid,
                    DicomInstance.series_uid == item.series_uid,
                    DicomInstance.study_uid == item.study_uid,
                )
                .order_by(StoredDocument.created_at.desc())
            ).first()
            try:
                if found is None:
                    raise StoredObjectMissing(uid)
                # Every read goes through the verifying (decrypting) reader, checked before the response names it.
                verified = store.open(found[1])
            except StoredObjectMissing:
                add_registry_error(
                    errors,
                    XDSMissingDocument.code,
                    f"no instance {uid!r} in series {item.series_uid} of study {item.study_uid} is held here",
                    uid,
                )
                continue
            except UnreadableDocument as exc:
                add_registry_error(errors, XDSRepositoryError.code, unreadable_context(exc), uid)
                continue
            instance, held = found
            source: object
            if instance.transfer_syntax_uid in syntaxes:
                part_source = verified
                size = held.size
            else:
                target = transcode_target(instance.transfer_syntax_uid, syntaxes)
                if target is None:
                    add_registry_error(errors, XDSRepositoryError.code, _not_supported(uid, instance, syntaxes), uid)
                    continue
                try:
                    copy = _sealed_reencoded(store, held, target, spool_dir)
                except UnreadableDocument as exc:
                    add_registry_error(errors, XDSRepositoryError.code, unreadable_context(exc), uid)
                    continue
                except (ValueError, NotImplementedError, RuntimeError, AttributeError, KeyError) as exc:
                    # pydicom refuses pixel data it cannot encode (e.g. RLE of 64-bit samples).
                    add_registry_error(
                        errors, XDSRepositoryError.code, _not_supported(uid, instance, syntaxes, exc), uid
                    )
                    continue
                size = copy.size
                part_source = lambda p=copy: _streamed_then_deleted(p)  # noqa: E731 - bound per part
            source = part_source
            cid = content_id_for(i)
            dr = etree.SubElement(response, qname("xdsb", "DocumentResponse"))
            if item.home_community_id:
                etree.SubElement(dr, qname("xdsb", "HomeCommunityId")).text = item.home_community_id
            etree.SubElement(dr, qname("xdsb", "RepositoryUniqueId")).text = repository_unique_id
            etree.SubElement(dr, qname("xdsb", "DocumentUniqueId")).text = uid
            etree.SubElement(dr, qname("xdsb", "mimeType")).text = DICOM_MIME_TYPE
            document = etree.SubElement(dr, qname("xdsb", "Document"))
            etree.SubElement(document, qname("xop", "Include"), nsmap={"xop": NS["xop"]}, href=cid_href(cid))
            attachments.append(MtomPart(cid, DICOM_MIME_TYPE, source, size))  # type: ignore[arg-type]
    if len(errors):
        registry_response.append(errors)
        registry_response.set("status", PARTIAL if attachments else STATUS + "Failure")
    else:
        registry_response.set("status", STATUS + "Success")
    return ImagingRetrieveResult(response, attachments)
