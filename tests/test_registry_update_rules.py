"""ITI-57 and ITI-62 rules (registry.update_rules, registry.remove_rules) and the load rules
(registry.admission) as pure functions: one group of tests per rule function."""

from __future__ import annotations

import errno
import sqlite3
import threading

import pytest
from sqlalchemy.exc import IntegrityError, InternalError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from clearinghouse.config import DEFAULT_AFFINITY_DOMAIN_OID
from clearinghouse.errors import XdsError, XDSRegistryBusy
from registry import admission, remove_rules, update_rules
from registry import metadata as md
from registry.rules import KnownObject
from tests import xds_samples as xs

APPROVED, DEPRECATED = md.APPROVED, md.DEPRECATED
ME = "edge-a"


def codes(items: list) -> list[str]:
    return [i.code for i in items]


def known(uuid: str, kind: str = "DocumentEntry", **kw: object) -> KnownObject:
    fields = {"patient_id": None, "status": APPROVED, "submitted_by": ME, "lid": uuid, **kw}
    return KnownObject(uuid, kind, **fields)  # type: ignore[arg-type]


def plan_of(request) -> tuple[md.Submission, update_rules.UpdatePlan]:  # noqa: ANN001
    sub = md.parse_submission(request)
    return sub, update_rules.plan_update(sub)


# --- planning ------------------------------------------------------------------------------------


def test_plan_sorts_the_operations():
    pid, lid, target, folder, doc = xs.patient_cx(), xs.new_uuid(), xs.new_uuid(), xs.new_uuid(), xs.new_uuid()
    request = xs.new_version(pid, lid, "3", document=xs.DocSpec(), propagate="no")
    extra = xs.status_update(pid, target, APPROVED, DEPRECATED)
    membership = xs.folder_membership(pid, folder, doc)
    object_list = request.find(f"{{{md.RIM}}}RegistryObjectList")
    for prefix, other in (("s-", extra), ("m-", membership)):
        assocs = list(other.iter(f"{{{md.RIM}}}Association"))
        renamed = {a.get("id"): prefix + a.get("id") for a in assocs}  # keep ids unique in the merge
        for assoc in assocs:
            assoc.set("id", renamed[assoc.get("id")])
            assoc.set("targetObject", renamed.get(assoc.get("targetObject"), assoc.get("targetObject")))
            object_list.append(assoc)
    sub, plan = plan_of(request)
    assert plan.errors == []
    [version] = plan.versions
    assert (version.obj.lid, version.previous_version, version.propagate) == (lid, "3", False)
    assert [s.assoc.target for s in plan.status_updates] == [target]
    assert [(m.source, m.target) for m in plan.memberships] == [(folder, doc)]
    assert update_rules.validate_update_submission(sub, plan, DEFAULT_AFFINITY_DOMAIN_OID) == []


