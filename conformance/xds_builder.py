"""Builders of XDS.b messages for the reference edge and PHR and the conformance suite: valid by
default, with knobs to break them (fault injection).

``submission(patient_id, documents=[DocSpec(...)])`` returns an ``lcm:SubmitObjectsRequest`` (the
ITI-42 body) with one SubmissionSet, its DocumentEntries (every attribute ITI-42 requires) and the
HasMember associations; ``provide_and_register(...)`` wraps the same metadata with the documents
into an ``xdsb:ProvideAndRegisterDocumentSetRequest`` (ITI-41). Both validate against the OASIS
schemas. ``query(...)`` builds an ITI-18 ``query:AdhocQueryRequest``.

Knobs: ``DocSpec.omit`` / ``FolderSpec.omit`` / ``submission(ss_omit=...)`` leave attributes out by
their metadata name (``"uniqueId"``, ``"classCode"``, ``"creationTime"``, ``"hash"``, ...);
``slots`` overrides slot values (to send a malformed one); ``patient_id`` on a DocSpec/FolderSpec
makes it disagree with the SubmissionSet; ``link=False`` drops a document's HasMember;
``extra_associations`` adds e.g. an RPLC. Ids are symbolic (``Document01``...) unless you give an
``entry_uuid``; ``document_entry_ids(request)`` lists the ids a request carries.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lxml import etree

from clearinghouse.config import DEFAULT_AFFINITY_DOMAIN_OID
from clearinghouse.xmlsafe import NS

RIM = NS["rim"]
LCM = NS["lcm"]
XDSB = NS["xdsb"]
QUERY = NS["query"]

STABLE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
ON_DEMAND = "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
REPOSITORY_UNIQUE_ID = "1.3.6.1.4.1.21367.2026.1.1"
SOURCE_ID = "1.3.6.1.4.1.21367.2026.2"

FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_SUBMISSION_SETS = "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9"
GET_ALL = "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
GET_SUBMISSION_SET_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
FIND_DOCUMENTS_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
FIND_FOLDERS = "urn:uuid:958f3006-baad-4929-a4de-ff1114824431"
GET_FOLDERS = "urn:uuid:5737b14c-8a1a-4539-b659-e03a34a5e1e4"
GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
GET_DOCUMENTS_AND_ASSOCIATIONS = "urn:uuid:bab9529a-4a10-40b3-a01f-f68a615d247a"
GET_SUBMISSION_SETS = "urn:uuid:51224314-5390-4169-9b91-b1980040715a"
GET_FOLDER_AND_CONTENTS = "urn:uuid:b909a503-523d-4517-8acf-8e5834dfc4c7"
GET_FOLDERS_FOR_DOCUMENT = "urn:uuid:10cae35a-c7f9-4cf5-b61e-fc3278ffb578"
GET_RELATED_DOCUMENTS = "urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6"
XFRM = "urn:ihe:iti:2007:AssociationType:XFRM"
APND = "urn:ihe:iti:2007:AssociationType:APND"
XFRM_RPLC = "urn:ihe:iti:2007:AssociationType:XFRM_RPLC"
SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"

_SCHEME = {
    "classCode": "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a",
    "typeCode": "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983",
    "formatCode": "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d",
    "healthcareFacilityTypeCode": "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1",
    "practiceSettingCode": "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead",
    "confidentialityCode": "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f",
    "eventCodeList": "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4",
    "author": "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d",
    "uniqueId": "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab",
    "patientId": "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427",
}
_SS_SCHEME = {
    "uniqueId": "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8",
    "sourceId": "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832",
    "patientId": "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446",
    "contentTypeCode": "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500",
    "author": "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d",
    "node": "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd",
}
_FOLDER_SCHEME = {
    "uniqueId": "urn:uuid:75df8f67-9973-4fbe-a900-df66cefecc5a",
    "patientId": "urn:uuid:f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a",
    "codeList": "urn:uuid:1ba97051-7806-41a8-a48b-8fce7af683c5",
    "node": "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2",
}


@dataclass(frozen=True)
class Code:
    code: str
    scheme: str
    display: str = ""

    @property
    def key(self) -> str:
        """As stored-query parameters spell it: ``code^^scheme``."""
        return f"{self.code}^^{self.scheme}"


CLASS_IMAGES = Code("IMAGES", "1.3.6.1.4.1.19376.1.2.6.1", "Images")
CLASS_REPORTS = Code("REPORTS", "1.3.6.1.4.1.19376.1.2.6.1", "Reports")
TYPE_IMAGING_STUDY = Code("18748-4", "2.16.840.1.113883.6.1", "Diagnostic imaging study")
FORMAT_KOS = Code("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1", "Key Object Selection Document")
FORMAT_PDF = Code("urn:ihe:iti:xds-sd:pdf:2008", "1.3.6.1.4.1.19376.1.2.3", "PDF")
FACILITY_OUTPATIENT = Code("OUTPATIENT", "2.16.840.1.113883.5.11", "Outpatient")
PRACTICE_RADIOLOGY = Code("RADIOLOGY", "1.3.6.1.4.1.21367.2026.3", "Radiology")
CONFIDENTIALITY_NORMAL = Code("N", "2.16.840.1.113883.5.25", "Normal")
CONFIDENTIALITY_RESTRICTED = Code("R", "2.16.840.1.113883.5.25", "Restricted")
EVENT_CT = Code("CT", "1.2.840.10008.2.16.4", "Computed Tomography")
EVENT_MR = Code("MR", "1.2.840.10008.2.16.4", "Magnetic Resonance")
CONTENT_TYPE_IMAGES = Code("IMAGES", "1.3.6.1.4.1.21367.2026.4", "Shared images")
FOLDER_CODE = Code("STUDY", "1.3.6.1.4.1.21367.2026.5", "Study")


def new_oid() -> str:
    """A fresh OID under the UUID arc 2.25 (ITU-T X.667): unique without coordination, < 64 chars."""
    return f"2.25.{uuid.uuid4().int}"


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def patient_cx(rsna_id: str | None = None, oid: str = DEFAULT_AFFINITY_DOMAIN_OID) -> str:
    """A patient id in the affinity domain: ``<RSNA-ID>^^^&<oid>&ISO`` (random ID if not given)."""
    return f"{rsna_id or uuid.uuid4().hex}^^^&{oid}&ISO"


@dataclass
class DocSpec:
    """One DocumentEntry. ``content`` feeds hash/size unless they are given explicitly."""

    unique_id: str | None = None  # None: new_oid()
    mime_type: str = "application/dicom"
    content: bytes | None = None  # None: some bytes derived from the uniqueId
    hash: str | None = None
    size: int | None = None
    entry_uuid: str | None = None  # id attribute; None: symbolic DocumentNN
    patient_id: str | None = None  # None: the submission's patient
    source_patient_id: str | None = None  # None: the patient id
    class_code: Code = CLASS_IMAGES
    type_code: Code = TYPE_IMAGING_STUDY
    format_code: Code = FORMAT_KOS
    healthcare_facility_type_code: Code = FACILITY_OUTPATIENT
    practice_setting_code: Code = PRACTICE_RADIOLOGY
    confidentiality_codes: Sequence[Code] = (CONFIDENTIALITY_NORMAL,)
    event_codes: Sequence[Code] = (EVENT_CT,)
    creation_time: str = "20240105103000"
    service_start_time: str | None = "20240105100000"
    service_stop_time: str | None = "20240105101500"
    language_code: str = "en-US"
    author_person: str | None = "^Welby^Marcus^^^Dr^^^&1.3.6.1.4.1.21367.2026.6&ISO"
    author_institution: str | None = "Some Hospital^^^^^^^^^1.3.6.1.4.1.21367.2026.7"
    title: str | None = "CT chest"
    reference_ids: Sequence[str] = ()
    on_demand: bool = False
    repository_unique_id: str = REPOSITORY_UNIQUE_ID
    link: bool = True  # HasMember from the SubmissionSet
    omit: frozenset[str] = frozenset()
    slots: Mapping[str, Sequence[str]] = field(default_factory=dict)  # extra/overriding slots


@dataclass
class FolderSpec:
    """One Folder holding the documents at ``documents`` (indexes into the submission's list)."""

    unique_id: str | None = None
    entry_uuid: str | None = None
    documents: Sequence[int] = ()
    codes: Sequence[Code] = (FOLDER_CODE,)
    patient_id: str | None = None
    title: str = "Imaging folder"
    omit: frozenset[str] = frozenset()


@dataclass
class AssocSpec:
    """An extra Association, e.g. ``AssocSpec(RPLC, "Document01", old_uuid)``."""

    association_type: str
    source: str
    target: str
    slots: Mapping[str, Sequence[str]] = field(default_factory=dict)
    id: str | None = None


# --- element helpers -----------------------------------------------------------------------------


def _el(parent: etree._Element | None, local: str, ns: str = RIM, **attrs: str) -> etree._Element:
    tag = f"{{{ns}}}{local}"
    if parent is None:
        return etree.Element(tag, attrs, nsmap={"rim": RIM, "lcm": LCM})
    return etree.SubElement(parent, tag, attrs)


def _slot(parent: etree._Element, name: str, values: Iterable[str]) -> None:
    slot = _el(parent, "Slot", name=name)
    value_list = _el(slot, "ValueList")
    for value in values:
        _el(value_list, "Value").text = value


def _text(parent: etree._Element, local: str, value: str) -> None:
    _el(_el(parent, local), "LocalizedString", value=value)


def _classification(parent: etree._Element, owner: str, scheme: str, code: Code, cid: str) -> None:
    c = _el(
        parent,
        "Classification",
        id=cid,
        classificationScheme=scheme,
        classifiedObject=owner,
        nodeRepresentation=code.code,
        objectType="urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification",
    )
    _slot(c, "codingScheme", [code.scheme])
    _text(c, "Name", code.display or code.code)


def _author(parent: etree._Element, owner: str, scheme: str, person: str | None, inst: str | None, cid: str) -> None:
    c = _el(
        parent,
        "Classification",
        id=cid,
        classificationScheme=scheme,
        classifiedObject=owner,
        nodeRepresentation="",
    )
    if person:
        _slot(c, "authorPerson", [person])
    if inst:
        _slot(c, "authorInstitution", [inst])


def _external_id(parent: etree._Element, owner: str, scheme: str, value: str, name: str, eid: str) -> None:
    e = _el(parent, "ExternalIdentifier", id=eid, registryObject=owner, identificationScheme=scheme, value=value)
    _text(e, "Name", name)


class _Ids:
    """Symbolic ids for nested parts, unique within one message."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n:02d}"


def _sha1(content: bytes) -> str:
    return hashlib.sha1(content).hexdigest()  # noqa: S324 - XDS hash is SHA-1 by definition


def document_content(spec: DocSpec, unique_id: str) -> bytes:
    return spec.content if spec.content is not None else f"DICM placeholder for {unique_id}\n".encode()


def _document_entry(root: etree._Element, spec: DocSpec, de_id: str, patient: str, ids: _Ids) -> str:
    uid = spec.unique_id or new_oid()
    spec.unique_id = uid  # remember it, so callers can read back what was generated
    content = document_content(spec, uid)
    eo = _el(
        root,
        "ExtrinsicObject",
        id=de_id,
        objectType=ON_DEMAND if spec.on_demand else STABLE,
        **({} if "mimeType" in spec.omit else {"mimeType": spec.mime_type}),
    )
    pid = spec.patient_id or patient
    slots: dict[str, list[str]] = {
        "creationTime": [spec.creation_time],
        "languageCode": [spec.language_code],
        "sourcePatientId": [spec.source_patient_id or pid],
        "repositoryUniqueId": [spec.repository_unique_id],
    }
    if not spec.on_demand:
        slots["hash"] = [spec.hash or _sha1(content)]
        slots["size"] = [str(spec.size if spec.size is not None else len(content))]
    if spec.service_start_time:
        slots["serviceStartTime"] = [spec.service_start_time]
    if spec.service_stop_time:
        slots["serviceStopTime"] = [spec.service_stop_time]
    if spec.reference_ids:
        slots["urn:ihe:iti:xds:2013:referenceIdList"] = list(spec.reference_ids)
    slots.update({k: list(v) for k, v in spec.slots.items()})
    for name, values in slots.items():
        if name not in spec.omit:
            _slot(eo, name, values)
    if spec.title and "title" not in spec.omit:
        _text(eo, "Name", spec.title)
    if "author" not in spec.omit:
        _author(eo, de_id, _SCHEME["author"], spec.author_person, spec.author_institution, ids("cl"))
    single = {
        "classCode": spec.class_code,
        "typeCode": spec.type_code,
        "formatCode": spec.format_code,
        "healthcareFacilityTypeCode": spec.healthcare_facility_type_code,
        "practiceSettingCode": spec.practice_setting_code,
    }
    for attr, code in single.items():
        if attr not in spec.omit:
            _classification(eo, de_id, _SCHEME[attr], code, ids("cl"))
    for attr, codes in (
        ("confidentialityCode", spec.confidentiality_codes),
        ("eventCodeList", spec.event_codes),
    ):
        if attr not in spec.omit:
            for code in codes:
                _classification(eo, de_id, _SCHEME[attr], code, ids("cl"))
    if "patientId" not in spec.omit:
        _external_id(eo, de_id, _SCHEME["patientId"], pid, "XDSDocumentEntry.patientId", ids("ei"))
    if "uniqueId" not in spec.omit:
        _external_id(eo, de_id, _SCHEME["uniqueId"], uid, "XDSDocumentEntry.uniqueId", ids("ei"))
    return de_id


def _submission_set(
    root: etree._Element,
    ss_id: str,
    patient: str,
    *,
    unique_id: str,
    source_id: str,
    submission_time: str,
    content_type: Code,
    author_person: str | None,
    omit: frozenset[str],
    top_level_classification: bool,
    ids: _Ids,
) -> None:
    rp = _el(
        root,
        "RegistryPackage",
        id=ss_id,
        objectType="urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage",
    )
    if "submissionTime" not in omit:
        _slot(rp, "submissionTime", [submission_time])
    _text(rp, "Name", "Images shared by the edge")
    if "author" not in omit and author_person:
        _author(rp, ss_id, _SS_SCHEME["author"], author_person, None, ids("cl"))
    if "contentTypeCode" not in omit:
        _classification(rp, ss_id, _SS_SCHEME["contentTypeCode"], content_type, ids("cl"))
    if not top_level_classification:
        _el(rp, "Classification", id=ids("cl"), classifiedObject=ss_id, classificationNode=_SS_SCHEME["node"])
    for attr, value in (("uniqueId", unique_id), ("sourceId", source_id), ("patientId", patient)):
        if attr not in omit:
            _external_id(rp, ss_id, _SS_SCHEME[attr], value, f"XDSSubmissionSet.{attr}", ids("ei"))
    if top_level_classification:
        _el(
            root,
            "Classification",
            id=ids("cl"),
            classifiedObject=ss_id,
            classificationNode=_SS_SCHEME["node"],
        )


def _folder(root: etree._Element, spec: FolderSpec, folder_id: str, patient: str, ids: _Ids) -> None:
    spec.unique_id = spec.unique_id or new_oid()
    rp = _el(root, "RegistryPackage", id=folder_id)
    _text(rp, "Name", spec.title)
    if "codeList" not in spec.omit:
        for code in spec.codes:
            _classification(rp, folder_id, _FOLDER_SCHEME["codeList"], code, ids("cl"))
    _el(
        rp,
        "Classification",
        id=ids("cl"),
        classifiedObject=folder_id,
        classificationNode=_FOLDER_SCHEME["node"],
    )
    if "patientId" not in spec.omit:
        pid = spec.patient_id or patient
        _external_id(rp, folder_id, _FOLDER_SCHEME["patientId"], pid, "XDSFolder.patientId", ids("ei"))
    if "uniqueId" not in spec.omit:
        _external_id(rp, folder_id, _FOLDER_SCHEME["uniqueId"], spec.unique_id, "XDSFolder.uniqueId", ids("ei"))


def _association(
    root: etree._Element,
    aid: str,
    kind: str,
    source: str,
    target: str,
    slots: Mapping[str, Sequence[str]] | None = None,
) -> None:
    a = _el(root, "Association", id=aid, associationType=kind, sourceObject=source, targetObject=target)
    for name, values in (slots or {}).items():
        _slot(a, name, values)


def submission(
    patient_id: str | None = None,
    documents: Sequence[DocSpec] | None = None,
    *,
    folders: Sequence[FolderSpec] = (),
    extra_associations: Sequence[AssocSpec] = (),
    ss_unique_id: str | None = None,
    ss_entry_uuid: str | None = None,
    ss_patient_id: str | None = None,
    source_id: str = SOURCE_ID,
    submission_time: str = "20240105110000",
    content_type: Code = CONTENT_TYPE_IMAGES,
    ss_author_person: str | None = "^Edge^Server^^^^^^&1.3.6.1.4.1.21367.2026.6&ISO",
    ss_omit: frozenset[str] = frozenset(),
    submission_set_status: str = "Original",
    top_level_ss_classification: bool = False,
) -> etree._Element:
    """A valid ITI-42 ``lcm:SubmitObjectsRequest`` for ``patient_id`` (a new one if None) with one
    DocumentEntry per DocSpec (one default document if ``documents`` is None)."""
    patient = patient_id or patient_cx()
    docs = [DocSpec()] if documents is None else list(documents)
    ids = _Ids()
    root = _el(None, "SubmitObjectsRequest", ns=LCM)
    object_list = _el(root, "RegistryObjectList")
    ss_id = ss_entry_uuid or "SubmissionSet01"
    _submission_set(
        object_list,
        ss_id,
        ss_patient_id or patient,
        unique_id=ss_unique_id or new_oid(),
        source_id=source_id,
        submission_time=submission_time,
        content_type=content_type,
        author_person=ss_author_person,
        omit=ss_omit,
        top_level_classification=top_level_ss_classification,
        ids=ids,
    )
    doc_ids = []
    for n, spec in enumerate(docs, start=1):
        doc_ids.append(_document_entry(object_list, spec, spec.entry_uuid or f"Document{n:02d}", patient, ids))
    folder_ids = []
    for n, fspec in enumerate(folders, start=1):
        folder_ids.append(fspec.entry_uuid or f"Folder{n:02d}")
        _folder(object_list, fspec, folder_ids[-1], patient, ids)
    for spec, de_id in zip(docs, doc_ids, strict=True):
        if spec.link:
            _association(
                object_list,
                ids("as"),
                HAS_MEMBER,
                ss_id,
                de_id,
                {"SubmissionSetStatus": [submission_set_status]},
            )
    for fspec, folder_id in zip(folders, folder_ids, strict=True):
        _association(object_list, ids("as"), HAS_MEMBER, ss_id, folder_id)
        for index in fspec.documents:
            inner = ids("as")
            _association(object_list, inner, HAS_MEMBER, folder_id, doc_ids[index])
            _association(object_list, ids("as"), HAS_MEMBER, ss_id, inner)
    for extra in extra_associations:
        _association(
            object_list,
            extra.id or ids("as"),
            extra.association_type,
            extra.source,
            extra.target,
            extra.slots,
        )
    return root


def provide_and_register(
    patient_id: str | None = None, documents: Sequence[DocSpec] | None = None, **kwargs: object
) -> etree._Element:
    """The ITI-41 body: ``xdsb:ProvideAndRegisterDocumentSetRequest`` with the submission and one
    ``xdsb:Document`` (base64) per stable DocumentEntry, linked by the entry's id."""
    docs = [DocSpec()] if documents is None else list(documents)
    request = submission(patient_id, docs, **kwargs)  # type: ignore[arg-type]
    root = etree.Element(f"{{{XDSB}}}ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": XDSB})
    root.append(request)
    for spec, de_id in zip(docs, document_entry_ids(request), strict=True):
        if spec.on_demand:
            continue
        doc = etree.SubElement(root, f"{{{XDSB}}}Document", id=de_id)
        doc.text = base64.b64encode(document_content(spec, spec.unique_id or "")).decode()
    return root


