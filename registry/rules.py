"""ITI-42 Register Document Set-b validation, as small pure functions.

Each ``check_*`` function looks at one aspect of a parsed :class:`~registry.metadata.Submission`
(plus, for the registry-dependent rules, facts the caller looked up beforehand) and returns a list
of RegistryErrorItem; an empty list means the rule holds. ``validate_submission`` and
``validate_against_registry`` run them all so a source learns every problem of a submission at
once. Required attributes follow ITI TF-3 4.2.3.2 (DocumentEntry), 4.2.3.3 (SubmissionSet),
4.2.3.4 (Folder) and 4.2.2 (associations); error codes ITI TF-3 4.2.4.1.

Every codeContext names the object (its id as submitted and, where known, its uniqueId) and the
rule it breaks, so a source can fix its metadata without reading registry logs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from clearinghouse.errors import (
    RegistryErrorItem,
    UnresolvedReferenceException,
    XDSDuplicateUniqueIdInRegistry,
    XDSNonIdenticalHash,
    XDSNonIdenticalSize,
    XDSPatientIdDoesNotMatch,
    XDSRegistryDeprecatedDocumentError,
    XDSRegistryDuplicateUniqueIdInMessage,
    XDSRegistryMetadataError,
    XDSUnknownPatientId,
)
from clearinghouse.rsna_id import parse_cx
from registry import formats
from registry import metadata as md
from registry.metadata import (
    Association,
    Classification,
    DocumentEntry,
    Folder,
    RegistryObject,
    Submission,
    SubmissionSet,
)

# Error codes come from the typed errors, so every code is spelled in one place (clearinghouse/errors.py).
METADATA_ERROR = XDSRegistryMetadataError.code
DUPLICATE_IN_MESSAGE = XDSRegistryDuplicateUniqueIdInMessage.code
DUPLICATE_IN_REGISTRY = XDSDuplicateUniqueIdInRegistry.code
NON_IDENTICAL_HASH = XDSNonIdenticalHash.code
NON_IDENTICAL_SIZE = XDSNonIdenticalSize.code
PATIENT_MISMATCH = XDSPatientIdDoesNotMatch.code
UNKNOWN_PATIENT = XDSUnknownPatientId.code
UNRESOLVED = UnresolvedReferenceException.code
DEPRECATED_DOCUMENT = XDSRegistryDeprecatedDocumentError.code


# --- value formats (registry.formats; re-exported because the rules are stated in their terms) ---

is_dtm = formats.is_dtm
is_oid = formats.is_oid
is_document_unique_id = formats.is_document_unique_id
is_patient_cx = formats.is_patient_cx
is_sha1 = formats.is_sha1
is_size = formats.is_size
is_language = formats.is_language
is_mime_type = formats.is_mime_type


# --- building blocks -----------------------------------------------------------------------------


def _item(code: str, obj: RegistryObject | None, message: str) -> RegistryErrorItem:
    if obj is None:
        return RegistryErrorItem(code, message)
    return RegistryErrorItem(code, f"{obj.label()}: {message}", obj.id)


def _meta(obj: RegistryObject | None, message: str) -> RegistryErrorItem:
    return _item(METADATA_ERROR, obj, message)


@dataclass(frozen=True)
class ExternalIdRule:
    attribute: str  # e.g. XDSDocumentEntry.uniqueId
    scheme: str
    valid: Callable[[str], bool]
    format_name: str


@dataclass(frozen=True)
class CodeRule:
    attribute: str
    scheme: str
    minimum: int = 1
    maximum: int | None = 1  # None: unbounded


@dataclass(frozen=True)
class SlotRule:
    name: str
    required: bool
    valid: Callable[[str], bool] | None
    format_name: str = ""
    multiple: bool = False


def check_external_ids(obj: RegistryObject, rules: Iterable[ExternalIdRule]) -> list[RegistryErrorItem]:
    """Each rule's ExternalIdentifier present exactly once, with a value in the right format."""
    errors = []
    for rule in rules:
        found = obj.external_ids(rule.scheme)
        if not found:
            errors.append(_meta(obj, f"required external identifier {rule.attribute} ({rule.scheme}) is missing"))
        elif len(found) > 1:
            errors.append(_meta(obj, f"external identifier {rule.attribute} ({rule.scheme}) occurs {len(found)} times"))
        elif not rule.valid(found[0].value):
            errors.append(_meta(obj, f"{rule.attribute} value {found[0].value!r} is not a valid {rule.format_name}"))
    return errors


def check_code(obj: RegistryObject, attribute: str, code: Classification) -> list[RegistryErrorItem]:
    """A coded Classification needs its code (nodeRepresentation) and exactly one codingScheme."""
    errors = []
    if not code.node_representation:
        errors.append(_meta(obj, f"{attribute} classification {code.id} has no code (nodeRepresentation)"))
    if len(code.slots.get("codingScheme", [])) != 1:
        errors.append(_meta(obj, f"{attribute} classification {code.id} needs exactly one codingScheme slot value"))
    return errors


