"""ITI-43 Retrieve Document Set (ITI TF-2b 3.43.4.2): documents streamed from the store as MTOM parts."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.errors import SEVERITY_ERROR, XDSMissingDocument, XDSRepositoryError, XDSUnknownRepositoryId
from clearinghouse.soap.mtom import cid_href, content_id_for
from clearinghouse.xmlsafe import NS, qname
from repository.models import StoredDocument
from repository.store import DocumentStore

STATUS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
MAX_DOCUMENTS_PER_REQUEST = 1000


@dataclass
class RetrieveResult:
    body: etree._Element
    attachments: list[tuple[str, str, object]]


def _error(errors: etree._Element, code: str, context: str, location: str) -> None:
    etree.SubElement(
        errors,
        qname("rs", "RegistryError"),
        errorCode=code,
        codeContext=context,
        location=location,
        severity=SEVERITY_ERROR,
    )


def retrieve_document_set(
    request: etree._Element,
    *,
    repository_unique_id: str,
    home_community_id: str,
    sessions: sessionmaker[Session],
    store: DocumentStore,
) -> RetrieveResult:
    wanted = request.findall("xdsb:DocumentRequest", NS)
    response = etree.Element(qname("xdsb", "RetrieveDocumentSetResponse"), nsmap={"xdsb": NS["xdsb"], "rs": NS["rs"]})
    registry_response = etree.SubElement(response, qname("rs", "RegistryResponse"))
    errors = etree.Element(qname("rs", "RegistryErrorList"))
    attachments: list[tuple[str, str, object]] = []
    if not wanted or len(wanted) > MAX_DOCUMENTS_PER_REQUEST:
        _error(
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
                _error(
                    errors,
                    XDSUnknownRepositoryId.code,
                    f"repositoryUniqueId {repo_id!r} is not this repository ({repository_unique_id})",
                    doc_id,
                )
                continue
            held = session.scalar(select(StoredDocument).where(StoredDocument.unique_id == doc_id)) if doc_id else None
            if held is None or not store.exists(held.store_key):
                _error(errors, XDSMissingDocument.code, f"document {doc_id!r} is not held by this repository", doc_id)
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
            path = store.path_hint(held.store_key)
            attachments.append((cid, held.mime_type, path if path is not None else _chunks(store, held.store_key)))
    found = len(attachments)
    if len(errors):
        registry_response.append(errors)
        registry_response.set("status", PARTIAL if found else STATUS + "Failure")
    else:
        registry_response.set("status", STATUS + "Success")
    return RetrieveResult(response, attachments)


def _chunks(store: DocumentStore, key: str):  # noqa: ANN202
    return lambda: store.chunks(key)