# --- reading a built request back ----------------------------------------------------------------


def document_entry_ids(request: etree._Element) -> list[str]:
    """The id attributes of the ExtrinsicObjects, in document order."""
    return [e.get("id", "") for e in request.iter(f"{{{RIM}}}ExtrinsicObject")]


def submission_set_id(request: etree._Element) -> str:
    node = _SS_SCHEME["node"]
    for c in request.iter(f"{{{RIM}}}Classification"):
        if c.get("classificationNode") == node:
            return c.get("classifiedObject", "")
    raise ValueError("no SubmissionSet in the request")


def submission_set_unique_id(request: etree._Element) -> str:
    """The SubmissionSet's uniqueId (ITI-41 or ITI-42 body)."""
    scheme = _SS_SCHEME["uniqueId"]
    for ei in request.iter(f"{{{RIM}}}ExternalIdentifier"):
        if ei.get("identificationScheme") == scheme:
            return ei.get("value", "")
    return ""


def unique_ids(request: etree._Element) -> list[str]:
    """uniqueId values of the DocumentEntries, in document order."""
    scheme = _SCHEME["uniqueId"]
    return [
        ei.get("value", "")
        for eo in request.iter(f"{{{RIM}}}ExtrinsicObject")
        for ei in eo.findall(f"{{{RIM}}}ExternalIdentifier")
        if ei.get("identificationScheme") == scheme
    ]


