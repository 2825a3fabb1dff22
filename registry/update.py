"""ITI-57 Update Document Set: look up what the update rules need, check, then apply in the
caller's session (see registry.update_rules for the operations and their rules)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from clearinghouse.errors import RegistryErrorItem, XdsError
from registry import metadata as md
from registry import store, update_rules
from registry.models import RegistryObjectRow
from registry.patients import is_known_patient


def static_errors(
    sub: md.Submission, affinity_domain_oid: str
) -> tuple[update_rules.UpdatePlan, list[RegistryErrorItem]]:
    plan = update_rules.plan_update(sub)
    return plan, update_rules.validate_update_submission(sub, plan, affinity_domain_oid)


def apply_update(
    session: Session,
    sub: md.Submission,
    plan: update_rules.UpdatePlan,
    errors: list[RegistryErrorItem],
    *,
    participant: str,
    now: datetime,
) -> None:
    """Validate against the registry and store: new versions (the previous one Deprecated; unless
    AssociationPropagation = no, the new version of a DocumentEntry joins the Approved Folders of the
    previous one and takes its place in its Approved relationships, and a Folder's new version
    keeps its Approved members and its lastUpdateTime), status changes, memberships.
    Raises XdsError with every problem found; writes nothing then."""
    targets = [s.assoc.target for s in plan.status_updates]
    existing = store.lookup_objects(session, store.submission_entry_ids(sub) | set(targets))
    lids = plan.lids() | {k.lid for t in targets if (k := existing.get(t)) is not None and k.lid}
    latest = store.latest_versions(session, lids)
    ss = sub.submission_set
    registered = store.lookup_unique_ids(session, [ss.unique_id] if ss and ss.unique_id else [])
    errors = errors + update_rules.validate_update(
        sub, plan, existing, latest, registered, participant, lambda pid: is_known_patient(session, pid)
    )
    if errors:
        raise XdsError.many(errors)
    versions = {u.obj.id: latest[u.obj.lid or ""].version + 1 for u in plan.versions}
    resolved = md.resolve_submission(sub, md.id_mapping(sub), now=store.stamp(now), versions=versions)
    previous = {u.obj.lid: latest[u.obj.lid or ""] for u in plan.versions}
    unique_ids = {p.unique_id for p in previous.values() if p.unique_id}
    store.save_submission(session, resolved, already_registered=unique_ids, now=now, submitted_by=participant)
    new_by_lid = {obj.lid: obj for obj in [*resolved.document_entries, *resolved.folders]}
    propagate = {u.obj.lid: u.propagate for u in plan.versions}
    touched: dict[str, RegistryObjectRow] = {}
    for lid, old in previous.items():
        old_row = session.get(RegistryObjectRow, old.entry_uuid)
        new = new_by_lid[lid]
        assert old_row is not None  # validated above, in this transaction
        store.set_status(old_row, md.DEPRECATED)
        if not propagate[lid]:
            continue
        if isinstance(new, md.DocumentEntry):
            for folder in store.approved_folders_of(session, old.entry_uuid):
                _link(session, md.HAS_MEMBER, folder.entry_uuid, new.id, resolved, folder.patient_id, now, participant)
                touched[folder.entry_uuid] = folder
            # The new version stands in the relationships of the one it replaces, at the same end.
            for source, target, kind in store.approved_relationships_of(session, old.entry_uuid):
                ends = [new.id if end == old.entry_uuid else end for end in (source, target)]
                _link(session, kind, ends[0], ends[1], resolved, new.patient_id, now, participant)
        else:
            for document in store.approved_members_of(session, old.entry_uuid):
                _link(session, md.HAS_MEMBER, new.id, document, resolved, new.patient_id, now, participant)
            new_row = session.get(RegistryObjectRow, new.id)
            assert new_row is not None  # saved above
            store.keep_last_update_time(new_row, old_row)
    for status in plan.status_updates:
        row = session.get(RegistryObjectRow, status.assoc.target)
        assert row is not None
        store.set_status(row, status.new[0])
    for folder in touched.values():
        store.touch_folder(folder, now)
    session.flush()


def _link(
    session: Session,
    kind: str,
    source: str,
    target: str,
    resolved: md.Submission,
    patient: str | None,
    now: datetime,
    participant: str,
) -> None:
    ss = resolved.submission_set
    store.new_association(
        session,
        kind,
        source,
        target,
        submission_set_uuid=ss.id if ss else None,
        patient_id=patient,
        when=now,
        submitted_by=participant,
    )