def check_codes(obj: RegistryObject, rules: Iterable[CodeRule]) -> list[RegistryErrorItem]:
    """Cardinality of each coded attribute, and the shape of every code present."""
    errors = []
    for rule in rules:
        found = obj.classified(rule.scheme)
        if len(found) < rule.minimum:
            errors.append(_meta(obj, f"required classification {rule.attribute} ({rule.scheme}) is missing"))
        if rule.maximum is not None and len(found) > rule.maximum:
            errors.append(
                _meta(
                    obj,
                    f"classification {rule.attribute} ({rule.scheme}) occurs {len(found)} times, "
                    f"at most {rule.maximum} allowed",
                )
            )
        for code in found:
            errors.extend(check_code(obj, rule.attribute, code))
    return errors


def check_slots(obj: RegistryObject, rules: Iterable[SlotRule]) -> list[RegistryErrorItem]:
    """Presence, cardinality and value format of slots."""
    errors = []
    for rule in rules:
        values = obj.slots.get(rule.name)
        if values is None:
            if rule.required:
                errors.append(_meta(obj, f"required slot {rule.name} is missing"))
            continue
        if rule.name in obj.repeated_slots:
            errors.append(_meta(obj, f"slot {rule.name} occurs more than once"))
        if not values:
            errors.append(_meta(obj, f"slot {rule.name} has no value"))
        elif len(values) > 1 and not rule.multiple:
            errors.append(_meta(obj, f"slot {rule.name} must have exactly one value, has {len(values)}"))
        for value in values:
            if rule.valid is not None and not rule.valid(value):
                errors.append(_meta(obj, f"slot {rule.name} value {value!r} is not a valid {rule.format_name}"))
    return errors


def check_forbidden_slots(obj: RegistryObject, names: Iterable[str], why: str) -> list[RegistryErrorItem]:
    return [_meta(obj, f"slot {name} must not be present ({why})") for name in names if name in obj.slots]


# --- per-object rules ----------------------------------------------------------------------------

DOCUMENT_ENTRY_IDS = (
    ExternalIdRule("XDSDocumentEntry.uniqueId", md.DE_UNIQUE_ID, is_document_unique_id, "OID or OID^extension"),
    ExternalIdRule("XDSDocumentEntry.patientId", md.DE_PATIENT_ID, is_patient_cx, "CX (ID^^^&OID&ISO)"),
)
DOCUMENT_ENTRY_CODES = (
    CodeRule("XDSDocumentEntry.classCode", md.DE_CLASS_CODE),
    CodeRule("XDSDocumentEntry.typeCode", md.DE_TYPE_CODE),
    CodeRule("XDSDocumentEntry.formatCode", md.DE_FORMAT_CODE),
    CodeRule("XDSDocumentEntry.healthcareFacilityTypeCode", md.DE_HEALTHCARE_FACILITY_TYPE_CODE),
    CodeRule("XDSDocumentEntry.practiceSettingCode", md.DE_PRACTICE_SETTING_CODE),
    CodeRule("XDSDocumentEntry.confidentialityCode", md.DE_CONFIDENTIALITY_CODE, 1, None),
    CodeRule("XDSDocumentEntry.eventCodeList", md.DE_EVENT_CODE_LIST, 0, None),
)
_XCN = "XCN (ID^family^given^...^&OID&ISO)"
_DTM_NAME = "DTM (YYYY[MM[DD[hh[mm[ss]]]]])"
_DE_COMMON_SLOTS = (
    SlotRule("languageCode", True, is_language, "language tag (RFC 3066)"),
    SlotRule("sourcePatientId", True, is_patient_cx, "CX (ID^^^&OID&ISO)"),
    SlotRule("repositoryUniqueId", True, is_oid, "OID"),
    SlotRule("serviceStartTime", False, is_dtm, _DTM_NAME),
    SlotRule("serviceStopTime", False, is_dtm, _DTM_NAME),
    SlotRule("sourcePatientInfo", False, formats.is_source_patient_info, "PID-n|value line", multiple=True),
    SlotRule("legalAuthenticator", False, formats.is_xcn, _XCN),
    SlotRule("URI", False, formats.is_short_text, "URI of at most 256 characters", multiple=True),
    SlotRule(md.DE_REFERENCE_ID_LIST_SLOT, False, formats.is_short_text, "CXi identifier", multiple=True),
)
# ITI-42 carries what the repository computed: hash and size are required for stable entries.
STABLE_DOCUMENT_ENTRY_SLOTS = (
    SlotRule("creationTime", True, is_dtm, _DTM_NAME),
    SlotRule("hash", True, is_sha1, "SHA-1 hash (40 hex digits)"),
    SlotRule("size", True, is_size, "size (non-negative integer)"),
    *_DE_COMMON_SLOTS,
)
# An On-Demand entry describes content not yet generated: no hash or size exists (ITI TF-3 4.1.4).
ON_DEMAND_DOCUMENT_ENTRY_SLOTS = (
    SlotRule("creationTime", False, is_dtm, _DTM_NAME),
    *_DE_COMMON_SLOTS,
)

SUBMISSION_SET_IDS = (
    ExternalIdRule("XDSSubmissionSet.uniqueId", md.SS_UNIQUE_ID, is_oid, "OID"),
    ExternalIdRule("XDSSubmissionSet.sourceId", md.SS_SOURCE_ID, is_oid, "OID"),
    ExternalIdRule("XDSSubmissionSet.patientId", md.SS_PATIENT_ID, is_patient_cx, "CX (ID^^^&OID&ISO)"),
)
SUBMISSION_SET_CODES = (CodeRule("XDSSubmissionSet.contentTypeCode", md.SS_CONTENT_TYPE_CODE),)
SUBMISSION_SET_SLOTS = (
    SlotRule("submissionTime", True, is_dtm, _DTM_NAME),
    SlotRule("intendedRecipient", False, formats.is_intended_recipient, "XON|XCN|XTN recipient", multiple=True),
)

