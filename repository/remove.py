"""ITI-86 Remove Documents (RMD profile, ITI TF-2b 3.86): the Document Administrator asks the
repository to remove stored documents, named as in ITI-43 by DocumentRequest elements
(RepositoryUniqueId, DocumentUniqueId, optional HomeCommunityId); the answer is a
RegistryResponse: Success when every document was removed, PartialSuccess when some were, Failure
when none; each document not removed is a RegistryError located at its uniqueId
(XDSUnknownRepositoryId for another repository, XDSDocumentUniqueIdError for one not held).

The rows go in one transaction first, the bytes after it commits: a crash in between leaves bytes
that no row names, which nobody can retrieve (a failed byte deletion is logged with its key).

Also the listing the retention sweep needs: which documents the repository holds that were stored
before a given time (``held_before``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from lxml import etree
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.db import transaction
from clearinghouse.errors import XDSDocumentUniqueIdError, XDSRepositoryError, XDSUnknownRepositoryId
from clearinghouse.registry_response import add_registry_error
from clearinghouse.xmlsafe import NS, qname
from repository.models import DicomInstance, StoredDocument

log = logging.getLogger("repository.remove")

RMD_NS = "urn:ihe:iti:rmd:2017"
ITI86_ACTION = "urn:ihe:iti:2017:RemoveDocuments"
REQUEST_TAG = f"{{{RMD_NS}}}RemoveDocumentsRequest"
STATUS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
MAX_DOCUMENTS_PER_REQUEST = 1000


class ObjectDeleter(Protocol):
    """What ITI-86 needs of the document store (plain or sealed): deleting a stored object by key."""

    def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class DocumentRequest:
    repository_unique_id: str
    document_unique_id: str
    home_community_id: str = ""


def parse_request(request: etree._Element) -> list[DocumentRequest]:
    """The DocumentRequests of an ``rmd:RemoveDocumentsRequest``, in order."""
    return [
        DocumentRequest(
            (d.findtext("xdsb:RepositoryUniqueId", namespaces=NS) or "").strip(),
            (d.findtext("xdsb:DocumentUniqueId", namespaces=NS) or "").strip(),
            (d.findtext("xdsb:HomeCommunityId", namespaces=NS) or "").strip(),
        )
        for d in request.findall("xdsb:DocumentRequest", NS)
    ]


def build_request(documents: list[DocumentRequest]) -> etree._Element:
    """An ``rmd:RemoveDocumentsRequest`` naming ``documents`` (what the Document Administrator sends)."""
    root = etree.Element(REQUEST_TAG, nsmap={"rmd": RMD_NS, "xdsb": NS["xdsb"]})
    for d in documents:
        dr = etree.SubElement(root, qname("xdsb", "DocumentRequest"))
        if d.home_community_id:
            etree.SubElement(dr, qname("xdsb", "HomeCommunityId")).text = d.home_community_id
        etree.SubElement(dr, qname("xdsb", "RepositoryUniqueId")).text = d.repository_unique_id
        etree.SubElement(dr, qname("xdsb", "DocumentUniqueId")).text = d.document_unique_id
    return root


def remove_documents(
    request: etree._Element,
    *,
    repository_unique_id: str,
    sessions: sessionmaker[Session],
    store: ObjectDeleter,
) -> etree._Element:
    """Run ITI-86 and return the RegistryResponse to answer."""
    wanted = parse_request(request)
    response = etree.Element(qname("rs", "RegistryResponse"), nsmap={"rs": NS["rs"]})
    errors = etree.Element(qname("rs", "RegistryErrorList"))
    if not wanted or len(wanted) > MAX_DOCUMENTS_PER_REQUEST:
        add_registry_error(
            errors,
            XDSRepositoryError.code,
            f"a RemoveDocumentsRequest must hold 1 to {MAX_DOCUMENTS_PER_REQUEST} DocumentRequest elements",
            "RemoveDocumentsRequest",
        )
        wanted = []
    keys: list[str] = []
    removed = 0
    with transaction(sessions) as session:
        seen: set[str] = set()
        for d in wanted:
            uid = d.document_unique_id
            if d.repository_unique_id != repository_unique_id:
                add_registry_error(
                    errors,
                    XDSUnknownRepositoryId.code,
                    f"repositoryUniqueId {d.repository_unique_id!r} is not this repository ({repository_unique_id})",
                    uid,
                )
                continue
            if not uid:
                add_registry_error(
                    errors, XDSRepositoryError.code, "a DocumentRequest has no DocumentUniqueId", "DocumentRequest"
                )
                continue
            if uid in seen:  # named twice: removed once, and the second request is not an error
                continue
            seen.add(uid)
            held = session.scalar(select(StoredDocument).where(StoredDocument.unique_id == uid).with_for_update())
            if held is None:
                add_registry_error(
                    errors,
                    XDSDocumentUniqueIdError.code,
                    f"document {uid!r} is not held by this repository (never stored, or already removed)",
                    uid,
                )
                continue
            session.execute(delete(DicomInstance).where(DicomInstance.document_unique_id == uid))
            session.execute(delete(StoredDocument).where(StoredDocument.unique_id == uid))
            keys.append(held.store_key)
            removed += 1
    # The rows are gone (committed): nobody can retrieve these bytes any more; now remove them.
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # noqa: BLE001 - the document is already unreachable; the bytes are logged for cleanup
            log.exception("ITI-86: could not delete stored object %s; it is unreachable and left behind", key)
    if len(errors):
        response.append(errors)
        response.set("status", PARTIAL if removed else STATUS + "Failure")
    else:
        response.set("status", STATUS + "Success")
    log.info("ITI-86: %d document(s) removed, %d error(s)", removed, len(errors))
    return response


def held_before(sessions: sessionmaker[Session], cutoff: datetime, *, after: str = "", limit: int = 1000) -> list[str]:
    """uniqueIds of documents stored before ``cutoff``, in uniqueId order after ``after`` (paging)."""
    with sessions() as session:
        stmt = (
            select(StoredDocument.unique_id)
            .where(StoredDocument.created_at < cutoff, StoredDocument.unique_id > after)
            .order_by(StoredDocument.unique_id)
            .limit(limit)
        )
        return list(session.scalars(stmt))
