"""Parsing of XDS metadata (ebRIM 3.0) into plain dataclasses, and symbolic-id resolution.

Pure: no database, no settings. ``parse_submission`` reads an ``lcm:SubmitObjectsRequest``
(ITI TF-3 4.2.1.5) into a :class:`Submission`; every parsed object keeps its XML element so the
registry can store it and return it verbatim in LeafClass query results. ``resolve_submission``
produces the stored form: symbolic ids replaced by fresh ``urn:uuid`` ids wherever they occur
(ITI TF-3 4.1.12.1) and the availability status set by the registry.

The UUID constants are the fixed classification schemes, identification schemes and object types
of ITI TF-3 4.2.5 (Table 4.2.5.1-1 and friends).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from lxml import etree

from clearinghouse.errors import XDSRegistryError, XDSRegistryMetadataError
from clearinghouse.xmlsafe import NS, qname
from registry import formats

RIM = NS["rim"]

# --- object types and classification nodes -------------------------------------------------------
STABLE_DOCUMENT_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
ON_DEMAND_DOCUMENT_ENTRY = "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"
DOCUMENT_ENTRY_TYPES = (STABLE_DOCUMENT_ENTRY, ON_DEMAND_DOCUMENT_ENTRY)
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
FOLDER_NODE = "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"
OBJECT_TYPE_CLASSIFICATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
OBJECT_TYPE_EXTERNAL_IDENTIFIER = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier"
OBJECT_TYPE_ASSOCIATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association"
OBJECT_TYPE_REGISTRY_PACKAGE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage"

# --- DocumentEntry -------------------------------------------------------------------------------
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_HEALTHCARE_FACILITY_TYPE_CODE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE_SETTING_CODE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_CONFIDENTIALITY_CODE = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_EVENT_CODE_LIST = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_REFERENCE_ID_LIST_SLOT = "urn:ihe:iti:xds:2013:referenceIdList"

# --- SubmissionSet -------------------------------------------------------------------------------
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_CONTENT_TYPE_CODE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"

# --- Folder --------------------------------------------------------------------------------------
FOLDER_UNIQUE_ID = "urn:uuid:75df8f67-9973-4fbe-a900-df66cefecc5a"
FOLDER_PATIENT_ID = "urn:uuid:f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a"
FOLDER_CODE_LIST = "urn:uuid:1ba97051-7806-41a8-a48b-8fce7af683c5"

# --- Associations (ITI TF-3 4.2.2) ---------------------------------------------------------------
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
XFRM = "urn:ihe:iti:2007:AssociationType:XFRM"
APND = "urn:ihe:iti:2007:AssociationType:APND"
XFRM_RPLC = "urn:ihe:iti:2007:AssociationType:XFRM_RPLC"
SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
IS_SNAPSHOT_OF = "urn:ihe:iti:2010:AssociationType:IsSnapshotOf"
ASSOCIATION_TYPES = (HAS_MEMBER, RPLC, XFRM, APND, XFRM_RPLC, SIGNS, IS_SNAPSHOT_OF)
# Relationships between DocumentEntries (ITI TF-3 4.2.2.2), as opposed to HasMember.
RELATIONSHIP_TYPES = (RPLC, XFRM, APND, XFRM_RPLC, SIGNS, IS_SNAPSHOT_OF)
REPLACING_TYPES = (RPLC, XFRM_RPLC)
# Documents that exist only in relation to the one they transform or append to: deprecated with it.
DEPENDENT_TYPES = (XFRM, APND)
SUBMISSION_SET_STATUS_SLOT = "SubmissionSetStatus"
# XDS Metadata Update (ITI-57, ITI TF-2b 3.57.4.1.3).
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
PREVIOUS_VERSION_SLOT = "PreviousVersion"
ORIGINAL_STATUS_SLOT = "OriginalStatus"
NEW_STATUS_SLOT = "NewStatus"
ASSOCIATION_PROPAGATION_SLOT = "AssociationPropagation"

# --- limitedMetadata flags (XDR/XDM only; ITI TF-3 Table 4.2.5.1-1) -------------------------------
DE_LIMITED_METADATA = "urn:uuid:ab9b591b-83ab-4d03-8f5d-f93b1fb92e85"
SS_LIMITED_METADATA = "urn:uuid:5003a9db-8d8d-49e6-bf0c-990e34ac7707"
FOLDER_LIMITED_METADATA = "urn:uuid:2c144a76-29a9-4b7c-af54-b25409fe7d03"

# --- availability status (ebRIM StatusType) ------------------------------------------------------
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"

URN_UUID = "urn:uuid:"

# Attributes that hold the id of another object (or of the object itself); every one of them
# must be rewritten when a symbolic id is replaced, or the stored graph would dangle.
_REFERENCE_ATTRIBUTES = ("id", "lid", "classifiedObject", "sourceObject", "targetObject", "registryObject")


def is_uuid_urn(value: str) -> bool:
    """True for ``urn:uuid:<uuid>``; anything else in an id attribute is a symbolic id."""
    return formats.is_uuid_urn(value)


def new_uuid_urn() -> str:
    return f"{URN_UUID}{uuid.uuid4()}"


# --- dataclasses ---------------------------------------------------------------------------------


@dataclass
class Classification:
    """A rim:Classification: an external code (scheme + nodeRepresentation), an author, or the
    node classification that makes a RegistryPackage a SubmissionSet or Folder."""

    id: str
    classified_object: str
    scheme: str = ""
    node: str = ""
    node_representation: str | None = None
    slots: dict[str, list[str]] = field(default_factory=dict)
    name: str | None = None
    nested: bool = True
    element: etree._Element | None = field(default=None, repr=False, compare=False)

    @property
    def coding_scheme(self) -> str | None:
        values = self.slots.get("codingScheme") or []
        return values[0] if len(values) == 1 else None

    @property
    def code_key(self) -> str:
        """The code as the stored query parameters spell it: ``code^^codingScheme``."""
        return f"{self.node_representation or ''}^^{self.coding_scheme or ''}"


@dataclass
class ExternalIdentifier:
    id: str
    registry_object: str
    scheme: str
    value: str
    name: str | None = None


@dataclass
class RegistryObject:
    """Common part of ExtrinsicObject, RegistryPackage and Association."""

    id: str
    element: etree._Element = field(repr=False, compare=False)
    lid: str | None = None
    object_type: str | None = None
    status: str | None = None
    slots: dict[str, list[str]] = field(default_factory=dict)
    name: str | None = None
    description: str | None = None
    classifications: list[Classification] = field(default_factory=list)
    external_identifiers: list[ExternalIdentifier] = field(default_factory=list)
    # Set for slots that occur more than once on the object (a metadata error of its own).
    repeated_slots: list[str] = field(default_factory=list)

    kind = "RegistryObject"

    @property
    def symbolic(self) -> bool:
        return not is_uuid_urn(self.id)

    def slot(self, name: str) -> list[str]:
        return self.slots.get(name, [])

    def slot_value(self, name: str) -> str | None:
        values = self.slots.get(name)
        return values[0] if values else None

    def classified(self, scheme: str) -> list[Classification]:
        return [c for c in self.classifications if c.scheme == scheme]

    def external_ids(self, scheme: str) -> list[ExternalIdentifier]:
        return [e for e in self.external_identifiers if e.scheme == scheme]

    def external_id(self, scheme: str) -> str | None:
        found = self.external_ids(scheme)
        return found[0].value if found else None

    def has_node(self, node: str) -> bool:
        return any(c.node == node for c in self.classifications)

    # Overridden per kind; None where the kind has no such attribute.
    @property
    def unique_id(self) -> str | None:
        return None

    @property
    def patient_id(self) -> str | None:
        return None

    def label(self) -> str:
        """How error messages name the object: kind, id as submitted and, if known, uniqueId."""
        uid = self.unique_id
        return f"{self.kind} {self.id}" + (f" (uniqueId {uid})" if uid else "")


@dataclass
class DocumentEntry(RegistryObject):
    mime_type: str | None = None

    kind = "DocumentEntry"

    @property
    def unique_id(self) -> str | None:
        return self.external_id(DE_UNIQUE_ID)

    @property
    def patient_id(self) -> str | None:
        return self.external_id(DE_PATIENT_ID)

    @property
    def on_demand(self) -> bool:
        return self.object_type == ON_DEMAND_DOCUMENT_ENTRY


@dataclass
class SubmissionSet(RegistryObject):
    kind = "SubmissionSet"

    @property
    def unique_id(self) -> str | None:
        return self.external_id(SS_UNIQUE_ID)

    @property
    def patient_id(self) -> str | None:
        return self.external_id(SS_PATIENT_ID)


@dataclass
class Folder(RegistryObject):
    kind = "Folder"

    @property
    def unique_id(self) -> str | None:
        return self.external_id(FOLDER_UNIQUE_ID)

    @property
    def patient_id(self) -> str | None:
        return self.external_id(FOLDER_PATIENT_ID)


@dataclass
class Association(RegistryObject):
    association_type: str = ""
    source: str = ""
    target: str = ""

    kind = "Association"

    def label(self) -> str:
        short = self.association_type.rsplit(":", 1)[-1]
        return f"Association {self.id} ({short} {self.source} -> {self.target})"


@dataclass
class Submission:
    """One parsed SubmitObjectsRequest."""

    request: etree._Element = field(repr=False)
    submission_sets: list[SubmissionSet] = field(default_factory=list)
    folders: list[Folder] = field(default_factory=list)
    document_entries: list[DocumentEntry] = field(default_factory=list)
    associations: list[Association] = field(default_factory=list)
    # Top-level rim:Classification elements (e.g. the one marking the SubmissionSet); they are
    # also merged into their object's ``classifications`` with ``nested=False``.
    classifications: list[Classification] = field(default_factory=list)
    # Ids of rim:ObjectRef elements: references to objects already in the registry.
    object_refs: list[str] = field(default_factory=list)
    # RegistryPackages classified as neither SubmissionSet nor Folder, and other object kinds.
    unclassified_packages: list[RegistryObject] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    @property
    def submission_set(self) -> SubmissionSet | None:
        return self.submission_sets[0] if len(self.submission_sets) == 1 else None

    def objects(self) -> Iterator[RegistryObject]:
        """Every registry object of the submission (SubmissionSets, Folders, DocumentEntries,
        Associations), in that order."""
        yield from self.submission_sets
        yield from self.folders
        yield from self.document_entries
        yield from self.associations

    def by_id(self) -> dict[str, RegistryObject]:
        return {obj.id: obj for obj in self.objects()}


# --- parsing -------------------------------------------------------------------------------------


def _localized(element: etree._Element, child: str) -> str | None:
    node = element.find(f"{{{RIM}}}{child}/{{{RIM}}}LocalizedString")
    return node.get("value") if node is not None else None


def parse_slots(element: etree._Element) -> tuple[dict[str, list[str]], list[str]]:
    """The direct rim:Slot children of ``element`` as name -> values, plus repeated slot names."""
    slots: dict[str, list[str]] = {}
    repeated: list[str] = []
    for slot in element.findall(f"{{{RIM}}}Slot"):
        name = slot.get("name", "")
        values = [(v.text or "") for v in slot.findall(f"{{{RIM}}}ValueList/{{{RIM}}}Value")]
        if name in slots:
            repeated.append(name)
            slots[name].extend(values)
        else:
            slots[name] = values
    return slots, repeated


def parse_classification(element: etree._Element, *, nested: bool, owner: str = "") -> Classification:
    slots, _ = parse_slots(element)
    return Classification(
        id=element.get("id", ""),
        # A nested Classification may leave classifiedObject implicit in sloppy submissions; the
        # enclosing object is what it classifies either way.
        classified_object=element.get("classifiedObject") or owner,
        scheme=element.get("classificationScheme", ""),
        node=element.get("classificationNode", ""),
        node_representation=element.get("nodeRepresentation"),
        slots=slots,
        name=_localized(element, "Name"),
        nested=nested,
        element=element,
    )


def parse_external_identifier(element: etree._Element, owner: str = "") -> ExternalIdentifier:
    return ExternalIdentifier(
        id=element.get("id", ""),
        registry_object=element.get("registryObject") or owner,
        scheme=element.get("identificationScheme", ""),
        value=element.get("value", ""),
        name=_localized(element, "Name"),
    )


def _common(element: etree._Element) -> dict:
    obj_id = element.get("id", "")
    slots, repeated = parse_slots(element)
    return {
        "id": obj_id,
        "element": element,
        "lid": element.get("lid"),
        "object_type": element.get("objectType"),
        "status": element.get("status"),
        "slots": slots,
        "repeated_slots": repeated,
        "name": _localized(element, "Name"),
        "description": _localized(element, "Description"),
        "classifications": [
            parse_classification(c, nested=True, owner=obj_id) for c in element.findall(f"{{{RIM}}}Classification")
        ],
        "external_identifiers": [
            parse_external_identifier(e, owner=obj_id) for e in element.findall(f"{{{RIM}}}ExternalIdentifier")
        ],
    }


def parse_extrinsic_object(element: etree._Element) -> DocumentEntry:
    return DocumentEntry(**_common(element), mime_type=element.get("mimeType"))


def parse_association(element: etree._Element) -> Association:
    return Association(
        **_common(element),
        association_type=element.get("associationType", ""),
        source=element.get("sourceObject", ""),
        target=element.get("targetObject", ""),
    )


def parse_registry_package(element: etree._Element, outer: list[Classification]) -> RegistryObject:
    """A RegistryPackage becomes a SubmissionSet or Folder by its classification node, which may be
    nested or a separate top-level Classification (``outer``)."""
    common = _common(element)
    common["classifications"].extend(c for c in outer if c.classified_object == common["id"])
    probe = RegistryObject(**common)
    if probe.has_node(SUBMISSION_SET_NODE):
        return SubmissionSet(**common)
    if probe.has_node(FOLDER_NODE):
        return Folder(**common)
    return probe


def parse_submission(request: etree._Element) -> Submission:
    """Parse an ``lcm:SubmitObjectsRequest``.

    Raises XDSRegistryMetadataError only when the element is not a SubmitObjectsRequest at all;
    everything else that is wrong is left for the rules to report, all at once.
    """
    if request.tag != qname("lcm", "SubmitObjectsRequest"):
        raise XDSRegistryMetadataError(f"expected lcm:SubmitObjectsRequest, got {request.tag}")
    object_list = request.find(f"{{{RIM}}}RegistryObjectList")
    if object_list is None:
        raise XDSRegistryMetadataError("SubmitObjectsRequest has no rim:RegistryObjectList")
    sub = Submission(request=request)
    children = [c for c in object_list if isinstance(c.tag, str)]
    outer = [parse_classification(c, nested=False) for c in children if c.tag == f"{{{RIM}}}Classification"]
    sub.classifications = outer
    for child in children:
        tag = etree.QName(child).localname if child.tag.startswith(f"{{{RIM}}}") else child.tag
        if tag == "ExtrinsicObject":
            de = parse_extrinsic_object(child)
            de.classifications.extend(c for c in outer if c.classified_object == de.id)
            sub.document_entries.append(de)
        elif tag == "RegistryPackage":
            pkg = parse_registry_package(child, outer)
            if isinstance(pkg, SubmissionSet):
                sub.submission_sets.append(pkg)
            elif isinstance(pkg, Folder):
                sub.folders.append(pkg)
            else:
                sub.unclassified_packages.append(pkg)
        elif tag == "Association":
            sub.associations.append(parse_association(child))
        elif tag == "ObjectRef":
            sub.object_refs.append(child.get("id", ""))
        elif tag == "Classification":
            continue
        else:
            sub.unsupported.append(tag)
    return sub


# --- id resolution -------------------------------------------------------------------------------


def symbolic_ids(sub: Submission) -> list[str]:
    """Every symbolic id the submission defines (objects and their nested parts), in order."""
    found: list[str] = []
    object_list = sub.request.find(f"{{{RIM}}}RegistryObjectList")
    if object_list is None:
        return found
    for node in object_list.iter(f"{{{RIM}}}*"):
        value = node.get("id")
        if value and not is_uuid_urn(value) and node.tag != f"{{{RIM}}}ObjectRef" and value not in found:
            found.append(value)
    return found


def id_mapping(sub: Submission, new_id: Callable[[], str] = new_uuid_urn) -> dict[str, str]:
    """symbolic id -> new ``urn:uuid`` for every id the submission defines symbolically."""
    return {sym: new_id() for sym in symbolic_ids(sub)}


def _rewrite(element: etree._Element, mapping: dict[str, str]) -> None:
    for node in element.iter(f"{{{RIM}}}*"):
        for attr in _REFERENCE_ATTRIBUTES:
            value = node.get(attr)
            if value is not None and value in mapping:
                node.set(attr, mapping[value])


_STATUS_TAGS = {f"{{{RIM}}}{t}" for t in ("ExtrinsicObject", "RegistryPackage", "Association")}


def resolve_submission(
    sub: Submission,
    mapping: dict[str, str],
    *,
    status: str = APPROVED,
    now: str | None = None,
    versions: Mapping[str, int] | None = None,
) -> Submission:
    """The submission as the registry stores it: a re-parsed deep copy with symbolic ids replaced
    by ``mapping`` everywhere they occur, ``status`` set on every top-level object, ``lid`` = id
    where the source left it out (first version, ITI TF-3 4.1.12.1), each DocumentEntry and Folder
    given its rim:VersionInfo (``versions`` by submitted id, else 1), and each new Folder's
    ``lastUpdateTime`` set to ``now`` (ITI TF-3 4.2.3.4: the registry maintains it)."""
    request = copy.deepcopy(sub.request)
    versioned = {mapping.get(k, k): v for k, v in (versions or {}).items()}
    _rewrite(request, mapping)
    object_list = request.find(f"{{{RIM}}}RegistryObjectList")
    assert object_list is not None  # parse_submission already required it
    for child in object_list:
        if child.tag in _STATUS_TAGS:
            child.set("status", status)
            if not child.get("lid"):
                child.set("lid", child.get("id", ""))
        if child.tag in _VERSIONED_TAGS:
            set_version_info(child, versioned.get(child.get("id", ""), 1))
    resolved = parse_submission(request)
    if now and resolved.folders:
        for folder in resolved.folders:
            set_slot(folder.element, "lastUpdateTime", [now])
        resolved = parse_submission(request)
    return resolved


# DocumentEntries and Folders are versioned by ITI-57; SubmissionSets and Associations are not.
_VERSIONED_TAGS = {f"{{{RIM}}}ExtrinsicObject", f"{{{RIM}}}RegistryPackage"}
# rim:RegistryObjectType content order (rim.xsd): Slot*, Name?, Description?, VersionInfo?,
# Classification*, ExternalIdentifier*, then the subtype's own elements.
_BEFORE_VERSION_INFO = {f"{{{RIM}}}{t}" for t in ("Slot", "Name", "Description")}


def set_version_info(element: etree._Element, version: int) -> None:
    """Set rim:VersionInfo/@versionName, in its schema position."""
    for old in element.findall(f"{{{RIM}}}VersionInfo"):
        element.remove(old)
    position = 0
    for i, child in enumerate(element):
        if child.tag in _BEFORE_VERSION_INFO:
            position = i + 1
    node = etree.Element(f"{{{RIM}}}VersionInfo", versionName=str(version))
    element.insert(position, node)


def version_of(element: etree._Element) -> int | None:
    """rim:VersionInfo/@versionName as a number, if it is one."""
    node = element.find(f"{{{RIM}}}VersionInfo")
    name = node.get("versionName", "") if node is not None else ""
    return int(name) if name.isdigit() else None


def parse_remove_request(request: etree._Element) -> list[str]:
    """The ObjectRef ids of an ``lcm:RemoveObjectsRequest`` (ITI-62, ITI TF-2b 3.62.4.1.2).

    Only the ObjectRefList form with the default deletion scope is part of the transaction; the ids
    are returned as given, in order, without duplicates.
    """
    if request.tag != qname("lcm", "RemoveObjectsRequest"):
        raise XDSRegistryError(f"expected lcm:RemoveObjectsRequest, got {request.tag}")
    scope = request.get("deletionScope", DELETE_ALL)
    if scope != DELETE_ALL:
        raise XDSRegistryError(f"deletionScope {scope} is not supported; only {DELETE_ALL} removes metadata")
    if request.find(f"{{{RIM}}}AdhocQuery") is not None:
        raise XDSRegistryError("RemoveObjectsRequest names its objects by rim:ObjectRefList, not by a query")
    refs = request.findall(f"{{{RIM}}}ObjectRefList/{{{RIM}}}ObjectRef")
    if not refs:
        raise XDSRegistryError("RemoveObjectsRequest has no rim:ObjectRefList/rim:ObjectRef")
    return list(dict.fromkeys(r.get("id", "") for r in refs))


DELETE_ALL = "urn:oasis:names:tc:ebxml-regrep:DeletionScopeType:DeleteAll"


# Extra metadata by which the clearinghouse's own repository tells the registry which participant
# sent the ITI-41 it relays (ITI-42 otherwise names only the repository). Trusted only from the
# in-process repository, never stored.
SUBMITTER_SLOT = "urn:isn:clearinghouse:submitter"


def take_submitter(request: etree._Element) -> str | None:
    """Remove the submitter slot from every object of a SubmitObjectsRequest; return its value."""
    found = None
    for slot in request.iterfind(f"{{{RIM}}}RegistryObjectList/{{{RIM}}}*/{{{RIM}}}Slot[@name='{SUBMITTER_SLOT}']"):
        values = [v.text or "" for v in slot.iterfind(f"{{{RIM}}}ValueList/{{{RIM}}}Value")]
        found = found or (values[0] if values else None)
        parent = slot.getparent()
        if parent is not None:
            parent.remove(slot)
    return found


def set_slot(element: etree._Element, name: str, values: Iterable[str]) -> None:
    """Replace (or add) the slot ``name`` on ``element``, keeping ebRIM element order: slots come
    first in every RegistryObject."""
    for slot in element.findall(f"{{{RIM}}}Slot"):
        if slot.get("name") == name:
            element.remove(slot)
    slots = element.findall(f"{{{RIM}}}Slot")
    position = (element.index(slots[-1]) + 1) if slots else 0
    slot = etree.Element(f"{{{RIM}}}Slot", name=name)
    value_list = etree.SubElement(slot, f"{{{RIM}}}ValueList")
    for value in values:
        etree.SubElement(value_list, f"{{{RIM}}}Value").text = value
    element.insert(position, slot)


def to_text(element: etree._Element) -> str:
    """Serialise one object for storage: namespaces declared on the element itself, and only those
    it uses (a query answer concatenates stored objects, so each is written lean once)."""
    standalone = copy.deepcopy(element)
    etree.cleanup_namespaces(standalone)
    return etree.tostring(standalone, encoding="unicode", with_tail=False)


def from_text(text: str) -> etree._Element:
    """Parse stored XML back; it was written by us, but stays under the no-DTD parser anyway."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    return etree.fromstring(text.encode("utf-8"), parser)