FOLDER_IDS = (
    ExternalIdRule("XDSFolder.uniqueId", md.FOLDER_UNIQUE_ID, is_oid, "OID"),
    ExternalIdRule("XDSFolder.patientId", md.FOLDER_PATIENT_ID, is_patient_cx, "CX (ID^^^&OID&ISO)"),
)
FOLDER_CODES = (CodeRule("XDSFolder.codeList", md.FOLDER_CODE_LIST, 1, None),)
# lastUpdateTime is the registry's to set (ITI TF-3 4.2.3.4.4); a value sent along is replaced.
FOLDER_SLOTS = (SlotRule("lastUpdateTime", False, is_dtm, _DTM_NAME),)

AUTHOR_SLOTS = (
    SlotRule("authorPerson", False, formats.is_xcn, _XCN),
    SlotRule("authorInstitution", False, formats.is_xon, "XON (name^^^^^^^^^OID)", multiple=True),
    SlotRule("authorRole", False, formats.is_short_text, "text of at most 256 characters", multiple=True),
    SlotRule("authorSpecialty", False, formats.is_short_text, "text of at most 256 characters", multiple=True),
    SlotRule("authorTelecommunication", False, formats.is_xtn, "XTN (^^Internet^address)", multiple=True),
)
ASSOCIATION_SLOT_NAMES = frozenset(
    {
        md.SUBMISSION_SET_STATUS_SLOT,
        md.PREVIOUS_VERSION_SLOT,
        md.ORIGINAL_STATUS_SLOT,
        md.NEW_STATUS_SLOT,
        md.ASSOCIATION_PROPAGATION_SLOT,
    }
)


def _names(*groups: Iterable[SlotRule]) -> frozenset[str]:
    return frozenset(rule.name for group in groups for rule in group)


DOCUMENT_ENTRY_SLOT_NAMES = _names(STABLE_DOCUMENT_ENTRY_SLOTS)
SUBMISSION_SET_SLOT_NAMES = _names(SUBMISSION_SET_SLOTS)
FOLDER_SLOT_NAMES = _names(FOLDER_SLOTS)
AUTHOR_SLOT_NAMES = _names(AUTHOR_SLOTS)
# The formatCode of an XDS-I.b imaging manifest (RAD TF-3 4.68.4.1.2.3): the KOS SOP Class, coded in
# the DICOM UID registry, and always a DICOM object.
KOS_FORMAT_CODE = "1.2.840.10008.5.1.4.1.1.88.59"
DICOM_UID_REGISTRY = "1.2.840.10008.2.6.1"
DICOM_MIME_TYPE = "application/dicom"


def check_slot_names(obj: RegistryObject, known: frozenset[str], where: str = "") -> list[RegistryErrorItem]:
    """Slots are the attributes XDS defines for the object, or extra metadata named by a URN that
    is not in IHE's own ``urn:ihe:`` space (ITI TF-3 4.2.3.1.5)."""
    return [
        _meta(obj, f"{where}slot {name!r} is not an attribute of a {obj.kind}; extra metadata must be named by a URN")
        for name in obj.slots
        if name not in known and (not name.startswith("urn:") or name.startswith("urn:ihe:"))
    ]


def check_slot_value_lengths(obj: RegistryObject) -> list[RegistryErrorItem]:
    """An ebRIM slot value is at most 256 characters (rim.xsd LongName)."""
    return [
        _meta(obj, f"slot {name} has a value of {len(value)} characters, at most {formats.MAX_SLOT_VALUE} allowed")
        for name, values in obj.slots.items()
        for value in values
        if len(value) > formats.MAX_SLOT_VALUE
    ]


def check_nested_parts(obj: RegistryObject) -> list[RegistryErrorItem]:
    """Classifications and ExternalIdentifiers nested in an object describe that object."""
    errors = []
    for c in obj.classifications:
        if c.nested and c.classified_object != obj.id:
            errors.append(_meta(obj, f"nested Classification {c.id} names classifiedObject {c.classified_object}"))
    for e in obj.external_identifiers:
        if e.registry_object != obj.id:
            errors.append(_meta(obj, f"ExternalIdentifier {e.id} names registryObject {e.registry_object}"))
    return errors


def check_object_id(obj: RegistryObject, *, new_version: bool = False) -> list[RegistryErrorItem]:
    """An id is either symbolic or a well-formed ``urn:uuid:`` (ITI TF-3 4.2.3.1.2); so are the ids of
    its nested parts. A new object's lid, if given, is its id: new versions of registered objects
    (``new_version``, whose lid names the registered object) come with ITI-57 Update Document Set."""
    errors = []
    parts = [obj.id, *(c.id for c in obj.classifications if c.nested), *(e.id for e in obj.external_identifiers)]
    for part in parts:
        if part.lower().startswith(md.URN_UUID) and not md.is_uuid_urn(part):
            errors.append(_meta(obj, f"id {part!r} starts with urn:uuid: but is not a UUID (8-4-4-4-12 hex digits)"))
    if new_version:
        if not obj.lid or not md.is_uuid_urn(obj.lid):
            errors.append(_meta(obj, f"lid {obj.lid!r} must be the urn:uuid logicalId of the registered object"))
    elif obj.lid and obj.lid != obj.id:
        errors.append(
            _meta(obj, f"lid {obj.lid} differs from the id: a new version of a registered object needs ITI-57")
        )
    return errors


