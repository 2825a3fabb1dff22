"""ITI-57 association propagation to a new version, rule by rule, as the NIST toolkit's Metadata Update
simulator reads ITI TF-2b 3.57.4.1.3.3.1.5 (DocumentEntry) and 3.57.4.1.3.3.3.5 (Folder); see
docs/registry.md. Every refused request is checked to change nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from clearinghouse.db import transaction
from clearinghouse.errors import XdsError
from registry import metadata as md
from registry import store
from registry.models import RegistryAssociationRow, RegistryObjectRow
from tests import xds_samples as xs
from tests.registry_db import association_uuid, codes, register, row, update, uuid_of

pytest_plugins = ("tests.registry_db",)

APPROVED, DEPRECATED = xs.APPROVED, xs.DEPRECATED
LONG_AGO = datetime(2020, 2, 3, 4, 5, 6, tzinfo=UTC)


def _count(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(RegistryObjectRow)) or 0


def _sources(sessions, target: str, kind: str = xs.HAS_MEMBER) -> set[str]:
    """Sources of the Approved associations of ``kind`` arriving at ``target``."""
    with sessions() as session:
        found = session.scalars(
            select(RegistryAssociationRow.source_uuid)
            .join(RegistryObjectRow, RegistryObjectRow.entry_uuid == RegistryAssociationRow.entry_uuid)
            .where(
                RegistryAssociationRow.target_uuid == target,
                RegistryAssociationRow.assoc_type == kind,
                RegistryObjectRow.status == APPROVED,
            )
        )
        return set(found)


def _targets(sessions, source: str, kind: str = xs.HAS_MEMBER) -> set[str]:
    with sessions() as session:
        return set(
            session.scalars(
                select(RegistryAssociationRow.target_uuid).where(
                    RegistryAssociationRow.source_uuid == source, RegistryAssociationRow.assoc_type == kind
                )
            )
        )


def _age_folder(sessions, folder_uuid: str) -> str:
    """Give a Folder an old lastUpdateTime, so that a new one is told apart within the same second."""
    with transaction(sessions) as session:
        folder = session.get(RegistryObjectRow, folder_uuid)
        store.touch_folder(folder, LONG_AGO)
        return folder.last_update_time


def _version(doc: xs.DocSpec, **kw: object) -> xs.DocSpec:
    return xs.DocSpec(unique_id=doc.unique_id, content=xs.document_content(doc, doc.unique_id), **kw)  # type: ignore[arg-type]


@pytest.fixture
def doc_in_folder(sessions, settings, patient):
    """A DocumentEntry in a Folder, with an addendum (APND to it) registered later."""
    doc, folder = xs.DocSpec(), xs.FolderSpec(documents=[0])
    register(sessions, settings, xs.submission(patient, [doc], folders=[folder]))
    doc_uuid, folder_uuid = uuid_of(sessions, doc.unique_id), uuid_of(sessions, folder.unique_id, "Folder")
    addendum = xs.DocSpec()
    register(
        sessions,
        settings,
        xs.submission(patient, [addendum], extra_associations=[xs.AssocSpec(xs.APND, "Document01", doc_uuid)]),
    )
    return doc, doc_uuid, folder_uuid, uuid_of(sessions, addendum.unique_id)


@pytest.mark.parametrize("propagate", [None, "yes"])
def test_absent_or_yes_propagates_folder_membership_and_relationships(
    sessions, settings, patient, doc_in_folder, propagate
):
    """AssociationPropagation absent means yes: the new version joins the previous one's Folder (whose
    lastUpdateTime changes) and takes its place in its relationships."""
    doc, doc_uuid, folder_uuid, addendum_uuid = doc_in_folder
    aged = _age_folder(sessions, folder_uuid)
    update(sessions, settings, xs.new_version(patient, doc_uuid, "1", document=_version(doc), propagate=propagate))
    second = uuid_of(sessions, doc.unique_id)
    assert folder_uuid in _sources(sessions, second)
    assert row(sessions, folder_uuid).last_update_time != aged
    assert _sources(sessions, second, xs.APND) == {addendum_uuid}


def test_no_propagates_nothing(sessions, settings, patient, doc_in_folder):
    doc, doc_uuid, folder_uuid, _addendum = doc_in_folder
    aged = _age_folder(sessions, folder_uuid)
    update(sessions, settings, xs.new_version(patient, doc_uuid, "1", document=_version(doc), propagate="no"))
    second = uuid_of(sessions, doc.unique_id)
    assert folder_uuid not in _sources(sessions, second)
    assert _sources(sessions, second, xs.APND) == set()
    assert row(sessions, folder_uuid).last_update_time == aged  # its contents did not change


@pytest.mark.parametrize("value", ["YES", "No", "true", "", ["yes", "no"]])
def test_values_other_than_yes_or_no_are_an_update_error(sessions, settings, patient, doc_in_folder, value):
    """MuCommon.associationPropagation: only "yes" and "no" (as written), once; else XDSMetadataUpdateError."""
    doc, doc_uuid, _folder, _addendum = doc_in_folder
    request = xs.new_version(patient, doc_uuid, "1", document=_version(doc))
    member = next(
        a
        for a in request.iter(f"{{{md.RIM}}}Association")
        if a.get("targetObject") == "Document01" and a.get("associationType") == xs.HAS_MEMBER
    )
    md.set_slot(member, md.ASSOCIATION_PROPAGATION_SLOT, value if isinstance(value, list) else [value])
    before = _count(sessions)
    with pytest.raises(XdsError) as excinfo:
        update(sessions, settings, request)
    assert codes(excinfo) == ["XDSMetadataUpdateError"]
    assert "AssociationPropagation" in str(excinfo.value)
    assert _count(sessions) == before and row(sessions, doc_uuid).status == APPROVED


def test_only_approved_folder_memberships_and_relationships_are_propagated(sessions, settings, patient, doc_in_folder):
    doc, doc_uuid, folder_uuid, addendum_uuid = doc_in_folder
    other = xs.FolderSpec()
    register(sessions, settings, xs.submission(patient, [], folders=[other]))
    other_uuid = uuid_of(sessions, other.unique_id, "Folder")
    update(sessions, settings, xs.folder_membership(patient, other_uuid, doc_uuid))
    for source, kind in ((other_uuid, xs.HAS_MEMBER), (addendum_uuid, xs.APND)):
        link = association_uuid(sessions, source, doc_uuid, kind)
        update(sessions, settings, xs.status_update(patient, link, APPROVED, DEPRECATED))
    aged = _age_folder(sessions, other_uuid)
    update(sessions, settings, xs.new_version(patient, doc_uuid, "1", document=_version(doc)))
    second = uuid_of(sessions, doc.unique_id)
    assert folder_uuid in _sources(sessions, second) and other_uuid not in _sources(sessions, second)
    assert row(sessions, other_uuid).last_update_time == aged
    assert _sources(sessions, second, xs.APND) == set()


def test_the_submission_set_membership_is_not_propagated(sessions, settings, patient, doc_in_folder):
    """The new version is a member of the update's SubmissionSet only: the original SubmissionSet's
    HasMember stays with the previous version (ITI TF-3 4.1.4: one SubmissionSet per object)."""
    doc, doc_uuid, folder_uuid, _addendum = doc_in_folder
    original_set = row(sessions, doc_uuid).submission_set_uuid
    update(sessions, settings, xs.new_version(patient, doc_uuid, "1", document=_version(doc)))
    second = uuid_of(sessions, doc.unique_id)
    update_set = row(sessions, second).submission_set_uuid
    assert update_set != original_set
    assert _sources(sessions, second) == {update_set, folder_uuid}


def test_a_folder_version_keeps_its_approved_documents_and_its_last_update_time(sessions, settings, patient):
    """3.57.4.1.3.3.3.5: the new version of a Folder holds the Approved DocumentEntries the previous one
    held through Approved HasMember associations; a Deprecated document or membership stays behind.
    Its contents being the same, it keeps the previous lastUpdateTime."""
    kept, withdrawn, unlinked = xs.DocSpec(), xs.DocSpec(), xs.DocSpec()
    folder = xs.FolderSpec(documents=[0, 1, 2])
    register(sessions, settings, xs.submission(patient, [kept, withdrawn, unlinked], folders=[folder]))
    folder_uuid = uuid_of(sessions, folder.unique_id, "Folder")
    kept_uuid, withdrawn_uuid, unlinked_uuid = (uuid_of(sessions, d.unique_id) for d in (kept, withdrawn, unlinked))
    update(sessions, settings, xs.status_update(patient, withdrawn_uuid, APPROVED, DEPRECATED))
    membership = association_uuid(sessions, folder_uuid, unlinked_uuid)
    update(sessions, settings, xs.status_update(patient, membership, APPROVED, DEPRECATED))
    aged = _age_folder(sessions, folder_uuid)

    renamed = xs.FolderSpec(unique_id=folder.unique_id, title="Renamed")
    update(sessions, settings, xs.new_version(patient, folder_uuid, "1", folder=renamed))
    second = uuid_of(sessions, folder.unique_id, "Folder")
    assert _targets(sessions, second) == {kept_uuid}
    new = row(sessions, second)
    assert new.last_update_time == aged
    slot = md.from_text(new.xml).findtext(
        f"{{{md.RIM}}}Slot[@name='lastUpdateTime']/{{{md.RIM}}}ValueList/{{{md.RIM}}}Value"
    )
    assert slot == store.stamp(LONG_AGO)


def test_a_folder_version_without_propagation_is_empty_and_updated_now(sessions, settings, patient):
    doc, folder = xs.DocSpec(), xs.FolderSpec(documents=[0])
    register(sessions, settings, xs.submission(patient, [doc], folders=[folder]))
    folder_uuid = uuid_of(sessions, folder.unique_id, "Folder")
    aged = _age_folder(sessions, folder_uuid)
    renamed = xs.FolderSpec(unique_id=folder.unique_id, title="Renamed")
    update(sessions, settings, xs.new_version(patient, folder_uuid, "1", folder=renamed, propagate="no"))
    second = uuid_of(sessions, folder.unique_id, "Folder")
    assert _targets(sessions, second) == set()
    assert row(sessions, second).last_update_time > aged  # emptied: its contents changed now
