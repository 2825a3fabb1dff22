"""ITI-43 Retrieve Document Set (ITI TF-2b 3.43.4.2): documents streamed from the store as MTOM parts."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.errors import (
    XDSDocumentUniqueIdError,
    XDSRepositoryError,
    XDSUnknownRepositoryId,
)
from clearinghouse.registry_response import add_registry_error
from clearinghouse.soap.mtom import MtomPart, cid_href, content_id_for
from clearinghouse.xmlsafe import NS, qname
from repository.models import StoredDocument
from repository.store import StoredObjectMissing
from repository.store_sealed import SealedStore, UnreadableDocument

STATUS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
MAX_DOCUMENTS_PER_REQUEST = 1000


@dataclass
class RetrieveResult:
    body: etree._Element
    attachments: list[MtomPart]


def retrieve_document_set(
    request: etree._Element,
    *,
    repository_unique_id: str,
    home_community_id: str,
    sessions: sessionmaker[Session],
    store: SealedStore,
) -> RetrieveResult:
    wanted = request.findall("xdsb:DocumentRequest", NS)
    response = etree.Element(qname("xdsb", "RetrieveDocumentSetResponse"), nsmap={"xdsb": NS["xdsb"], "rs": NS["rs"]})
    registry_response = etree.SubElement(response, qname("rs", "RegistryResponse"))
    errors = etree.Element(qname("rs", "RegistryErrorList"))
    attachments: list[MtomPart] = []
    if not wanted or len(wanted) > MAX_DOCUMENTS_PER_REQUEST:
        add_registry_error(
            errors,
            XDSRepositoryError.code,
            f"a RetrieveDocumentSetRequest must hold 1 to {MAX_DOCUMENTS_PER_REQUEST} DocumentRequest elements",
            "RetrieveDocumentSetRequest",
        )
    with sessions() as session:
        for i, req in enumerate(wanted[:MAX_DOCUMENTS_PER_REQUEST], start=1):
            repo_id = (req.findtext("xdsb:RepositoryUniqueId", namespaces=NS) or "").strip()
            doc_id = (req.findtext("xdsb:DocumentUniqueId", namespaces=NS) or "").strip()
            hcid = (req.findtext("xdsb:HomeCommunityId", namespaces=NS) or "").strip()
            if repo_id != repository_unique_id:
                add_registry_error(
                    errors,
                    XDSUnknownRepositoryId.code,
                    f"repositoryUniqueId {repo_id!r} is not this repository ({repository_unique_id})",
                    doc_id,
                )
                continue
            held = session.scalar(select(StoredDocument).where(StoredDocument.unique_id == doc_id)) if doc_id else None
            try:
                if held is None:
                    raise StoredObjectMissing(doc_id)
                # Verified (cheaply, or whole when small) before the response names the document.
                source = store.open(held)
            except StoredObjectMissing:
                # ITI TF-2b 3.43.4.2.3: a document not (or no longer) available is XDSDocumentUniqueIdError.
                add_registry_error(
                    errors,
                    XDSDocumentUniqueIdError.code,
                    f"document {doc_id!r} is not held by this repository (never stored, or removed)",
                    doc_id,
                )
                continue
            except UnreadableDocument as exc:
                add_registry_error(errors, XDSRepositoryError.code, unreadable_context(exc), doc_id)
                continue
            cid = content_id_for(i)
            dr = etree.SubElement(response, qname("xdsb", "DocumentResponse"))
            if hcid:
                etree.SubElement(dr, qname("xdsb", "HomeCommunityId")).text = hcid
            etree.SubElement(dr, qname("xdsb", "RepositoryUniqueId")).text = repo_id
            etree.SubElement(dr, qname("xdsb", "DocumentUniqueId")).text = doc_id
            etree.SubElement(dr, qname("xdsb", "mimeType")).text = held.mime_type
            doc = etree.SubElement(dr, qname("xdsb", "Document"))
            etree.SubElement(doc, qname("xop", "Include"), nsmap={"xop": NS["xop"]}, href=cid_href(cid))
            # The exact plaintext size makes Content-Length exact; a segment failing later aborts the stream.
            attachments.append(MtomPart(cid, held.mime_type, source, held.size))
    found = len(attachments)
    if len(errors):
        registry_response.append(errors)
        registry_response.set("status", PARTIAL if found else STATUS + "Failure")
    else:
        registry_response.set("status", STATUS + "Success")
    return RetrieveResult(response, attachments)


def unreadable_context(exc: UnreadableDocument) -> str:
    """The codeContext for a held document that cannot be served (XDSRepositoryError: the repository
    holds it but cannot produce it; XDSDocumentUniqueIdError would tell the consumer it is not held)."""
    if exc.tampered:
        return f"document {exc.unique_id!r} failed its integrity check at this repository and is not served"
    return f"document {exc.unique_id!r} cannot be decrypted at this repository (key not available)"