def check_not_limited(obj: RegistryObject, scheme: str) -> list[RegistryErrorItem]:
    """Limited metadata (XDR/XDM) is never registered in XDS (ITI TF-3 4.1.1.1)."""
    if any(c.scheme == scheme for c in obj.classifications):
        return [_meta(obj, "is flagged limitedMetadata; an XDS registry accepts complete metadata only")]
    return []


def check_imaging_manifest(de: DocumentEntry) -> list[RegistryErrorItem]:
    """An XDS-I.b manifest (formatCode = the KOS SOP Class) is a DICOM object coded in the DICOM UID
    registry (RAD TF-3 4.68.4.1.2.3)."""
    errors = []
    for code in de.classified(md.DE_FORMAT_CODE):
        if code.node_representation != KOS_FORMAT_CODE:
            continue
        if code.coding_scheme != DICOM_UID_REGISTRY:
            errors.append(
                _meta(de, f"formatCode {KOS_FORMAT_CODE} (imaging manifest) needs codingScheme {DICOM_UID_REGISTRY}")
            )
        if de.mime_type and de.mime_type != DICOM_MIME_TYPE:
            errors.append(
                _meta(de, f"an imaging manifest (formatCode {KOS_FORMAT_CODE}) has mimeType {DICOM_MIME_TYPE}")
            )
    return errors


def check_document_entry(de: DocumentEntry, *, new_version: bool = False) -> list[RegistryErrorItem]:
    """All attribute rules of one DocumentEntry (ITI TF-3 4.2.3.2, Register Document Set-b column);
    ``new_version`` for an ITI-57 update of a registered one."""
    errors = []
    if de.object_type not in md.DOCUMENT_ENTRY_TYPES:
        errors.append(
            _meta(
                de,
                f"objectType {de.object_type!r} is neither stable ({md.STABLE_DOCUMENT_ENTRY}) "
                f"nor on-demand ({md.ON_DEMAND_DOCUMENT_ENTRY})",
            )
        )
    if not de.mime_type:
        errors.append(_meta(de, "required attribute mimeType is missing"))
    elif not is_mime_type(de.mime_type):
        errors.append(_meta(de, f"mimeType {de.mime_type!r} is not a MIME type"))
    errors += check_external_ids(de, DOCUMENT_ENTRY_IDS)
    errors += check_codes(de, DOCUMENT_ENTRY_CODES)
    if de.on_demand:
        errors += check_slots(de, ON_DEMAND_DOCUMENT_ENTRY_SLOTS)
        errors += check_forbidden_slots(de, ("hash", "size"), "an On-Demand DocumentEntry has no content yet")
    else:
        errors += check_slots(de, STABLE_DOCUMENT_ENTRY_SLOTS)
    errors += check_slot_names(de, DOCUMENT_ENTRY_SLOT_NAMES)
    errors += check_slot_value_lengths(de)
    errors += check_authors(de, md.DE_AUTHOR, "XDSDocumentEntry.author")
    errors += check_nested_parts(de)
    errors += check_object_id(de, new_version=new_version)
    errors += check_not_limited(de, md.DE_LIMITED_METADATA)
    errors += check_imaging_manifest(de)
    return errors


def check_authors(obj: RegistryObject, scheme: str, attribute: str) -> list[RegistryErrorItem]:
    """An author Classification says who (authorPerson or authorInstitution), each value in its HL7
    type, and has no code of its own (ITI TF-3 4.2.3.1.4)."""
    errors = []
    for author in obj.classified(scheme):
        if len(author.slots.get("authorPerson", [])) > 1:
            errors.append(_meta(obj, f"{attribute} {author.id}: authorPerson must have one value"))
        if not (author.slots.get("authorPerson") or author.slots.get("authorInstitution")):
            errors.append(_meta(obj, f"{attribute} {author.id} has neither authorPerson nor authorInstitution"))
        if author.node_representation:
            errors.append(_meta(obj, f"{attribute} {author.id}: nodeRepresentation must be empty"))
        for rule in AUTHOR_SLOTS:
            for value in author.slots.get(rule.name, []):
                if rule.valid is not None and not rule.valid(value):
                    errors.append(
                        _meta(obj, f"{attribute} {author.id}: {rule.name} {value!r} is not a valid {rule.format_name}")
                    )
        for name in author.slots:
            if name not in AUTHOR_SLOT_NAMES and (not name.startswith("urn:") or name.startswith("urn:ihe:")):
                errors.append(_meta(obj, f"{attribute} {author.id}: slot {name!r} is not an author attribute"))
    return errors


