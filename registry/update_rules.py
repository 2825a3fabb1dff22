"""ITI-57 Update Document Set (XDS Metadata Update, ITI TF-2b 3.57.4.1.3), as pure functions.

``plan_update`` sorts an ``lcm:SubmitObjectsRequest`` into the operations the transaction defines:

- a new version of a registered DocumentEntry or Folder: an object whose ``lid`` is the logicalId
  of the registered one, made a member of the SubmissionSet by a HasMember association carrying
  ``PreviousVersion`` (the version it replaces) and optionally ``AssociationPropagation``;
- a status change: an ``UpdateAvailabilityStatus`` association from the SubmissionSet to the
  object, with ``OriginalStatus`` and ``NewStatus``;
- a new folder membership between registered objects (HasMember Folder -> DocumentEntry, itself a
  member of the SubmissionSet).

Anything else (new documents, relationships) belongs to ITI-42 and is refused with
XDSMetadataUpdateOperationError. ``validate_update`` then checks each operation against what the
registry holds; the caller looks that up (registry.update).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from clearinghouse.errors import (
    RegistryErrorItem,
    UnresolvedReferenceException,
    XDSDuplicateUniqueIdInRegistry,
    XDSMetadataUpdateError,
    XDSMetadataUpdateOperationError,
    XDSMetadataVersionError,
    XDSPatientIdDoesNotMatch,
    XDSPatientIDReconciliationError,
    XDSRegistryDeprecatedDocumentError,
)
from registry import metadata as md
from registry import rules
from registry.metadata import Association, DocumentEntry, Folder, RegistryObject, Submission
from registry.rules import KnownObject

UPDATE_ERROR = XDSMetadataUpdateError.code
VERSION_ERROR = XDSMetadataVersionError.code
OPERATION_ERROR = XDSMetadataUpdateOperationError.code
RECONCILIATION_ERROR = XDSPatientIDReconciliationError.code
STATUSES = (md.APPROVED, md.DEPRECATED)


def _item(code: str, obj: RegistryObject | None, message: str) -> RegistryErrorItem:
    if obj is None:
        return RegistryErrorItem(code, message)
    return RegistryErrorItem(code, f"{obj.label()}: {message}", obj.id)


@dataclass
class VersionUpdate:
    """A new version of the registered object whose logicalId is ``obj.lid``."""

    obj: DocumentEntry | Folder
    membership: Association | None = None
    previous_version: str | None = None
    propagate: bool = True


@dataclass
class StatusUpdate:
    assoc: Association

    @property
    def original(self) -> list[str]:
        return self.assoc.slot(md.ORIGINAL_STATUS_SLOT)

    @property
    def new(self) -> list[str]:
        return self.assoc.slot(md.NEW_STATUS_SLOT)


@dataclass
class UpdatePlan:
    versions: list[VersionUpdate] = field(default_factory=list)
    status_updates: list[StatusUpdate] = field(default_factory=list)
    memberships: list[Association] = field(default_factory=list)
    errors: list[RegistryErrorItem] = field(default_factory=list)

    def lids(self) -> set[str]:
        return {v.obj.lid for v in self.versions if v.obj.lid}


def _is_version(obj: RegistryObject) -> bool:
    return bool(obj.lid) and obj.lid != obj.id


def check_new_objects(sub: Submission) -> list[RegistryErrorItem]:
    """ITI-57 updates registered objects only: a DocumentEntry or Folder without a lid naming a
    registered object is new, and new objects are registered with ITI-42 (ITI-41)."""
    return [
        _item(
            OPERATION_ERROR,
            obj,
            "is a new object (no lid naming a registered one); ITI-57 only updates registered objects, "
            "new ones are submitted with ITI-41/ITI-42",
        )
        for obj in [*sub.document_entries, *sub.folders]
        if not _is_version(obj)
    ]


def check_version_membership(update: VersionUpdate) -> list[RegistryErrorItem]:
    """A new version is a member of the SubmissionSet, as an Original, with the PreviousVersion it
    replaces and an optional AssociationPropagation of yes or no (ITI TF-2b 3.57.4.1.3.3.1)."""
    obj, assoc = update.obj, update.membership
    if assoc is None:
        return [_item(UPDATE_ERROR, obj, "is not a member of the SubmissionSet (no HasMember association to it)")]
    errors = []
    if assoc.slot(md.SUBMISSION_SET_STATUS_SLOT) != ["Original"]:
        errors.append(_item(UPDATE_ERROR, assoc, "the HasMember of a new version needs SubmissionSetStatus = Original"))
    previous = assoc.slot(md.PREVIOUS_VERSION_SLOT)
    if len(previous) != 1 or not previous[0].isdigit():
        errors.append(
            _item(UPDATE_ERROR, assoc, "the HasMember of a new version needs one PreviousVersion slot value (a number)")
        )
    propagation = assoc.slot(md.ASSOCIATION_PROPAGATION_SLOT)
    if propagation and propagation not in (["yes"], ["no"]):
        errors.append(_item(UPDATE_ERROR, assoc, f"AssociationPropagation is yes or no, not {propagation}"))
    return errors


def check_status_update(update: StatusUpdate, sub: Submission) -> list[RegistryErrorItem]:
    """An UpdateAvailabilityStatus association goes from the SubmissionSet to a registered object
    and states its current (OriginalStatus) and requested (NewStatus) availabilityStatus, each one
    of Approved and Deprecated, and different (ITI TF-2b 3.57.4.1.3.3.2)."""
    assoc = update.assoc
    ss = sub.submission_set
    errors = []
    if ss is not None and assoc.source != ss.id:
        errors.append(_item(UPDATE_ERROR, assoc, "the sourceObject of UpdateAvailabilityStatus is the SubmissionSet"))
    if assoc.target in sub.by_id() or not md.is_uuid_urn(assoc.target):
        errors.append(
            _item(UPDATE_ERROR, assoc, "the targetObject of UpdateAvailabilityStatus is a registered urn:uuid")
        )
    for name, values in ((md.ORIGINAL_STATUS_SLOT, update.original), (md.NEW_STATUS_SLOT, update.new)):
        if len(values) != 1 or values[0] not in STATUSES:
            errors.append(_item(UPDATE_ERROR, assoc, f"slot {name} needs one value, Approved or Deprecated (URN)"))
    if update.original and update.original == update.new:
        errors.append(_item(UPDATE_ERROR, assoc, "OriginalStatus and NewStatus are the same"))
    return errors


def plan_update(sub: Submission) -> UpdatePlan:
    """Sort the submission into ITI-57 operations; structural problems land in ``plan.errors``."""
    plan = UpdatePlan(errors=check_new_objects(sub))
    ss = sub.submission_set
    versions = {obj.id: VersionUpdate(obj) for obj in [*sub.document_entries, *sub.folders] if _is_version(obj)}
    member_links = set()
    for assoc in sub.associations:
        kind = assoc.association_type
        from_ss = ss is not None and assoc.source == ss.id
        if kind == md.HAS_MEMBER and from_ss and assoc.target in versions:
            update = versions[assoc.target]
            update.membership = assoc
            update.previous_version = (assoc.slot(md.PREVIOUS_VERSION_SLOT) or [None])[0]
            update.propagate = assoc.slot(md.ASSOCIATION_PROPAGATION_SLOT) != ["no"]
        elif kind == md.HAS_MEMBER and from_ss:
            member_links.add(assoc.target)
        elif kind == md.UPDATE_AVAILABILITY_STATUS:
            plan.status_updates.append(StatusUpdate(assoc))
        elif kind == md.HAS_MEMBER and assoc.target not in sub.by_id() and assoc.source not in sub.by_id():
            plan.memberships.append(assoc)
        else:
            short = kind.rsplit(":", 1)[-1] or "(none)"
            plan.errors.append(
                _item(
                    OPERATION_ERROR,
                    assoc,
                    f"{short} from {assoc.source} to {assoc.target} is not an ITI-57 operation "
                    "(new versions, UpdateAvailabilityStatus, and folder membership of registered objects)",
                )
            )
    for assoc in plan.memberships:
        if assoc.id not in member_links:
            plan.errors.append(
                _item(UPDATE_ERROR, assoc, "adds a folder member but is not a member of the SubmissionSet")
            )
    plan.versions = list(versions.values())
    for update in plan.versions:
        plan.errors += check_version_membership(update)
    for status in plan.status_updates:
        plan.errors += check_status_update(status, sub)
    lids = [v.obj.lid for v in plan.versions]
    for lid in sorted({lid for lid in lids if lids.count(lid) > 1 and lid}):
        plan.errors.append(RegistryErrorItem(OPERATION_ERROR, f"logicalId {lid} is updated more than once", lid))
    return plan


def validate_update_submission(sub: Submission, plan: UpdatePlan, affinity_domain_oid: str) -> list[RegistryErrorItem]:
    """Every rule that needs nothing but the message: the ITI-42 attribute rules for the
    SubmissionSet and each new version, plus the structure of the operations."""
    errors = rules.check_structure(sub) + rules.check_ids(sub) + plan.errors
    for ss in sub.submission_sets:
        errors += rules.check_submission_set(ss)
    for de in sub.document_entries:
        if _is_version(de):
            errors += rules.check_document_entry(de, new_version=True)
    for folder in sub.folders:
        if _is_version(folder):
            errors += rules.check_folder(folder, new_version=True)
    errors += rules.check_local_references(sub)
    errors += rules.check_unique_ids_in_message(sub)
    errors += rules.check_patient_ids_match(sub)
    errors += rules.check_privacy(sub, affinity_domain_oid)
    return errors


# --- against registry state ----------------------------------------------------------------------


def _owner_error(code: str, obj: RegistryObject, target: KnownObject, participant: str) -> list[RegistryErrorItem]:
    if target.submitted_by is not None and target.submitted_by == participant:
        return []
    return [
        _item(
            code,
            obj,
            f"{target.object_type} {target.entry_uuid} was not submitted by {participant}; only the participant "
            "that submitted an object may update it",
        )
    ]


def check_version_against(
    update: VersionUpdate, latest: KnownObject | None, participant: str
) -> list[RegistryErrorItem]:
    """The new version continues the latest registered version of its logicalId: that version is
    Approved and is the PreviousVersion named; uniqueId, objectType and (for stable documents) the
    content stay; the patient does not change (XDSPatientIDReconciliationError)."""
    obj = update.obj
    if latest is None:
        return [_item(UPDATE_ERROR, obj, f"no registered {obj.kind} has logicalId {obj.lid}")]
    if latest.object_type != obj.kind:
        return [_item(UPDATE_ERROR, obj, f"logicalId {obj.lid} names a {latest.object_type}, not a {obj.kind}")]
    errors = _owner_error(UPDATE_ERROR, obj, latest, participant)
    if latest.status != md.APPROVED:
        errors.append(_item(UPDATE_ERROR, obj, f"the latest version ({latest.version}) of {obj.lid} is not Approved"))
    if update.previous_version is not None and update.previous_version != str(latest.version):
        errors.append(
            _item(
                VERSION_ERROR,
                obj,
                f"PreviousVersion {update.previous_version} is not the latest version of {obj.lid}, "
                f"which is {latest.version}",
            )
        )
    if obj.unique_id != latest.unique_id:
        errors.append(
            _item(UPDATE_ERROR, obj, f"uniqueId {obj.unique_id} differs from the registered {latest.unique_id}")
        )
    if obj.patient_id != latest.patient_id:
        errors.append(
            _item(
                RECONCILIATION_ERROR,
                obj,
                f"patientId {obj.patient_id} differs from the registered {latest.patient_id}; an update cannot "
                "move an object to another patient",
            )
        )
    if isinstance(obj, DocumentEntry):
        if obj.object_type != latest.entry_type:
            errors.append(_item(UPDATE_ERROR, obj, "objectType (stable / on-demand) cannot change in an update"))
        elif not obj.on_demand:
            for name, registered in (
                ("hash", (latest.hash or "").lower()),
                ("size", str(latest.size) if latest.size is not None else ""),
                ("repositoryUniqueId", latest.repository_unique_id or ""),
            ):
                value = (obj.slot_value(name) or "").lower() if name == "hash" else obj.slot_value(name) or ""
                if value != registered:
                    errors.append(
                        _item(
                            UPDATE_ERROR,
                            obj,
                            f"{name} {value} differs from the registered {registered}: a "
                            "metadata update cannot change the document",
                        )
                    )
    return errors


def check_status_against(
    update: StatusUpdate,
    target: KnownObject | None,
    latest: Mapping[str, KnownObject],
    patient: str | None,
    participant: str,
) -> list[RegistryErrorItem]:
    """The target exists, is a DocumentEntry, Folder or Association of the submission's patient, is
    now in OriginalStatus, and only the latest version of an object may be Approved again."""
    assoc = update.assoc
    if target is None:
        return [_item(UnresolvedReferenceException.code, assoc, f"targetObject {assoc.target} is not in the registry")]
    if target.object_type not in ("DocumentEntry", "Folder", "Association"):
        return [_item(OPERATION_ERROR, assoc, f"the status of a {target.object_type} cannot be updated")]
    errors = _owner_error(UPDATE_ERROR, assoc, target, participant)
    if update.original and update.original[0] != target.status:
        errors.append(
            _item(
                UPDATE_ERROR,
                assoc,
                f"OriginalStatus {update.original[0]} is not the current status of {assoc.target} ({target.status})",
            )
        )
    newest = latest.get(target.lid or "")
    if update.new == [md.APPROVED] and newest is not None and newest.entry_uuid != target.entry_uuid:
        errors.append(
            _item(
                UPDATE_ERROR,
                assoc,
                f"{assoc.target} is version {target.version}, not the latest "
                f"({newest.version}); only the latest version can be Approved",
            )
        )
    if patient and target.patient_id and target.patient_id != patient:
        errors.append(
            _item(XDSPatientIdDoesNotMatch.code, assoc, f"{assoc.target} belongs to {target.patient_id}, not {patient}")
        )
    return errors


def check_membership_against(
    assoc: Association, existing: Mapping[str, KnownObject], patient: str | None, participant: str
) -> list[RegistryErrorItem]:
    """A new folder membership links a registered, Approved Folder of the participant to an
    Approved DocumentEntry of the same patient."""
    folder, doc = existing.get(assoc.source), existing.get(assoc.target)
    errors = []
    for end, ref, known in (("sourceObject", assoc.source, folder), ("targetObject", assoc.target, doc)):
        if known is None:
            errors.append(_item(UnresolvedReferenceException.code, assoc, f"{end} {ref} is not in the registry"))
    if folder is None or doc is None:
        return errors
    if folder.object_type != "Folder" or doc.object_type != "DocumentEntry":
        return [_item(UPDATE_ERROR, assoc, "a folder membership goes from a Folder to a DocumentEntry")]
    errors += _owner_error(UPDATE_ERROR, assoc, folder, participant)
    for known in (folder, doc):
        if known.status != md.APPROVED:
            errors.append(_item(XDSRegistryDeprecatedDocumentError.code, assoc, f"{known.entry_uuid} is not Approved"))
        if patient and known.patient_id != patient:
            errors.append(
                _item(XDSPatientIdDoesNotMatch.code, assoc, f"{known.entry_uuid} belongs to {known.patient_id}")
            )
    return errors


def check_one_operation_per_object(plan: UpdatePlan, existing: Mapping[str, KnownObject]) -> list[RegistryErrorItem]:
    """A transaction changes each logical object once: a new version and a status change of the
    same object would contradict each other."""
    versioned = plan.lids()
    errors = []
    seen: set[str] = set()
    for status in plan.status_updates:
        target = existing.get(status.assoc.target)
        lid = target.lid if target is not None else None
        if status.assoc.target in seen or (lid is not None and lid in versioned):
            errors.append(
                _item(OPERATION_ERROR, status.assoc, f"{status.assoc.target} is changed twice in one transaction")
            )
        seen.add(status.assoc.target)
    return errors


def validate_update(
    sub: Submission,
    plan: UpdatePlan,
    existing: Mapping[str, KnownObject],
    latest: Mapping[str, KnownObject],
    registered_unique_ids: Mapping[str, Iterable[KnownObject]],
    participant: str,
    is_known: Callable[[str], bool],
) -> list[RegistryErrorItem]:
    """The rules that need registry state (the caller looks it up, see registry.update)."""
    ss = sub.submission_set
    patient = ss.patient_id if ss else None
    errors = rules.check_new_ids_unused(sub, existing)
    for update in plan.versions:
        errors += check_version_against(update, latest.get(update.obj.lid or ""), participant)
    for status in plan.status_updates:
        errors += check_status_against(status, existing.get(status.assoc.target), latest, patient, participant)
    for assoc in plan.memberships:
        errors += check_membership_against(assoc, existing, patient, participant)
    errors += check_one_operation_per_object(plan, existing)
    if ss is not None and ss.unique_id and list(registered_unique_ids.get(ss.unique_id, [])):
        errors.append(_item(XDSDuplicateUniqueIdInRegistry.code, ss, f"uniqueId {ss.unique_id} is already registered"))
    if ss is not None:
        errors += rules.check_patients_known(Submission(sub.request, submission_sets=[ss]), is_known)
    return errors
