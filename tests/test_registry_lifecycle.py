"""Document lifecycle in the registry, on a real database: relationships (RPLC, XFRM, APND,
XFRM_RPLC, signs, IsSnapshotOf) and their status transitions, folders, ITI-57 Update Document Set,
ITI-62 Delete Document Set, and load limits. Every refused request is checked to leave the
registry unchanged."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from clearinghouse.errors import XdsError
from registry import api
from registry import metadata as md
from registry.admission import Admission
from registry.models import RegistryAssociationRow, RegistryObjectRow, RegistryValueRow
from tests import xds_samples as xs
from tests.registry_db import (
    EDGE,
    association_uuid,
    codes,
    doc_uids,
    ids_of,
    listed,
    new_patient,
    register,
    remove,
    row,
    run,
    update,
    uuid_of,
)

# The database fixtures (engine, sessions, settings, patient) on every backend.
pytest_plugins = ("tests.registry_db",)

APPROVED, DEPRECATED = xs.APPROVED, xs.DEPRECATED


def _count(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(RegistryObjectRow)) or 0


def _folder_contents(sessions, settings, folder_uuid: str):
    return run(
        sessions, settings, xs.query(xs.GET_FOLDER_AND_CONTENTS, {"$XDSFolderEntryUUID": xs.quoted(folder_uuid)})
    )


def _register_in_folder(sessions, settings, patient: str) -> tuple[xs.DocSpec, xs.FolderSpec, str, str]:
    doc, folder = xs.DocSpec(), xs.FolderSpec(documents=[0])
    register(sessions, settings, xs.submission(patient, [doc], folders=[folder]))
    return doc, folder, uuid_of(sessions, doc.unique_id), uuid_of(sessions, folder.unique_id, "Folder")


# --- relationships (ITI-42) ----------------------------------------------------------------------


def test_replacement_deprecates_addenda_and_transforms_and_joins_the_folders(sessions, settings, patient):
    original, folder, original_uuid, folder_uuid = _register_in_folder(sessions, settings, patient)
    stamp_before = row(sessions, folder_uuid).last_update_time
    addendum, transform = xs.DocSpec(), xs.DocSpec(format_code=xs.FORMAT_PDF)
    register(
        sessions,
        settings,
        xs.submission(
            patient,
            [addendum, transform],
            extra_associations=[
                xs.AssocSpec(xs.APND, "Document01", original_uuid),
                xs.AssocSpec(xs.XFRM, "Document02", original_uuid),
            ],
        ),
    )
    replacement = xs.DocSpec()
    register(
        sessions,
        settings,
        xs.submission(patient, [replacement], extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", original_uuid)]),
    )
    for spec in (original, addendum, transform):
        assert row(sessions, uuid_of(sessions, spec.unique_id)).status == DEPRECATED, spec
    replacement_uuid = uuid_of(sessions, replacement.unique_id)
    assert row(sessions, replacement_uuid).status == APPROVED
    # The replacement joined the folder of the original, and the folder records the change.
    contents = _folder_contents(sessions, settings, folder_uuid)
    assert doc_uids(contents) == {original.unique_id, replacement.unique_id}
    assert association_uuid(sessions, folder_uuid, replacement_uuid)
    assert row(sessions, folder_uuid).last_update_time >= stamp_before
    stored = md.from_text(row(sessions, original_uuid).xml)
    assert stored.get("status") == DEPRECATED


def test_relationships_need_an_approved_registered_target(sessions, settings, patient):
    original = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [original]))
    original_uuid = uuid_of(sessions, original.unique_id)
    signature = xs.DocSpec(mime_type="text/xml", format_code=xs.FORMAT_PDF)
    register(
        sessions,
        settings,
        xs.submission(
            patient,
            [signature, xs.DocSpec()],
            extra_associations=[
                xs.AssocSpec(xs.SIGNS, "Document01", original_uuid),
                xs.AssocSpec(xs.XFRM_RPLC, "Document02", original_uuid),
            ],
        ),
    )
    assert row(sessions, original_uuid).status == DEPRECATED
    before = _count(sessions)
    for kind in (xs.APND, xs.XFRM, xs.RPLC):
        with pytest.raises(XdsError) as excinfo:
            register(
                sessions,
                settings,
                xs.submission(patient, extra_associations=[xs.AssocSpec(kind, "Document01", original_uuid)]),
            )
        assert codes(excinfo) == ["XDSRegistryDeprecatedDocumentError"], kind
    assert _count(sessions) == before


def test_snapshot_of_an_on_demand_entry(sessions, settings, patient):
    on_demand = xs.DocSpec(on_demand=True)
    register(sessions, settings, xs.submission(patient, [on_demand]))
    od_uuid = uuid_of(sessions, on_demand.unique_id)
    snapshot = xs.DocSpec()
    register(
        sessions,
        settings,
        xs.submission(patient, [snapshot], extra_associations=[xs.AssocSpec(md.IS_SNAPSHOT_OF, "Document01", od_uuid)]),
    )
    assert row(sessions, od_uuid).status == APPROVED  # a snapshot does not replace
    with pytest.raises(XdsError) as excinfo:
        register(
            sessions,
            settings,
            xs.submission(
                patient,
                extra_associations=[
                    xs.AssocSpec(md.IS_SNAPSHOT_OF, "Document01", uuid_of(sessions, snapshot.unique_id))
                ],
            ),
        )
    assert codes(excinfo) == ["XDSRegistryMetadataError"]


def test_folder_gains_documents_later_and_records_when(sessions, settings, patient):
    _doc, folder, _doc_uuid, folder_uuid = _register_in_folder(sessions, settings, patient)
    first = row(sessions, folder_uuid).last_update_time
    assert first and len(first) == 14
    # a new document into the registered folder ...
    later = xs.DocSpec()
    request = xs.submission(
        patient,
        [later],
        extra_associations=[
            xs.AssocSpec(xs.HAS_MEMBER, folder_uuid, "Document01", id="Inner"),
            xs.AssocSpec(xs.HAS_MEMBER, "SubmissionSet01", "Inner"),
        ],
    )
    register(sessions, settings, request)
    # ... and a registered document too
    elsewhere = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [elsewhere]))
    register(sessions, settings, xs.folder_membership(patient, folder_uuid, uuid_of(sessions, elsewhere.unique_id)))
    contents = _folder_contents(sessions, settings, folder_uuid)
    assert len(doc_uids(contents)) == 3 and {later.unique_id, elsewhere.unique_id} <= doc_uids(contents)
    stored_slots, _ = md.parse_slots(md.from_text(row(sessions, folder_uuid).xml))
    assert stored_slots["lastUpdateTime"] == [row(sessions, folder_uuid).last_update_time]
    assert row(sessions, folder_uuid).last_update_time >= first


# --- ITI-57 Update Document Set ------------------------------------------------------------------


def test_new_version_of_a_document_entry(sessions, settings, patient):
    doc, _folder, doc_uuid, folder_uuid = _register_in_folder(sessions, settings, patient)
    v2 = xs.DocSpec(unique_id=doc.unique_id, content=xs.document_content(doc, doc.unique_id), title="Corrected")
    update(sessions, settings, xs.new_version(patient, doc_uuid, "1", document=v2))
    latest = uuid_of(sessions, doc.unique_id)
    assert latest != doc_uuid
    new, old = row(sessions, latest), row(sessions, doc_uuid)
    assert (new.lid, new.version, new.status) == (doc_uuid, 2, APPROVED)
    assert (old.version, old.status) == (1, DEPRECATED)
    element = md.from_text(new.xml)
    assert element.get("lid") == doc_uuid and md.version_of(element) == 2
    assert element.find(f"{{{md.RIM}}}Name/{{{md.RIM}}}LocalizedString").get("value") == "Corrected"
    # FindDocuments sees the current version only; GetDocuments by logicalId sees both.
    found = run(sessions, settings, xs.find_documents(patient))
    assert ids_of(found, "ExtrinsicObject") == {latest}
    both = run(
        sessions, settings, xs.query(xs.GET_DOCUMENTS, {"$XDSDocumentEntryLogicalID": xs.quoted_list([doc_uuid])})
    )
    assert ids_of(both) == {doc_uuid, latest}
    # Association propagation: the new version is in the folder of the old one.
    assert association_uuid(sessions, folder_uuid, latest)
    # A third version without propagation stays out of the folder.
    v3 = xs.DocSpec(unique_id=doc.unique_id, content=xs.document_content(doc, doc.unique_id), title="Again")
    update(sessions, settings, xs.new_version(patient, doc_uuid, "2", document=v3, propagate="no"))
    third = uuid_of(sessions, doc.unique_id)
    assert row(sessions, third).version == 3
    assert ids_of(_folder_contents(sessions, settings, folder_uuid), "ExtrinsicObject") == {doc_uuid, latest}


def _relationships_of(sessions, entry_uuid: str) -> set[tuple[str, str, str, str]]:
    """(source, target, short type, status) of the relationship Associations touching an object."""
    with sessions() as session:
        found = session.execute(
            select(
                RegistryAssociationRow.source_uuid,
                RegistryAssociationRow.target_uuid,
                RegistryAssociationRow.assoc_type,
                RegistryObjectRow.status,
            )
            .join(RegistryObjectRow, RegistryObjectRow.entry_uuid == RegistryAssociationRow.entry_uuid)
            .where(
                (RegistryAssociationRow.source_uuid == entry_uuid) | (RegistryAssociationRow.target_uuid == entry_uuid),
                RegistryAssociationRow.assoc_type != xs.HAS_MEMBER,
            )
        )
        return {(s, t, k.rsplit(":", 1)[-1], st) for s, t, k, st in found}


def test_new_version_takes_the_place_of_the_old_one_in_its_relationships(sessions, settings, patient):
    """ITI TF-2b 3.57.4.1.3.3.1 (association propagation): the Approved relationships of the
    previous version, at either end, are repeated for the new one; Deprecated ones are not, and
    AssociationPropagation = no repeats nothing."""
    earlier = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [earlier]))
    earlier_uuid = uuid_of(sessions, earlier.unique_id)
    doc = xs.DocSpec()
    register(
        sessions,
        settings,
        xs.submission(patient, [doc], extra_associations=[xs.AssocSpec(xs.APND, "Document01", earlier_uuid)]),
    )
    doc_uuid = uuid_of(sessions, doc.unique_id)
    transform, signature, withdrawn = xs.DocSpec(format_code=xs.FORMAT_PDF), xs.DocSpec(), xs.DocSpec()
    register(
        sessions,
        settings,
        xs.submission(
            patient,
            [transform, signature, withdrawn],
            extra_associations=[
                xs.AssocSpec(xs.XFRM, "Document01", doc_uuid),
                xs.AssocSpec(xs.SIGNS, "Document02", doc_uuid),
                xs.AssocSpec(xs.APND, "Document03", doc_uuid),
            ],
        ),
    )
    transform_uuid, signature_uuid, withdrawn_uuid = (
        uuid_of(sessions, d.unique_id) for d in (transform, signature, withdrawn)
    )
    withdrawn_link = association_uuid(sessions, withdrawn_uuid, doc_uuid, xs.APND)
    update(sessions, settings, xs.status_update(patient, withdrawn_link, APPROVED, DEPRECATED))
    before = _relationships_of(sessions, doc_uuid)

    v2 = xs.DocSpec(unique_id=doc.unique_id, content=xs.document_content(doc, doc.unique_id), title="Corrected")
    update(sessions, settings, xs.new_version(patient, doc_uuid, "1", document=v2))
    second = uuid_of(sessions, doc.unique_id)
    assert _relationships_of(sessions, second) == {
        (second, earlier_uuid, "APND", APPROVED),
        (transform_uuid, second, "XFRM", APPROVED),
        (signature_uuid, second, "signs", APPROVED),
    }
    assert _relationships_of(sessions, doc_uuid) == before  # the previous version keeps its own
    # The propagated associations are registry objects like any other: GetRelatedDocuments finds them.
    related = run(
        sessions,
        settings,
        xs.query(
            xs.GET_RELATED_DOCUMENTS,
            {"$XDSDocumentEntryEntryUUID": xs.quoted(second), "$AssociationTypes": xs.quoted_list([xs.XFRM, xs.APND])},
        ),
    )
    assert ids_of(related, "ExtrinsicObject") == {second, transform_uuid, earlier_uuid}
    assert row(sessions, earlier_uuid).status == APPROVED and row(sessions, transform_uuid).status == APPROVED

    v3 = xs.DocSpec(unique_id=doc.unique_id, content=xs.document_content(doc, doc.unique_id), title="Again")
    update(sessions, settings, xs.new_version(patient, doc_uuid, "2", document=v3, propagate="no"))
    assert _relationships_of(sessions, uuid_of(sessions, doc.unique_id)) == set()


def test_new_version_errors_change_nothing(sessions, settings, patient):
    doc = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [doc]))
    doc_uuid = uuid_of(sessions, doc.unique_id)
    content = xs.document_content(doc, doc.unique_id)
    other = new_patient(sessions)

    def version(**kw: object) -> xs.DocSpec:
        return xs.DocSpec(**{"unique_id": doc.unique_id, "content": content, **kw})  # type: ignore[arg-type]

    cases = [
        (xs.new_version(patient, doc_uuid, "7", document=version()), "XDSMetadataVersionError"),
        (xs.new_version(patient, doc_uuid, None, document=version()), "XDSMetadataUpdateError"),
        (xs.new_version(patient, doc_uuid, "1", document=version(unique_id=xs.new_oid())), "XDSMetadataUpdateError"),
        (xs.new_version(patient, doc_uuid, "1", document=version(content=b"other")), "XDSMetadataUpdateError"),
        (xs.new_version(patient, xs.new_uuid(), "1", document=version()), "XDSMetadataUpdateError"),
        (xs.new_version(other, doc_uuid, "1", document=version()), "XDSPatientIDReconciliationError"),
        (xs.submission(patient), "XDSMetadataUpdateOperationError"),
        (
            xs.submission(patient, [], extra_associations=[xs.AssocSpec(xs.RPLC, "SubmissionSet01", doc_uuid)]),
            "XDSMetadataUpdateOperationError",
        ),
    ]
    before = _count(sessions)
    for request, code in cases:
        with pytest.raises(XdsError) as excinfo:
            update(sessions, settings, request)
        assert code in codes(excinfo), (code, [i.context for i in excinfo.value.items])
    with pytest.raises(XdsError) as excinfo:  # only the participant that submitted it
        update(sessions, settings, xs.new_version(patient, doc_uuid, "1", document=version()), who="another-edge")
    assert codes(excinfo) == ["XDSMetadataUpdateError"] and "not submitted by another-edge" in str(excinfo.value)
    assert _count(sessions) == before
    assert row(sessions, doc_uuid).status == APPROVED


def test_a_version_can_only_follow_the_latest(sessions, settings, patient):
    doc = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [doc]))
    doc_uuid = uuid_of(sessions, doc.unique_id)
    content = xs.document_content(doc, doc.unique_id)
    update(
        sessions,
        settings,
        xs.new_version(patient, doc_uuid, "1", document=xs.DocSpec(unique_id=doc.unique_id, content=content)),
    )
    with pytest.raises(XdsError) as excinfo:  # a second update based on version 1 lost the race
        update(
            sessions,
            settings,
            xs.new_version(patient, doc_uuid, "1", document=xs.DocSpec(unique_id=doc.unique_id, content=content)),
        )
    assert codes(excinfo) == ["XDSMetadataVersionError"]


def test_status_updates(sessions, settings, patient):
    doc, _folder, doc_uuid, folder_uuid = _register_in_folder(sessions, settings, patient)
    update(sessions, settings, xs.status_update(patient, doc_uuid, APPROVED, DEPRECATED))
    assert row(sessions, doc_uuid).status == DEPRECATED
    assert md.from_text(row(sessions, doc_uuid).xml).get("status") == DEPRECATED
    assert doc_uids(run(sessions, settings, xs.find_documents(patient))) == set()
    with pytest.raises(XdsError) as excinfo:  # OriginalStatus must be the current one
        update(sessions, settings, xs.status_update(patient, doc_uuid, APPROVED, DEPRECATED))
    assert codes(excinfo) == ["XDSMetadataUpdateError"]
    update(sessions, settings, xs.status_update(patient, doc_uuid, DEPRECATED, APPROVED))
    assert row(sessions, doc_uuid).status == APPROVED
    # Deprecating the folder membership takes the document out of the folder's contents.
    membership = association_uuid(sessions, folder_uuid, doc_uuid)
    update(sessions, settings, xs.status_update(patient, membership, APPROVED, DEPRECATED))
    assert doc_uids(_folder_contents(sessions, settings, folder_uuid)) == set()
    ss_uuid = row(sessions, doc_uuid).submission_set_uuid
    contents = xs.query(
        xs.GET_SUBMISSION_SET_AND_CONTENTS, {"$XDSSubmissionSetEntryUUID": xs.quoted(ss_uuid)}, "ObjectRef"
    )
    assert membership not in ids_of(run(sessions, settings, contents))
    assert doc_uuid in ids_of(run(sessions, settings, contents))
    for target, code in (
        (xs.new_uuid(), "UnresolvedReferenceException"),
        (ss_uuid, "XDSMetadataUpdateOperationError"),
    ):
        with pytest.raises(XdsError) as excinfo:
            update(sessions, settings, xs.status_update(patient, target, APPROVED, DEPRECATED))
        assert codes(excinfo) == [code]
    with pytest.raises(XdsError) as excinfo:
        update(sessions, settings, xs.status_update(patient, doc_uuid, APPROVED, "urn:example:Gone"))
    assert codes(excinfo) == ["XDSMetadataUpdateError"]


def test_only_the_latest_version_can_be_approved_again(sessions, settings, patient):
    doc = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [doc]))
    first = uuid_of(sessions, doc.unique_id)
    content = xs.document_content(doc, doc.unique_id)
    update(
        sessions,
        settings,
        xs.new_version(patient, first, "1", document=xs.DocSpec(unique_id=doc.unique_id, content=content)),
    )
    with pytest.raises(XdsError) as excinfo:
        update(sessions, settings, xs.status_update(patient, first, DEPRECATED, APPROVED))
    assert codes(excinfo) == ["XDSMetadataUpdateError"] and "only the latest version" in str(excinfo.value)


def test_new_version_of_a_folder_and_membership_by_update(sessions, settings, patient):
    doc, folder, doc_uuid, folder_uuid = _register_in_folder(sessions, settings, patient)
    renamed = xs.FolderSpec(unique_id=folder.unique_id, title="Renamed", codes=[xs.FOLDER_CODE, xs.EVENT_MR])
    update(sessions, settings, xs.new_version(patient, folder_uuid, "1", folder=renamed))
    new_folder = uuid_of(sessions, folder.unique_id, "Folder")
    assert row(sessions, new_folder).version == 2 and row(sessions, folder_uuid).status == DEPRECATED
    assert doc_uids(_folder_contents(sessions, settings, new_folder)) == {doc.unique_id}
    extra = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [extra]))
    update(sessions, settings, xs.folder_membership(patient, new_folder, uuid_of(sessions, extra.unique_id)))
    assert doc_uids(_folder_contents(sessions, settings, new_folder)) == {doc.unique_id, extra.unique_id}
    with pytest.raises(XdsError) as excinfo:  # the deprecated version cannot gain members
        update(sessions, settings, xs.folder_membership(patient, folder_uuid, uuid_of(sessions, extra.unique_id)))
    assert codes(excinfo) == ["XDSRegistryDeprecatedDocumentError"]


# --- ITI-62 Delete Document Set ------------------------------------------------------------------


def _submission_uuids(sessions, doc_uuid: str) -> list[str]:
    ss_uuid = row(sessions, doc_uuid).submission_set_uuid or ""
    return [ss_uuid, doc_uuid, association_uuid(sessions, ss_uuid, doc_uuid)]


def test_remove_a_whole_submission(sessions, settings, patient):
    doc = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [doc], top_level_ss_classification=True))
    ids = _submission_uuids(sessions, uuid_of(sessions, doc.unique_id))
    remove(sessions, settings, ids)
    with sessions() as session:
        for table, column in (
            (RegistryObjectRow, RegistryObjectRow.entry_uuid),
            (RegistryValueRow, RegistryValueRow.entry_uuid),
            (RegistryAssociationRow, RegistryAssociationRow.entry_uuid),
        ):
            assert session.scalar(select(func.count()).select_from(table).where(column.in_(ids))) == 0
        owners = select(func.count()).where(RegistryObjectRow.owner_uuid.in_(ids))
        assert session.scalar(owners) == 0  # the top-level Classification went with its SubmissionSet
    assert doc_uids(run(sessions, settings, xs.find_documents(patient))) == set()


def test_remove_errors_change_nothing(sessions, settings, patient):
    doc = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [doc]))
    ss_uuid, doc_uuid, member = _submission_uuids(sessions, uuid_of(sessions, doc.unique_id))
    before = _count(sessions)
    cases = [
        ([xs.new_uuid()], "UnresolvedReferenceException"),
        (["Document01"], "UnresolvedReferenceException"),
        ([doc_uuid], "ReferencesExistException"),
        ([ss_uuid], "ReferencesExistException"),
        ([doc_uuid, member], "XDSUnreferencedObjectException"),
    ]
    for ids, code in cases:
        with pytest.raises(XdsError) as excinfo:
            remove(sessions, settings, ids)
        assert codes(excinfo) == [code], (ids, [i.context for i in excinfo.value.items])
    with pytest.raises(XdsError) as excinfo:
        remove(sessions, settings, [ss_uuid, doc_uuid, member], who="another-edge")
    assert set(codes(excinfo)) == {"XDSRegistryError"} and "not submitted by another-edge" in str(excinfo.value)
    assert _count(sessions) == before


def test_remove_a_folder_membership(sessions, settings, patient):
    doc, _folder, doc_uuid, folder_uuid = _register_in_folder(sessions, settings, patient)
    membership = association_uuid(sessions, folder_uuid, doc_uuid)
    ss_uuid = row(sessions, folder_uuid).submission_set_uuid or ""
    link = association_uuid(sessions, ss_uuid, membership)
    remove(sessions, settings, [membership, link])
    assert doc_uids(_folder_contents(sessions, settings, folder_uuid)) == set()
    assert row(sessions, folder_uuid).status == APPROVED  # the folder stays, empty
    assert listed(run(sessions, settings, xs.find_documents(patient)))  # and so does the document


def test_remove_request_shape():
    bad = xs.remove_request([xs.new_uuid()])
    bad.set("deletionScope", "urn:oasis:names:tc:ebxml-regrep:DeletionScopeType:DeleteRepositoryItemOnly")
    with pytest.raises(XdsError) as excinfo:
        md.parse_remove_request(bad)
    assert "deletionScope" in str(excinfo.value)
    with pytest.raises(XdsError):
        md.parse_remove_request(xs.remove_request([]))
    assert md.parse_remove_request(xs.remove_request(["a", "b", "a"])) == ["a", "b"]


# --- load ----------------------------------------------------------------------------------------


def test_registry_busy_when_every_slot_is_taken(sessions, settings, patient):
    admission = Admission(limit=1, wait_seconds=0.05)
    with admission.slot("a long transaction"):
        for call in (
            lambda: api.register_document_set(sessions, settings, xs.submission(patient), admission=admission),
            lambda: api.stored_query(sessions, settings, xs.find_documents(patient), admission=admission),
            lambda: api.delete_document_set(
                sessions, settings, xs.remove_request([xs.new_uuid()]), participant=EDGE, admission=admission
            ),
        ):
            with pytest.raises(XdsError) as excinfo:
                call()
            assert codes(excinfo) == ["XDSRegistryBusy"]
    api.register_document_set(sessions, settings, xs.submission(patient), admission=admission)  # free again