def check_submission_set(ss: SubmissionSet) -> list[RegistryErrorItem]:
    """All attribute rules of the SubmissionSet (ITI TF-3 4.2.3.3)."""
    return (
        check_external_ids(ss, SUBMISSION_SET_IDS)
        + check_codes(ss, SUBMISSION_SET_CODES)
        + check_slots(ss, SUBMISSION_SET_SLOTS)
        + check_slot_names(ss, SUBMISSION_SET_SLOT_NAMES)
        + check_slot_value_lengths(ss)
        + check_authors(ss, md.SS_AUTHOR, "XDSSubmissionSet.author")
        + check_nested_parts(ss)
        + check_object_id(ss)
        + check_not_limited(ss, md.SS_LIMITED_METADATA)
    )


def check_folder(folder: Folder, *, new_version: bool = False) -> list[RegistryErrorItem]:
    """All attribute rules of one Folder (ITI TF-3 4.2.3.4): title is required for a Folder."""
    errors = check_external_ids(folder, FOLDER_IDS) + check_codes(folder, FOLDER_CODES)
    if not folder.name:
        errors.append(_meta(folder, "required attribute title (rim:Name) is missing"))
    return (
        errors
        + check_slots(folder, FOLDER_SLOTS)
        + check_slot_names(folder, FOLDER_SLOT_NAMES)
        + check_slot_value_lengths(folder)
        + check_nested_parts(folder)
        + check_object_id(folder, new_version=new_version)
        + check_not_limited(folder, md.FOLDER_LIMITED_METADATA)
    )


# --- submission-wide rules -----------------------------------------------------------------------


def check_structure(sub: Submission) -> list[RegistryErrorItem]:
    """Exactly one SubmissionSet; no packages or objects this registry does not understand."""
    errors = []
    if not sub.submission_sets:
        errors.append(
            _meta(
                None,
                f"the submission contains no SubmissionSet (a RegistryPackage classified by {md.SUBMISSION_SET_NODE})",
            )
        )
    elif len(sub.submission_sets) > 1:
        ids = ", ".join(s.id for s in sub.submission_sets)
        errors.append(
            _meta(
                None,
                f"the submission contains {len(sub.submission_sets)} SubmissionSets ({ids}); exactly one is allowed",
            )
        )
    for pkg in sub.unclassified_packages:
        errors.append(
            RegistryErrorItem(
                METADATA_ERROR,
                f"RegistryPackage {pkg.id} is classified neither as SubmissionSet ({md.SUBMISSION_SET_NODE}) "
                f"nor as Folder ({md.FOLDER_NODE})",
                pkg.id,
            )
        )
    for tag in sub.unsupported:
        errors.append(_meta(None, f"object {tag} is not XDS metadata this registry accepts"))
    return errors


def check_ids(sub: Submission) -> list[RegistryErrorItem]:
    """Object ids present and unique within the message (they are how associations link objects)."""
    errors = []
    counts = Counter(obj.id for obj in sub.objects())
    for obj in sub.objects():
        if not obj.id:
            errors.append(_meta(obj, "object has no id"))
    for obj_id, n in counts.items():
        if obj_id and n > 1:
            errors.append(
                RegistryErrorItem(METADATA_ERROR, f"id {obj_id} is used by {n} objects of the submission", obj_id)
            )
    return errors


def _member_associations(sub: Submission) -> list[Association]:
    ss = sub.submission_set
    if ss is None:
        return []
    return [a for a in sub.associations if a.association_type == md.HAS_MEMBER and a.source == ss.id]


def check_association(assoc: Association, sub: Submission) -> list[RegistryErrorItem]:
    """Known type, both ends named, and SubmissionSetStatus on SubmissionSet->DocumentEntry
    HasMember (Original for a new entry, Reference for one already registered; ITI TF-3 4.2.2.1.2)."""
    errors = []
    if assoc.association_type not in md.ASSOCIATION_TYPES:
        errors.append(_meta(assoc, f"associationType {assoc.association_type!r} is not an XDS association type"))
    if not assoc.source or not assoc.target:
        errors.append(_meta(assoc, "sourceObject and targetObject are both required"))
    if assoc.source and assoc.source == assoc.target:
        errors.append(_meta(assoc, "an object cannot be associated with itself"))
    errors += check_slot_names(assoc, ASSOCIATION_SLOT_NAMES)
    errors += check_object_id(assoc)
    errors += check_relationship(assoc, sub)
    ss = sub.submission_set
    if ss is not None and assoc.association_type == md.HAS_MEMBER and assoc.source == ss.id:
        status = assoc.slot(md.SUBMISSION_SET_STATUS_SLOT)
        is_document = assoc.target in {d.id for d in sub.document_entries}
        in_submission = assoc.target in sub.by_id()
        if is_document and status != ["Original"]:
            errors.append(
                _meta(
                    assoc,
                    "HasMember from the SubmissionSet to a DocumentEntry of this submission "
                    "needs slot SubmissionSetStatus = Original",
                )
            )
        elif not in_submission and status and status != ["Reference"]:
            errors.append(
                _meta(
                    assoc,
                    "HasMember from the SubmissionSet to an object already registered "
                    "needs SubmissionSetStatus = Reference",
                )
            )
    return errors


