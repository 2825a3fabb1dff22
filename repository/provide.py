"""ITI-41 Provide and Register Document Set-b (ITI TF-2b 3.41.4.1.3), and RAD-68 on top of it.

The repository stores each document, fills in size, hash and repositoryUniqueId, and registers
the metadata with the registry through ITI-42. A submission that fails at any step leaves
nothing behind: stored files and rows are removed before the error is answered.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import etree
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.config import Settings
from clearinghouse.db import transaction
from clearinghouse.errors import (
    RegistryErrorItem,
    XdsError,
    XDSMissingDocument,
    XDSMissingDocumentMetadata,
    XDSNonIdenticalHash,
    XDSRepositoryDuplicateUniqueIdInMessage,
    XDSRepositoryError,
    XDSRepositoryMetadataError,
)
from clearinghouse.soap.mtom import MtomMessage, is_xop_include
from clearinghouse.soap.spool import SpoolFile, SpoolWriter
from clearinghouse.xmlsafe import NS, qname
from repository.imaging import SubmittedDocument, check_imaging_submission, index_rows
from repository.models import DicomInstance, StoredDocument
from repository.store_sealed import SealedStore

log = logging.getLogger("repository.provide")

DOCUMENT_ENTRY_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
DOCUMENT_ENTRY_TYPES = {
    "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1",  # stable
}

# Registers the (completed) SubmitObjectsRequest with the registry and returns its RegistryResponse.
RegisterFn = Callable[[etree._Element], etree._Element]


@dataclass
class IncomingDocument:
    entry_id: str
    unique_id: str
    mime_type: str
    path: Path
    size: int
    sha1: str
    extrinsic: etree._Element
    # The sealed spool file (its key in memory only); None only for a plaintext file.
    spool: SpoolFile | None = None


def _slot_values(obj: etree._Element, name: str) -> list[str]:
    return [v.text or "" for v in obj.findall(f"rim:Slot[@name='{name}']/rim:ValueList/rim:Value", NS)]


def _set_slot(obj: etree._Element, name: str, value: str) -> None:
    for old in obj.findall(f"rim:Slot[@name='{name}']", NS):
        obj.remove(old)
    slot = etree.Element(qname("rim", "Slot"), name=name)
    etree.SubElement(etree.SubElement(slot, qname("rim", "ValueList")), qname("rim", "Value")).text = value
    # ebRIM orders Slots before Name/Description/Classification children.
    first_non_slot = next((i for i, c in enumerate(obj) if c.tag != qname("rim", "Slot")), len(obj))
    obj.insert(first_non_slot, slot)


def _unique_id(obj: etree._Element) -> str:
    for ei in obj.findall("rim:ExternalIdentifier", NS):
        if ei.get("identificationScheme") == DOCUMENT_ENTRY_UNIQUE_ID:
            return (ei.get("value") or "").strip()
    return ""


def _spool_inline(text: str, spool_dir: Path, limit: int) -> tuple[Path, int, str, SpoolFile]:
    """Decode inline base64 content to a sealed spool file, computing size and SHA-1 as it goes."""
    fh = SpoolWriter(spool_dir, prefix="inline-")
    name = fh.path
    sha, size = hashlib.sha1(), 0
    compact = "".join(text.split())
    try:
        with fh:
            step = 4 * 65536
            for i in range(0, len(compact), step):
                block = base64.b64decode(compact[i : i + step], validate=True)
                size += len(block)
                if size > limit:
                    raise XDSRepositoryError(f"inline document exceeds {limit} bytes: send it as an MTOM attachment")
                sha.update(block)
                fh.write(block)
    except (binascii.Error, ValueError) as exc:
        fh.discard()
        raise XDSRepositoryError(f"Document content is not valid base64: {exc}") from exc
    except BaseException:
        fh.discard()
        raise
    assert fh.spool is not None
    return name, size, sha.hexdigest(), fh.spool


def collect_documents(
    request: etree._Element, mtom: MtomMessage | None, settings: Settings
) -> tuple[etree._Element, list[IncomingDocument]]:
    """Pair each DocumentEntry with its Document and bring every document's bytes to a spool file."""
    sor = request.find("lcm:SubmitObjectsRequest", NS)
    if sor is None:
        raise XDSRepositoryError("ProvideAndRegisterDocumentSetRequest has no lcm:SubmitObjectsRequest")
    entries = {eo.get("id", ""): eo for eo in sor.iterfind("rim:RegistryObjectList/rim:ExtrinsicObject", NS)}
    docs = request.findall("xdsb:Document", NS)
    by_id: dict[str, etree._Element] = {}
    errors: list[RegistryErrorItem] = []
    for d in docs:
        did = d.get("id", "")
        if did in by_id:
            errors.append(RegistryErrorItem(XDSRepositoryError.code, f"Document id {did!r} appears twice", did))
        by_id[did] = d
    for did in by_id:
        if did not in entries:
            errors.append(
                RegistryErrorItem(
                    XDSMissingDocumentMetadata.code,
                    f"Document {did!r} has no matching DocumentEntry (ExtrinsicObject)",
                    did,
                )
            )
    for eid in entries:
        if eid not in by_id:
            errors.append(
                RegistryErrorItem(XDSMissingDocument.code, f"DocumentEntry {eid!r} has no attached Document", eid)
            )
    if errors:
        raise XdsError.many(errors)

    incoming: list[IncomingDocument] = []
    try:
        for eid, eo in entries.items():
            doc = by_id[eid]
            includes = [c for c in doc if is_xop_include(c)]
            if includes:
                if mtom is None:
                    raise XDSRepositoryError(f"Document {eid!r} uses xop:Include but the message is not MTOM")
                try:
                    att = mtom.resolve_cid(includes[0].get("href", ""))
                except (KeyError, ValueError) as exc:
                    raise XDSRepositoryError(f"Document {eid!r}: {exc}") from exc
                path, size, sha1, spool = att.claim(), att.size, att.sha1, att.spool
            else:
                path, size, sha1, spool = _spool_inline(
                    doc.text or "", settings.spool_dir, settings.max_inline_document_bytes
                )
            incoming.append(
                IncomingDocument(eid, _unique_id(eo), eo.get("mimeType", ""), path, size, sha1, eo, spool=spool)
            )
    except BaseException:
        for doc_ in incoming:
            doc_.path.unlink(missing_ok=True)
        raise
    return sor, incoming


