"""The reference PHR: computes the RSNA-ID from what the patient types, finds the documents
(ITI-18) and downloads them (ITI-43) into a folder, verifying each document's size and SHA-1."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from clearinghouse import audit
from clearinghouse.audit import AuditNode, AuditSink, DocumentRef, Party
from clearinghouse.rsna_id import compute_rsna_id, patient_cx
from clearinghouse.soap.client import SoapClient
from clearinghouse.xmlsafe import NS, qname
from conformance import xds_builder as xb
from conformance.faults import Fault, wrong_dob

ITI18_ACTION = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI43_ACTION = "urn:ihe:iti:2007:RetrieveDocumentSet"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
UNIQUE_ID_SCHEME = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
EXTENSIONS = {"application/dicom": ".dcm", "text/plain": ".txt", "application/pdf": ".pdf"}


class PhrError(RuntimeError):
    """A query or retrieval failed, or a document did not match its metadata."""


@dataclass(frozen=True)
class Entry:
    unique_id: str
    repository_unique_id: str
    mime_type: str
    size: int | None
    sha1: str | None


@dataclass(frozen=True)
class Fetched:
    entry: Entry
    path: Path


def _slot(eo: etree._Element, name: str) -> str | None:
    value = eo.find(f"rim:Slot[@name='{name}']/rim:ValueList/rim:Value", NS)
    return value.text if value is not None else None


def entries_of(response: etree._Element) -> list[Entry]:
    out = []
    for eo in response.iter(qname("rim", "ExtrinsicObject")):
        uid = next(
            (
                e.get("value", "")
                for e in eo.findall("rim:ExternalIdentifier", NS)
                if e.get("identificationScheme") == UNIQUE_ID_SCHEME
            ),
            "",
        )
        size = _slot(eo, "size")
        out.append(
            Entry(
                uid,
                _slot(eo, "repositoryUniqueId") or "",
                eo.get("mimeType", ""),
                int(size) if size and size.isdigit() else None,
                _slot(eo, "hash"),
            )
        )
    return out


def _errors(body: etree._Element) -> list[tuple[str | None, str | None]]:
    return [(e.get("errorCode"), e.get("codeContext")) for e in body.iter(qname("rs", "RegistryError"))]


class PhrSimulator:
    def __init__(
        self,
        registry: SoapClient,
        repositories: Callable[[str], SoapClient],
        *,
        affinity_domain_oid: str,
        faults: Collection[Fault] = (),
        audit: AuditSink | None = None,
        node: AuditNode | None = None,
    ) -> None:
        self.audit = audit
        self.node = node or AuditNode(source_id="ISN-PHR-SIMULATOR")
        self.registry = registry
        self.repositories = repositories  # repositoryUniqueId -> client of that repository
        self.oid = affinity_domain_oid
        self.faults = frozenset(faults)

    def patient_id(self, access_code: str, dob: str, password: str | None) -> str:
        if Fault.WRONG_RSNA_ID in self.faults:
            dob = wrong_dob(dob)
        return patient_cx(compute_rsna_id(access_code, dob, password), self.oid)

    def find(self, patient_id: str) -> list[Entry]:
        if Fault.WRONG_QUERY in self.faults:
            request = xb.query(
                xb.GET_ALL,
                {
                    "$patientId": xb.quoted(patient_id),
                    "$XDSDocumentEntryStatus": xb.quoted_list([xb.APPROVED]),
                    "$XDSSubmissionSetStatus": xb.quoted_list([xb.APPROVED]),
                    "$XDSFolderStatus": xb.quoted_list([xb.APPROVED]),
                },
            )
        else:
            request = xb.find_documents(patient_id)
        reply = self.registry.call(ITI18_ACTION, request)
        if reply.body.get("status") != SUCCESS:
            raise PhrError(f"the registry refused the query: {_errors(reply.body)}")
        return entries_of(reply.body)

    def retrieve(self, entries: list[Entry], out: Path, patient_id: str = "") -> list[Fetched]:
        out.mkdir(parents=True, exist_ok=True)
        if Fault.PARTIAL_RETRIEVE in self.faults:
            entries = entries[:-1]
        fetched: list[Fetched] = []
        by_repo: dict[str, list[Entry]] = {}
        for e in entries:
            by_repo.setdefault(e.repository_unique_id, []).append(e)
        for repo_id, group in by_repo.items():
            request = etree.Element(qname("xdsb", "RetrieveDocumentSetRequest"), nsmap={"xdsb": NS["xdsb"]})
            for e in group:
                dr = etree.SubElement(request, qname("xdsb", "DocumentRequest"))
                etree.SubElement(dr, qname("xdsb", "RepositoryUniqueId")).text = repo_id
                etree.SubElement(dr, qname("xdsb", "DocumentUniqueId")).text = e.unique_id
            reply = self.repositories(repo_id).call(ITI43_ACTION, request)
            try:
                if reply.mtom is None:
                    raise PhrError("ITI-43 response was not MTOM")
                wanted = {e.unique_id: e for e in group}
                for dr in reply.body.findall("xdsb:DocumentResponse", NS):
                    uid = dr.findtext("xdsb:DocumentUniqueId", namespaces=NS) or ""
                    include = dr.find("xdsb:Document/xop:Include", NS)
                    if uid not in wanted or include is None:
                        raise PhrError(f"unexpected DocumentResponse for {uid!r}")
                    att = reply.mtom.resolve_cid(include.get("href", ""))
                    entry = wanted.pop(uid)
                    if entry.size is not None and att.size != entry.size:
                        raise PhrError(f"document {uid}: {att.size} bytes received, metadata says {entry.size}")
                    if entry.sha1 and att.sha1 != entry.sha1.lower():
                        raise PhrError(f"document {uid}: SHA-1 {att.sha1} received, metadata says {entry.sha1}")
                    target = out / (uid + EXTENSIONS.get(entry.mime_type, ".bin"))
                    shutil.move(str(att.claim()), target)
                    fetched.append(Fetched(entry, target))
                if wanted:
                    raise PhrError(f"documents not returned: {sorted(wanted)}; errors: {_errors(reply.body)}")
            finally:
                reply.close()
            self._audit_import(self.repositories(repo_id), [f.entry for f in fetched if f.entry in group], patient_id)
        return fetched

    def _audit_import(self, repository: SoapClient, entries: list[Entry], patient_id: str) -> None:
        """ITI-43 Import by the Document Consumer (ITI TF-2b 3.43.5.1.2), unless told not to."""
        if self.audit is None or Fault.NO_AUDIT in self.faults or not entries:
            return
        t = repository.transport
        host = getattr(t, "host", "in-process")
        repo = Party(f"https://{host}:{getattr(t, 'port', 0)}{getattr(t, 'path', '')}", address=host)
        me = Party(self.node.application.user_id, address=self.node.hostname, alt_user_id=self.node.process_id)
        docs = [DocumentRef(e.unique_id, e.repository_unique_id) for e in entries]
        self.audit.emit(
            audit.retrieve_document_set(
                audit.RECIPIENT,
                node=self.node,
                repository=repo,
                consumer=me,
                documents=docs,
                patient_id=patient_id,
            )
        )

    def fetch(self, access_code: str, dob: str, password: str | None, out: Path) -> list[Fetched]:
        patient_id = self.patient_id(access_code, dob, password)
        entries = self.find(patient_id)
        if not entries:
            raise PhrError("no documents found for this access code and date of birth")
        return self.retrieve(entries, out, patient_id)


def verify_file(path: Path, sha1: str) -> bool:
    h = hashlib.sha1()  # noqa: S324 - XDS defines the document hash as SHA-1
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest() == sha1.lower()