def check_relationship(assoc: Association, sub: Submission) -> list[RegistryErrorItem]:
    """Document relationships (ITI TF-3 4.2.2.2): RPLC, XFRM, APND, XFRM_RPLC and IsSnapshotOf go
    from a new DocumentEntry of this submission to a registered one; signs goes from a new
    DocumentEntry (the signature) to the DocumentEntry it signs, new or registered."""
    kind = assoc.association_type
    if kind not in md.RELATIONSHIP_TYPES:
        return []
    short = kind.rsplit(":", 1)[-1]
    new_docs = {d.id: d for d in sub.document_entries}
    defined = sub.by_id()
    errors = []
    if assoc.source not in new_docs:
        errors.append(_meta(assoc, f"the sourceObject of {short} must be a DocumentEntry of this submission"))
    if kind == md.SIGNS:
        if assoc.target in defined and assoc.target not in new_docs:
            errors.append(_meta(assoc, "signs targets a DocumentEntry, not a " + defined[assoc.target].kind))
    elif assoc.target in defined:
        errors.append(_meta(assoc, f"the targetObject of {short} must be a DocumentEntry already registered"))
    source = new_docs.get(assoc.source)
    if kind == md.IS_SNAPSHOT_OF and source is not None and source.on_demand:
        errors.append(_meta(assoc, "IsSnapshotOf goes from a stable DocumentEntry (the snapshot)"))
    return errors


def check_membership(sub: Submission) -> list[RegistryErrorItem]:
    """Every DocumentEntry and Folder of the submission, and every Folder->DocumentEntry HasMember,
    is a HasMember target of the SubmissionSet (ITI TF-3 4.2.2.1)."""
    ss = sub.submission_set
    if ss is None:
        return []  # check_structure already reported it
    members = {a.target for a in _member_associations(sub)}
    errors = []
    for obj in [*sub.document_entries, *sub.folders]:
        if obj.id not in members:
            errors.append(
                _meta(
                    obj,
                    f"is not a member of SubmissionSet {ss.id} (no HasMember association from the SubmissionSet to it)",
                )
            )
    for assoc in sub.associations:
        # Any other HasMember adds a document to a (new or registered) folder.
        from_folder = assoc.association_type == md.HAS_MEMBER and assoc.source != ss.id
        if from_folder and assoc.id not in members:
            errors.append(_meta(assoc, f"adds a document to a folder but is not a member of SubmissionSet {ss.id}"))
    return errors


def check_local_references(sub: Submission) -> list[RegistryErrorItem]:
    """Symbolic references must name an object of this submission: nothing else can carry that id."""
    ids = sub.by_id()
    errors = []
    for assoc in sub.associations:
        for end, ref in (("sourceObject", assoc.source), ("targetObject", assoc.target)):
            if ref and ref not in ids and not md.is_uuid_urn(ref):
                errors.append(
                    _item(
                        UNRESOLVED,
                        assoc,
                        f"{end} {ref} is neither an object of the submission nor a urn:uuid of a registered object",
                    )
                )
    for ref in sub.object_refs:
        if not md.is_uuid_urn(ref):
            errors.append(RegistryErrorItem(UNRESOLVED, f"ObjectRef {ref!r} is not a urn:uuid", ref))
    for c in sub.classifications:
        if c.classified_object not in ids:
            errors.append(
                RegistryErrorItem(
                    UNRESOLVED,
                    f"Classification {c.id} classifies {c.classified_object}, which is not an object of the submission",
                    c.id,
                )
            )
    return errors


def external_references(sub: Submission) -> set[str]:
    """urn:uuid ids the submission references but does not define: they must be registered."""
    ids = sub.by_id()
    refs = {r for a in sub.associations for r in (a.source, a.target)}
    return {r for r in refs if r and r not in ids and md.is_uuid_urn(r)}


def check_unique_ids_in_message(sub: Submission) -> list[RegistryErrorItem]:
    """No uniqueId twice among the SubmissionSet, Folders and DocumentEntries of one message."""
    seen: dict[str, RegistryObject] = {}
    errors = []
    for obj in [*sub.submission_sets, *sub.folders, *sub.document_entries]:
        uid = obj.unique_id
        if not uid:
            continue
        if uid in seen:
            errors.append(_item(DUPLICATE_IN_MESSAGE, obj, f"uniqueId {uid} is also used by {seen[uid].label()}"))
        else:
            seen[uid] = obj
    return errors


def check_patient_ids_match(sub: Submission) -> list[RegistryErrorItem]:
    """The SubmissionSet, its DocumentEntries and Folders all name the same patient."""
    ss = sub.submission_set
    if ss is None or not ss.patient_id:
        return []
    errors = []
    for obj in [*sub.document_entries, *sub.folders]:
        if obj.patient_id and obj.patient_id != ss.patient_id:
            errors.append(
                _item(
                    PATIENT_MISMATCH,
                    obj,
                    f"patientId {obj.patient_id} differs from the SubmissionSet's {ss.patient_id}",
                )
            )
    return errors


# Only identifiers may describe the patient: PID-3. Name, birth date, address, phone... would file
# a readable identity next to the RSNA-ID.
ALLOWED_SOURCE_PATIENT_INFO_FIELDS = ("PID-3",)