def check_and_complete(documents: list[IncomingDocument], repository_unique_id: str) -> None:
    """Verify the source's size/hash against the bytes received, then record the repository's values."""
    errors: list[RegistryErrorItem] = []
    seen: set[str] = set()
    for d in documents:
        where = f"DocumentEntry {d.entry_id} (uniqueId {d.unique_id or '?'})"
        if d.unique_id and d.unique_id in seen:
            errors.append(
                RegistryErrorItem(
                    XDSRepositoryDuplicateUniqueIdInMessage.code,
                    f"{where}: uniqueId used twice in this submission",
                    d.entry_id,
                )
            )
        seen.add(d.unique_id)
        if not d.unique_id:
            errors.append(
                RegistryErrorItem(
                    XDSRepositoryMetadataError.code,
                    f"{where}: external identifier XDSDocumentEntry.uniqueId ({DOCUMENT_ENTRY_UNIQUE_ID}) is required",
                    d.entry_id,
                )
            )
        hashes = _slot_values(d.extrinsic, "hash")
        if hashes and hashes[0].strip().lower() != d.sha1:
            errors.append(
                RegistryErrorItem(
                    XDSRepositoryMetadataError.code,
                    f"{where}: hash slot {hashes[0]!r} does not match the SHA-1 of the document received ({d.sha1})",
                    d.entry_id,
                )
            )
        sizes = _slot_values(d.extrinsic, "size")
        if sizes and sizes[0].strip() != str(d.size):
            errors.append(
                RegistryErrorItem(
                    XDSRepositoryMetadataError.code,
                    f"{where}: size slot {sizes[0]!r} does not match the {d.size} bytes received",
                    d.entry_id,
                )
            )
        if not d.mime_type:
            errors.append(
                RegistryErrorItem(
                    XDSRepositoryMetadataError.code, f"{where}: mimeType attribute is required", d.entry_id
                )
            )
    if errors:
        raise XdsError.many(errors)
    for d in documents:
        _set_slot(d.extrinsic, "size", str(d.size))
        _set_slot(d.extrinsic, "hash", d.sha1)
        _set_slot(d.extrinsic, "repositoryUniqueId", repository_unique_id)