def test_new_objects_and_relationships_are_not_update_operations():
    sub, plan = plan_of(xs.submission(extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", xs.new_uuid())]))
    assert codes(plan.errors) == ["XDSMetadataUpdateOperationError"] * 2
    assert "is a new object" in plan.errors[0].context and "RPLC" in plan.errors[1].context


def test_version_membership_needs_previous_version_and_original():
    lid = xs.new_uuid()
    _, plan = plan_of(xs.new_version(xs.patient_cx(), lid, None, document=xs.DocSpec(), propagate="maybe"))
    text = " | ".join(e.context for e in plan.errors)
    assert "PreviousVersion" in text and "AssociationPropagation is yes or no" in text
    request = xs.new_version(xs.patient_cx(), lid, "1", document=xs.DocSpec())
    for assoc in list(request.iter(f"{{{md.RIM}}}Association")):
        assoc.getparent().remove(assoc)
    _, plan = plan_of(request)
    assert ["is not a member of the SubmissionSet" in e.context for e in plan.errors] == [True]


def test_status_update_shape():
    pid = xs.patient_cx()
    _, plan = plan_of(xs.status_update(pid, xs.new_uuid(), APPROVED, APPROVED))
    assert "are the same" in plan.errors[0].context
    _, plan = plan_of(xs.status_update(pid, "Document01", "Approved", DEPRECATED))
    text = " | ".join(e.context for e in plan.errors)
    assert "registered urn:uuid" in text and "OriginalStatus needs one value" in text


def test_one_logical_object_updated_once():
    lid = xs.new_uuid()
    request = xs.new_version(xs.patient_cx(), lid, "1", document=xs.DocSpec())
    second = xs.new_version(xs.patient_cx(), lid, "1", document=xs.DocSpec())
    eo = next(second.iter(f"{{{md.RIM}}}ExtrinsicObject"))
    eo.set("id", "Document02")
    request.find(f"{{{md.RIM}}}RegistryObjectList").append(eo)
    _, plan = plan_of(request)
    assert any(e.code == "XDSMetadataUpdateOperationError" and lid in e.context for e in plan.errors)


# --- against the registry ------------------------------------------------------------------------


def _version(pid: str, lid: str, spec: xs.DocSpec, previous: str = "1") -> update_rules.VersionUpdate:
    _, plan = plan_of(xs.new_version(pid, lid, previous, document=spec))
    return plan.versions[0]


def _latest(lid: str, spec: xs.DocSpec, pid: str, **kw: object) -> KnownObject:
    de = md.parse_submission(xs.submission(pid, [spec])).document_entries[0]
    fields = {
        "patient_id": pid,
        "unique_id": spec.unique_id,
        "hash": de.slot_value("hash"),
        "size": int(de.slot_value("size") or 0),
        "entry_type": md.STABLE_DOCUMENT_ENTRY,
        "repository_unique_id": de.slot_value("repositoryUniqueId"),
        **kw,
    }
    return known(lid, **fields)


def test_version_continues_the_latest():
    pid, lid = xs.patient_cx(), xs.new_uuid()
    spec = xs.DocSpec(unique_id=xs.new_oid(), content=b"same")
    latest = _latest(lid, spec, pid)
    assert update_rules.check_version_against(_version(pid, lid, spec), latest, ME) == []
    assert codes(update_rules.check_version_against(_version(pid, lid, spec, "2"), latest, ME)) == [
        "XDSMetadataVersionError"
    ]
    assert codes(update_rules.check_version_against(_version(pid, lid, spec), None, ME)) == ["XDSMetadataUpdateError"]
    deprecated = _latest(lid, spec, pid, status=DEPRECATED)
    assert "is not Approved" in update_rules.check_version_against(_version(pid, lid, spec), deprecated, ME)[0].context
    other = xs.patient_cx()
    moved = update_rules.check_version_against(_version(other, lid, spec), latest, ME)
    assert codes(moved) == ["XDSPatientIDReconciliationError"]
    changed = xs.DocSpec(unique_id=spec.unique_id, content=b"different")
    assert {"hash", "size"} <= {
        e.context.split(": ")[1].split(" ")[0]
        for e in update_rules.check_version_against(_version(pid, lid, changed), latest, ME)
    }
    assert (
        "not submitted by edge-b"
        in update_rules.check_version_against(_version(pid, lid, spec), latest, "edge-b")[0].context
    )
    folder = known(lid, "Folder", patient_id=pid)
    assert "names a Folder" in update_rules.check_version_against(_version(pid, lid, spec), folder, ME)[0].context


def test_status_change_against_the_registry():
    pid = xs.patient_cx()
    target = xs.new_uuid()
    _, plan = plan_of(xs.status_update(pid, target, APPROVED, DEPRECATED))
    [status] = plan.status_updates
    doc = known(target, patient_id=pid)
    assert update_rules.check_status_against(status, doc, {target: doc}, pid, ME) == []
    assert codes(update_rules.check_status_against(status, None, {}, pid, ME)) == ["UnresolvedReferenceException"]
    was_deprecated = known(target, patient_id=pid, status=DEPRECATED)
    assert codes(update_rules.check_status_against(status, was_deprecated, {}, pid, ME)) == ["XDSMetadataUpdateError"]
    ss = known(target, "SubmissionSet", patient_id=pid)
    assert codes(update_rules.check_status_against(status, ss, {}, pid, ME)) == ["XDSMetadataUpdateOperationError"]
    theirs = known(target, patient_id=xs.patient_cx())
    assert codes(update_rules.check_status_against(status, theirs, {}, pid, ME)) == ["XDSPatientIdDoesNotMatch"]
    _, back = plan_of(xs.status_update(pid, target, DEPRECATED, APPROVED))
    newer = known(xs.new_uuid(), patient_id=pid, lid=target, version=2)
    old = known(target, patient_id=pid, status=DEPRECATED)
    errs = update_rules.check_status_against(back.status_updates[0], old, {target: newer}, pid, ME)
    assert "only the latest version can be Approved" in errs[0].context


def test_membership_against_the_registry():
    pid, folder, doc = xs.patient_cx(), xs.new_uuid(), xs.new_uuid()
    _, plan = plan_of(xs.folder_membership(pid, folder, doc))
    [assoc] = plan.memberships
    existing = {folder: known(folder, "Folder", patient_id=pid), doc: known(doc, patient_id=pid)}
    assert update_rules.check_membership_against(assoc, existing, pid, ME) == []
    assert codes(update_rules.check_membership_against(assoc, {}, pid, ME)) == ["UnresolvedReferenceException"] * 2
    swapped = {folder: existing[doc], doc: existing[folder]}
    assert (
        "from a Folder to a DocumentEntry" in update_rules.check_membership_against(assoc, swapped, pid, ME)[0].context
    )
    deprecated = {**existing, doc: known(doc, patient_id=pid, status=DEPRECATED)}
    assert codes(update_rules.check_membership_against(assoc, deprecated, pid, ME)) == [
        "XDSRegistryDeprecatedDocumentError"
    ]


# --- ITI-62 --------------------------------------------------------------------------------------


def _graph() -> tuple[dict[str, KnownObject], dict[str, KnownObject]]:
    """SubmissionSet S -HasMember(m)-> DocumentEntry D."""
    s, d, m = (
        "urn:uuid:00000000-0000-4000-8000-000000000001",
        "urn:uuid:00000000-0000-4000-8000-000000000002",
        ("urn:uuid:00000000-0000-4000-8000-000000000003"),
    )
    objects = {
        s: known(s, "SubmissionSet"),
        d: known(d),
        m: known(m, "Association", source_uuid=s, target_uuid=d, association_type=md.HAS_MEMBER),
    }
    return objects, {m: objects[m]}


def test_removal_rules():
    objects, assocs = _graph()
    s, d, m = list(objects)
    assert remove_rules.check_removal([s, d, m], objects, assocs, ME) == []
    assert codes(
        remove_rules.check_removal([d, "urn:uuid:00000000-0000-4000-8000-00000000000f"], objects, assocs, ME)
    ) == ["UnresolvedReferenceException"]
    assert codes(remove_rules.check_removal([d], objects, assocs, ME)) == ["ReferencesExistException"]
    assert codes(remove_rules.check_removal([m], objects, assocs, ME)) == ["XDSUnreferencedObjectException"] * 2
    assert codes(remove_rules.check_removal([m, d], objects, assocs, ME)) == ["XDSUnreferencedObjectException"]
    assert set(codes(remove_rules.check_removal([s, d, m], objects, assocs, "edge-b"))) == {"XDSRegistryError"}


# --- load ----------------------------------------------------------------------------------------


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    "exc, code",
    [
        (PoolTimeout("pool exhausted"), "XDSRegistryBusy"),
        (OperationalError("x", {}, _PgError("55P03")), "XDSRegistryBusy"),
        (OperationalError("x", {}, _PgError("40P01")), "XDSRegistryBusy"),
        (OperationalError("x", {}, _PgError("53300")), "XDSRegistryBusy"),
        (OperationalError("x", {}, _PgError("53100")), "XDSRegistryOutOfResources"),
        (OperationalError("x", {}, _PgError("53200")), "XDSRegistryOutOfResources"),
        (OperationalError("x", {}, sqlite3.OperationalError("database is locked")), "XDSRegistryBusy"),
        (OperationalError("x", {}, sqlite3.OperationalError("database or disk is full")), "XDSRegistryOutOfResources"),
        (MemoryError(), "XDSRegistryOutOfResources"),
        (OSError(errno.ENOSPC, "No space left on device"), "XDSRegistryOutOfResources"),
        (InternalError("x", {}, _PgError("25006")), "XDSRegistryError"),
        (
            OperationalError("x", {}, sqlite3.OperationalError("attempt to write a readonly database")),
            "XDSRegistryError",
        ),
        (OperationalError("x", {}, _PgError("42P01")), None),
        (IntegrityError("x", {}, _PgError("23505")), None),
        (OSError(errno.EACCES, "Permission denied"), None),
        (ValueError("a bug"), None),
    ],
)
def test_resource_errors_are_busy_or_out_of_resources(exc, code):
    mapped = admission.resource_error(exc)
    assert (mapped.items[0].code if mapped is not None else None) == code


def test_admission_limits_concurrent_transactions():
    gate = admission.Admission(limit=2, wait_seconds=0.05)
    entered = [threading.Event(), threading.Event()]
    release = threading.Event()

    def hold(n: int) -> None:
        with gate.slot("held"):
            entered[n].set()
            release.wait(5)

    holders = [threading.Thread(target=hold, args=(n,)) for n in range(2)]
    for t in holders:
        t.start()
    assert all(e.wait(5) for e in entered)
    try:
        with pytest.raises(XDSRegistryBusy), gate.slot("third"):
            pass
    finally:
        release.set()
        for t in holders:
            t.join(5)
    with gate.slot("after"):
        pass
    with pytest.raises(XdsError) as excinfo, gate.slot("failing"):
        raise OperationalError("x", {}, _PgError("53100"))
    assert excinfo.value.items[0].code == "XDSRegistryOutOfResources"
    with pytest.raises(ValueError):
        admission.Admission(limit=0, wait_seconds=1)