def check_privacy(sub: Submission, affinity_domain_oid: str) -> list[RegistryErrorItem]:
    """RSNA Image Share privacy rule, specific to this clearinghouse.

    The network never files a submission under a readable identity: the XDS patientId of every
    object must be an RSNA-ID of the affinity domain (``affinity_domain_oid``), and
    sourcePatientInfo may carry no demographics (only PID-3 identifiers), because the clearinghouse
    is the one place where such data would otherwise pile up next to the RSNA-ID.
    """
    errors = []
    for obj in [*sub.submission_sets, *sub.folders, *sub.document_entries]:
        pid = obj.patient_id
        if pid and is_patient_cx(pid) and parse_cx(pid)[1] != affinity_domain_oid:
            errors.append(
                _item(
                    UNKNOWN_PATIENT,
                    obj,
                    f"patientId {pid} is not assigned by the affinity domain "
                    f"{affinity_domain_oid} (privacy: only RSNA-IDs are accepted)",
                )
            )
    for de in sub.document_entries:
        for value in de.slot("sourcePatientInfo"):
            fld = value.split("|", 1)[0].strip()
            if fld not in ALLOWED_SOURCE_PATIENT_INFO_FIELDS:
                errors.append(
                    _meta(
                        de,
                        f"sourcePatientInfo {fld} is not accepted (privacy: the clearinghouse "
                        "files no demographics, only PID-3 identifiers)",
                    )
                )
    return errors


def validate_submission(sub: Submission, affinity_domain_oid: str) -> list[RegistryErrorItem]:
    """Every rule that needs nothing but the message itself."""
    errors = check_structure(sub) + check_ids(sub)
    for ss in sub.submission_sets:
        errors += check_submission_set(ss)
    for folder in sub.folders:
        errors += check_folder(folder)
    for de in sub.document_entries:
        errors += check_document_entry(de)
    for assoc in sub.associations:
        errors += check_association(assoc, sub)
    errors += check_membership(sub)
    errors += check_local_references(sub)
    errors += check_unique_ids_in_message(sub)
    errors += check_patient_ids_match(sub)
    errors += check_privacy(sub, affinity_domain_oid)
    return errors


# --- rules against registry state ----------------------------------------------------------------


@dataclass(frozen=True)
class KnownObject:
    """What the registry holds about one object, as far as ITI-42 rules need it."""

    entry_uuid: str
    object_type: str  # DocumentEntry, SubmissionSet, Folder, Association
    patient_id: str | None
    status: str
    unique_id: str | None = None
    hash: str | None = None
    size: int | None = None
    entry_type: str | None = None  # DocumentEntry objectType (stable / on-demand)
    lid: str | None = None
    version: int = 1
    submitted_by: str | None = None
    repository_unique_id: str | None = None
    source_uuid: str | None = None  # Associations: their ends
    target_uuid: str | None = None
    association_type: str | None = None


def check_new_ids_unused(sub: Submission, existing: Mapping[str, KnownObject]) -> list[RegistryErrorItem]:
    """A new object may bring its own urn:uuid, but not one the registry already has."""
    return [
        _meta(obj, f"entryUUID {obj.id} is already registered ({existing[obj.id].object_type})")
        for obj in sub.objects()
        if obj.id in existing
    ]


def check_references_exist(sub: Submission, existing: Mapping[str, KnownObject]) -> list[RegistryErrorItem]:
    """Every urn:uuid an association or ObjectRef names outside the submission is registered, and
    belongs to the submission's patient (ITI TF-3 4.2.2: associations never cross patients)."""
    ss = sub.submission_set
    patient = ss.patient_id if ss else None
    errors = []
    for assoc in sub.associations:
        for end, ref in (("sourceObject", assoc.source), ("targetObject", assoc.target)):
            if ref in sub.by_id() or not md.is_uuid_urn(ref):
                continue
            known = existing.get(ref)
            if known is None:
                errors.append(_item(UNRESOLVED, assoc, f"{end} {ref} is not in the submission nor in the registry"))
            elif patient and known.patient_id and known.patient_id != patient:
                errors.append(
                    _item(
                        PATIENT_MISMATCH,
                        assoc,
                        f"{end} {ref} belongs to patient {known.patient_id}, the submission to {patient}",
                    )
                )
    for ref in sub.object_refs:
        if md.is_uuid_urn(ref) and ref not in existing:
            errors.append(RegistryErrorItem(UNRESOLVED, f"ObjectRef {ref} is not in the registry", ref))
    return errors


def check_relationships(sub: Submission, existing: Mapping[str, KnownObject]) -> list[RegistryErrorItem]:
    """The registered end of a document relationship is a DocumentEntry of status Approved
    (XDSRegistryDeprecatedDocumentError otherwise, ITI TF-3 4.2.2.2); an IsSnapshotOf target is an
    On-Demand entry; one submission replaces a document at most once. A Folder may only gain
    Approved documents (ITI TF-3 4.2.2.1.3)."""
    errors = []
    replaced: dict[str, str] = {}
    for assoc in sub.associations:
        kind = assoc.association_type
        target = existing.get(assoc.target)
        if target is None or (kind not in md.RELATIONSHIP_TYPES and kind != md.HAS_MEMBER):
            continue  # check_references_exist reports unknown targets
        if kind == md.HAS_MEMBER:
            if target.object_type == "DocumentEntry" and target.status != md.APPROVED:
                errors.append(_item(DEPRECATED_DOCUMENT, assoc, f"targetObject {assoc.target} is {_status(target)}"))
            continue
        if target.object_type != "DocumentEntry":
            errors.append(_meta(assoc, f"targetObject {assoc.target} is a {target.object_type}, not a DocumentEntry"))
            continue
        if target.status != md.APPROVED:
            errors.append(
                _item(DEPRECATED_DOCUMENT, assoc, f"targetObject {assoc.target} is not Approved ({_status(target)})")
            )
        if kind == md.IS_SNAPSHOT_OF and target.entry_type != md.ON_DEMAND_DOCUMENT_ENTRY:
            errors.append(_meta(assoc, f"IsSnapshotOf targets an On-Demand DocumentEntry; {assoc.target} is stable"))
        if kind in md.REPLACING_TYPES:
            if assoc.target in replaced:
                errors.append(_meta(assoc, f"{assoc.target} is already replaced by {replaced[assoc.target]}"))
            replaced[assoc.target] = assoc.source
    return errors