def find(request: etree._Element, local: str, obj_id: str) -> etree._Element:
    """The rim:<local> element with id ``obj_id`` (to break it further by hand)."""
    for e in request.iter(f"{{{RIM}}}{local}"):
        if e.get("id") == obj_id:
            return e
    raise KeyError(obj_id)


# --- ITI-18 requests -----------------------------------------------------------------------------


def quoted(value: str) -> str:
    """A string literal of the stored-query value syntax: ``'value'`` with quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def quoted_list(values: Iterable[str]) -> str:
    """A list literal: ``('a','b')``."""
    return "(" + ",".join(quoted(v) for v in values) + ")"


ParamValue = str | Sequence[str]


def query(
    query_id: str,
    params: Mapping[str, ParamValue] | Sequence[tuple[str, ParamValue]],
    return_type: str = "LeafClass",
) -> etree._Element:
    """A ``query:AdhocQueryRequest``. ``params`` maps a parameter to its raw slot value(s), already
    in literal syntax (use ``quoted`` / ``quoted_list``); a list gives several rim:Value elements.
    Pass a sequence of pairs to repeat a parameter (AND of two slots)."""
    root = etree.Element(f"{{{QUERY}}}AdhocQueryRequest", nsmap={"query": QUERY, "rim": RIM})
    etree.SubElement(root, f"{{{QUERY}}}ResponseOption", returnType=return_type, returnComposedObjects="true")
    adhoc = etree.SubElement(root, f"{{{RIM}}}AdhocQuery", id=query_id)
    pairs = params.items() if isinstance(params, Mapping) else params
    for name, value in pairs:
        _slot(adhoc, name, [value] if isinstance(value, str) else list(value))
    return root


def find_documents(
    patient_id: str, status: Sequence[str] = (APPROVED,), return_type: str = "LeafClass", **extra: ParamValue
) -> etree._Element:
    """FindDocuments for a patient; ``extra`` adds parameters by name without the ``$`` prefix,
    e.g. ``XDSDocumentEntryClassCode=quoted_list([...])``."""
    params: dict[str, ParamValue] = {
        "$XDSDocumentEntryPatientId": quoted(patient_id),
        "$XDSDocumentEntryStatus": quoted_list(status),
    }
    params.update({f"${k}": v for k, v in extra.items()})
    return query(FIND_DOCUMENTS, params, return_type)


# --- ITI-57 and ITI-62 requests ------------------------------------------------------------------


def _member_of_submission_set(request: etree._Element, target: str) -> etree._Element:
    ss = submission_set_id(request)
    for a in request.iter(f"{{{RIM}}}Association"):
        if a.get("sourceObject") == ss and a.get("targetObject") == target:
            return a
    raise KeyError(target)


def new_version(
    patient_id: str,
    lid: str,
    previous_version: str | None = "1",
    *,
    document: DocSpec | None = None,
    folder: FolderSpec | None = None,
    propagate: str | None = None,
) -> etree._Element:
    """An ITI-57 ``lcm:SubmitObjectsRequest`` carrying a new version of the registered DocumentEntry
    (``document``) or Folder (``folder``) whose logicalId is ``lid``; ``previous_version`` None
    leaves the PreviousVersion slot out."""
    docs = [document] if document is not None else []
    folders = [folder] if folder is not None else []
    request = submission(patient_id, docs, folders=folders)
    obj_id = "Document01" if document is not None else "Folder01"
    xs_obj = find(request, "ExtrinsicObject" if document is not None else "RegistryPackage", obj_id)
    xs_obj.set("lid", lid)
    member = _member_of_submission_set(request, obj_id)
    slots = {}
    if document is None:  # a Folder's HasMember from the SubmissionSet carries no status of its own
        slots["SubmissionSetStatus"] = ["Original"]
    if previous_version is not None:
        slots["PreviousVersion"] = [previous_version]
    if propagate is not None:
        slots["AssociationPropagation"] = [propagate]
    for name, values in slots.items():
        _slot(member, name, values)
    return request


def status_update(
    patient_id: str, target: str, original: str, new: str, *, extra: Sequence[AssocSpec] = ()
) -> etree._Element:
    """An ITI-57 request changing the availabilityStatus of the registered object ``target``."""
    return submission(
        patient_id,
        [],
        extra_associations=[
            AssocSpec(
                UPDATE_AVAILABILITY_STATUS,
                "SubmissionSet01",
                target,
                {"OriginalStatus": [original], "NewStatus": [new]},
            ),
            *extra,
        ],
    )


def folder_membership(patient_id: str, folder_uuid: str, document_uuid: str) -> etree._Element:
    """An ITI-57 (or ITI-42) request adding a registered document to a registered folder."""
    return submission(
        patient_id,
        [],
        extra_associations=[
            AssocSpec(HAS_MEMBER, folder_uuid, document_uuid, id="Membership01"),
            AssocSpec(HAS_MEMBER, "SubmissionSet01", "Membership01"),
        ],
    )


def remove_request(ids: Iterable[str]) -> etree._Element:
    """An ITI-62 ``lcm:RemoveObjectsRequest`` naming ``ids``."""
    root = etree.Element(f"{{{LCM}}}RemoveObjectsRequest", nsmap={"lcm": LCM, "rim": RIM})
    refs = etree.SubElement(root, f"{{{RIM}}}ObjectRefList")
    for i in ids:
        etree.SubElement(refs, f"{{{RIM}}}ObjectRef", id=i)
    return root