def _check_existing(session: Session, documents: list[IncomingDocument]) -> list[IncomingDocument]:
    """Documents already held keep their bytes; a different document under the same uniqueId is refused."""
    fresh = []
    for d in documents:
        held = session.scalar(select(StoredDocument).where(StoredDocument.unique_id == d.unique_id))
        if held is None:
            fresh.append(d)
        elif held.sha1 != d.sha1:
            raise XDSNonIdenticalHash(
                f"DocumentEntry {d.entry_id} (uniqueId {d.unique_id}): a different document with this uniqueId "
                "is already stored",
                d.entry_id,
            )
    return fresh


def provide_and_register(
    request: etree._Element,
    mtom: MtomMessage | None,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    store: SealedStore,
    register: RegisterFn,
    submitter: str | None = None,
) -> etree._Element:
    """Run ITI-41 (and RAD-68, the same message carrying an imaging manifest) and return the
    RegistryResponse to answer. XdsErrors propagate to the caller. ``submitter`` (the participant
    that sent the documents) travels to the registry in the submitter slot, so that it, not the
    repository, owns the registered objects."""
    sor, documents = collect_documents(request, mtom, settings)
    stored: list[tuple[str, str]] = []  # (unique_id, store_key) written by this submission
    try:
        check_and_complete(documents, settings.repository_unique_id)
        now = dt.datetime.now(dt.UTC)
        with transaction(sessions) as session:
            instances = check_imaging_submission(
                [
                    SubmittedDocument(d.entry_id, d.unique_id, d.mime_type, d.path, d.extrinsic, spool=d.spool)
                    for d in documents
                ],
                session,
                settings.repository_unique_id,
            )
            fresh = _check_existing(session, documents)
            # Sealing a large document takes a while: store every one before the first row is
            # written, so the transaction holds no write lock (SQLite: the database's) meanwhile.
            held = {}
            for d in fresh:
                held[d.unique_id] = at_rest = store.put(d.path, d.size, spool=d.spool)
                stored.append((d.unique_id, at_rest.key))
            for d in fresh:
                at_rest = held[d.unique_id]
                session.add(
                    StoredDocument(
                        unique_id=d.unique_id,
                        size=d.size,
                        sha1=d.sha1,
                        mime_type=d.mime_type,
                        store_key=at_rest.key,
                        created_at=now,
                        encryption=at_rest.encryption,
                        kek_id=at_rest.kek_id,
                        wrapped_dek=at_rest.wrapped_dek,
                    )
                )
                if d.unique_id in instances:
                    session.flush()  # the instance row references the document row
                    session.add(index_rows(d.unique_id, instances[d.unique_id]))
        if submitter:
            _mark_submitter(sor, submitter)
        response = register(sor)
        status = response.get("status", "")
        if not status.endswith(":Success"):
            _undo(sessions, store, stored)
        return response
    except BaseException:
        _undo(sessions, store, stored)
        raise
    finally:
        for d in documents:
            d.path.unlink(missing_ok=True)  # no-op for documents moved into the store


# Extra metadata (a URN-named slot, ITI TF-3 4.2.3.1.5) by which this repository tells the registry
# which participant sent the submission it relays; the in-process registry trusts it from this
# repository only, and does not store it.
SUBMITTER_SLOT = "urn:isn:clearinghouse:submitter"
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"


def _mark_submitter(sor: etree._Element, participant: str) -> None:
    ss_ids = {
        c.get("classifiedObject")
        for c in sor.iter(qname("rim", "Classification"))
        if c.get("classificationNode") == SUBMISSION_SET_NODE
    }
    for package in sor.iterfind("rim:RegistryObjectList/rim:RegistryPackage", NS):
        if package.get("id") in ss_ids:
            _set_slot(package, SUBMITTER_SLOT, participant)


def _undo(sessions: sessionmaker[Session], store: SealedStore, stored: list[tuple[str, str]]) -> None:
    if not stored:
        return
    try:
        with transaction(sessions) as session:
            gone = [u for u, _ in stored]
            session.execute(delete(DicomInstance).where(DicomInstance.document_unique_id.in_(gone)))
            session.execute(delete(StoredDocument).where(StoredDocument.unique_id.in_(gone)))
    finally:
        for _, key in stored:
            store.delete(key)
    log.info("rolled back %d stored document(s) of a failed submission", len(stored))
    stored.clear()