def _status(obj: KnownObject) -> str:
    return obj.status.rsplit(":", 1)[-1]


def check_folder_membership(sub: Submission, existing: Mapping[str, KnownObject]) -> list[RegistryErrorItem]:
    """A HasMember not from the SubmissionSet must link a Folder to a DocumentEntry, each either
    of this submission or registered (ITI TF-3 4.2.2.1.3)."""
    ss = sub.submission_set
    kinds = {obj.id: obj.kind for obj in sub.objects()}
    kinds.update({k: v.object_type for k, v in existing.items() if k not in kinds})
    errors = []
    for assoc in sub.associations:
        if assoc.association_type != md.HAS_MEMBER or ss is None or assoc.source == ss.id:
            continue
        source, target = kinds.get(assoc.source), kinds.get(assoc.target)
        if source is not None and source != "Folder":
            errors.append(
                _meta(
                    assoc,
                    f"HasMember source {assoc.source} is a {source}; only the SubmissionSet and Folders have members",
                )
            )
        if source == "Folder" and target is not None and target != "DocumentEntry":
            errors.append(_meta(assoc, f"a Folder can only contain DocumentEntries, {assoc.target} is a {target}"))
    return errors


def _same(a: str | None, b: str | None) -> bool:
    return (a or "").lower() == (b or "").lower()


def check_unique_ids_in_registry(
    sub: Submission, registered: Mapping[str, list[KnownObject]]
) -> list[RegistryErrorItem]:
    """uniqueIds already registered (ITI TF-2b 3.42.4.1.3, ITI TF-3 4.2.4.1).

    A source may register the same document again (e.g. after a lost response): a DocumentEntry
    whose uniqueId is already held only by DocumentEntries with the same hash and size is accepted
    as a new entry. A different hash is XDSNonIdenticalHash, a different size XDSNonIdenticalSize;
    a uniqueId held by a SubmissionSet or Folder, or reused by one, is XDSDuplicateUniqueIdInRegistry.
    """
    errors = []
    for obj in [*sub.submission_sets, *sub.folders, *sub.document_entries]:
        uid = obj.unique_id
        holders = registered.get(uid or "", [])
        if not uid or not holders:
            continue
        if (
            not isinstance(obj, DocumentEntry)
            or obj.on_demand
            or any(h.object_type != "DocumentEntry" or h.hash is None for h in holders)
        ):
            kinds = ", ".join(sorted({h.object_type for h in holders}))
            errors.append(_item(DUPLICATE_IN_REGISTRY, obj, f"uniqueId {uid} is already registered ({kinds})"))
            continue
        digest, size = obj.slot_value("hash"), obj.slot_value("size")
        if any(not _same(h.hash, digest) for h in holders):
            errors.append(
                _item(
                    NON_IDENTICAL_HASH,
                    obj,
                    f"uniqueId {uid} is already registered with hash {holders[0].hash}, this submission has {digest}",
                )
            )
        elif any(size is not None and h.size is not None and str(h.size) != size for h in holders):
            errors.append(
                _item(
                    NON_IDENTICAL_SIZE,
                    obj,
                    f"uniqueId {uid} is already registered with size {holders[0].size}, this submission has {size}",
                )
            )
    return errors


def check_patients_known(sub: Submission, is_known: Callable[[str], bool]) -> list[RegistryErrorItem]:
    """Every patientId must have been fed to the registry (ITI-8/ITI-44) and be active."""
    errors = []
    verdict: dict[str, bool] = {}
    for obj in [*sub.submission_sets, *sub.folders, *sub.document_entries]:
        pid = obj.patient_id
        if not pid or not is_patient_cx(pid):
            continue  # format errors are reported by the attribute rules
        if pid not in verdict:
            verdict[pid] = is_known(pid)
        if not verdict[pid]:
            errors.append(_item(UNKNOWN_PATIENT, obj, f"patientId {pid} is not known to the registry"))
    return errors


def validate_against_registry(
    sub: Submission,
    existing: Mapping[str, KnownObject],
    registered: Mapping[str, list[KnownObject]],
    is_known: Callable[[str], bool],
) -> list[RegistryErrorItem]:
    """The rules that need registry state; the caller looks it up (see registry.store)."""
    return (
        check_new_ids_unused(sub, existing)
        + check_references_exist(sub, existing)
        + check_relationships(sub, existing)
        + check_folder_membership(sub, existing)
        + check_unique_ids_in_registry(sub, registered)
        + check_patients_known(sub, is_known)
    )
