"""Persistence of registered metadata, in the caller's session.

Nothing here commits: ``save_submission`` adds rows to the session the caller opened with
``clearinghouse.db.transaction``, so a submission is stored entirely or not at all. The lookup
functions give the ITI-42 rules the registry facts they need (``rules.KnownObject``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime

from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import metadata as md
from registry.metadata import (
    Association,
    DocumentEntry,
    Folder,
    RegistryObject,
    Submission,
    SubmissionSet,
)
from registry.models import RegistryAssociationRow, RegistryObjectRow, RegistryValueRow
from registry.rules import KnownObject, is_dtm

# Bound IN-lists: SQLite and some drivers cap the number of bound parameters per statement.
_CHUNK = 500

# Padding that turns YYYY[MM[DD[hh[mm[ss]]]]] into 14 digits: the earliest instant of the period.
_DTM_PAD = "0101000000"


def dtm_key(value: str | None) -> str | None:
    """Normalised, sortable form of a DTM (``2004`` -> ``20040101000000``); None if not a DTM."""
    if not value or not is_dtm(value):
        return None
    return value + _DTM_PAD[len(value) - 4 :]


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


def _known(row: RegistryObjectRow) -> KnownObject:
    return KnownObject(
        entry_uuid=row.entry_uuid,
        object_type=row.object_type,
        patient_id=row.patient_id,
        status=row.status,
        unique_id=row.unique_id,
        hash=row.hash,
        size=row.size,
    )


def lookup_objects(session: Session, entry_uuids: Iterable[str]) -> dict[str, KnownObject]:
    """Registered objects among ``entry_uuids`` (top-level Classifications excluded)."""
    wanted = sorted({u for u in entry_uuids if u})
    found: dict[str, KnownObject] = {}
    for chunk in _chunks(wanted):
        rows = session.scalars(
            select(RegistryObjectRow).where(
                RegistryObjectRow.entry_uuid.in_(chunk), RegistryObjectRow.object_type != "Classification"
            )
        )
        found.update((row.entry_uuid, _known(row)) for row in rows)
    return found


def lookup_unique_ids(session: Session, unique_ids: Iterable[str]) -> dict[str, list[KnownObject]]:
    """uniqueId -> the registered objects that carry it."""
    wanted = sorted({u for u in unique_ids if u})
    found: dict[str, list[KnownObject]] = {}
    for chunk in _chunks(wanted):
        for row in session.scalars(select(RegistryObjectRow).where(RegistryObjectRow.unique_id.in_(chunk))):
            found.setdefault(row.unique_id or "", []).append(_known(row))
    return found


def submission_entry_ids(sub: Submission) -> set[str]:
    """Every urn:uuid the submission defines or references: what lookup_objects must check."""
    ids = {obj.id for obj in sub.objects() if md.is_uuid_urn(obj.id)}
    ids |= {r for a in sub.associations for r in (a.source, a.target) if md.is_uuid_urn(r)}
    ids |= {r for r in sub.object_refs if md.is_uuid_urn(r)}
    return ids


def submission_unique_ids(sub: Submission) -> set[str]:
    return {uid for obj in [*sub.submission_sets, *sub.folders, *sub.document_entries] if (uid := obj.unique_id)}


# --- rows from parsed objects --------------------------------------------------------------------


def _code(obj: RegistryObject, scheme: str) -> str | None:
    found = obj.classified(scheme)
    return found[0].code_key if found else None


def _size(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def object_row(obj: RegistryObject, submission_set_uuid: str | None, created_at: datetime) -> RegistryObjectRow:
    """The row for one resolved object: its verbatim XML and its query columns."""
    row = RegistryObjectRow(
        entry_uuid=obj.id,
        object_type=obj.kind,
        unique_id=obj.unique_id,
        patient_id=obj.patient_id,
        status=obj.status or md.APPROVED,
        submission_set_uuid=submission_set_uuid,
        created_at=created_at,
        xml=md.to_text(obj.element),
    )
    if isinstance(obj, DocumentEntry):
        row.entry_type = obj.object_type
        row.mime_type = obj.mime_type
        row.creation_time = dtm_key(obj.slot_value("creationTime"))
        row.service_start_time = dtm_key(obj.slot_value("serviceStartTime"))
        row.service_stop_time = dtm_key(obj.slot_value("serviceStopTime"))
        row.class_code = _code(obj, md.DE_CLASS_CODE)
        row.type_code = _code(obj, md.DE_TYPE_CODE)
        row.format_code = _code(obj, md.DE_FORMAT_CODE)
        row.practice_setting_code = _code(obj, md.DE_PRACTICE_SETTING_CODE)
        row.healthcare_facility_type_code = _code(obj, md.DE_HEALTHCARE_FACILITY_TYPE_CODE)
        row.repository_unique_id = obj.slot_value("repositoryUniqueId")
        row.hash = (obj.slot_value("hash") or "").lower() or None
        row.size = _size(obj.slot_value("size"))
    elif isinstance(obj, SubmissionSet):
        row.submission_time = dtm_key(obj.slot_value("submissionTime"))
        row.source_id = obj.external_id(md.SS_SOURCE_ID)
        row.content_type_code = _code(obj, md.SS_CONTENT_TYPE_CODE)
    elif isinstance(obj, Folder):
        row.last_update_time = dtm_key(obj.slot_value("lastUpdateTime"))
    return row


def _authors(obj: RegistryObject, scheme: str) -> list[str]:
    return [p for a in obj.classified(scheme) for p in a.slots.get("authorPerson", [])]


def value_rows(obj: RegistryObject) -> list[tuple[str, str]]:
    """(kind, value) pairs of the multi-valued query attributes of one object."""
    pairs: list[tuple[str, str]] = []
    if isinstance(obj, DocumentEntry):
        pairs += [("eventCode", c.code_key) for c in obj.classified(md.DE_EVENT_CODE_LIST)]
        pairs += [("confidentialityCode", c.code_key) for c in obj.classified(md.DE_CONFIDENTIALITY_CODE)]
        pairs += [("authorPerson", p) for p in _authors(obj, md.DE_AUTHOR)]
        pairs += [("referenceId", r) for r in obj.slot(md.DE_REFERENCE_ID_LIST_SLOT)]
    elif isinstance(obj, SubmissionSet):
        pairs += [("authorPerson", p) for p in _authors(obj, md.SS_AUTHOR)]
    elif isinstance(obj, Folder):
        pairs += [("folderCode", c.code_key) for c in obj.classified(md.FOLDER_CODE_LIST)]
    return pairs


def save_submission(
    session: Session,
    sub: Submission,
    *,
    already_registered: Collection[str] = (),
    now: datetime | None = None,
) -> None:
    """Add a validated, resolved submission to ``session`` (no commit).

    ``already_registered``: uniqueIds that identical earlier DocumentEntries hold; the new entry
    then does not claim the uniqueId (see RegistryObjectRow.unique_id_claim).
    """
    created_at = now or datetime.now(UTC)
    ss = sub.submission_set
    ss_uuid = ss.id if ss else None
    rows = []
    for obj in sub.objects():
        row = object_row(obj, ss_uuid, created_at)
        if not isinstance(obj, Association) and row.unique_id not in already_registered:
            row.unique_id_claim = row.unique_id
        rows.append(row)
    rows += [
        RegistryObjectRow(
            entry_uuid=c.id,
            object_type="Classification",
            owner_uuid=c.classified_object,
            status=md.APPROVED,
            submission_set_uuid=ss_uuid,
            created_at=created_at,
            xml=md.to_text(c.element) if c.element is not None else "",
        )
        for c in sub.classifications
    ]
    session.add_all(rows)
    # Parents first: registry_values and registry_associations reference registry_objects.
    session.flush()
    session.add_all(
        RegistryValueRow(entry_uuid=obj.id, kind=kind, value=value)
        for obj in sub.objects()
        for kind, value in value_rows(obj)
    )
    session.add_all(
        RegistryAssociationRow(
            entry_uuid=a.id, source_uuid=a.source, target_uuid=a.target, assoc_type=a.association_type
        )
        for a in sub.associations
    )
    _apply_lifecycle(session, sub, created_at)
    session.flush()


def _update_xml(row: RegistryObjectRow, change: Callable[[etree._Element], None]) -> None:
    element = md.from_text(row.xml)
    change(element)
    row.xml = md.to_text(element)


def _apply_lifecycle(session: Session, sub: Submission, when: datetime) -> None:
    """Effects of a submission on registered objects: replaced entries become Deprecated
    (ITI TF-3 4.2.2.2.2) and registered Folders gaining a document get a new lastUpdateTime."""
    new_ids = {obj.id for obj in sub.objects()}
    stamp = when.strftime("%Y%m%d%H%M%S")
    for assoc in sub.associations:
        if assoc.association_type in md.REPLACING_TYPES and assoc.target not in new_ids:
            target = session.get(RegistryObjectRow, assoc.target)
            if target is not None:
                target.status = md.DEPRECATED
                _update_xml(target, lambda e: e.set("status", md.DEPRECATED))
        ss = sub.submission_set
        to_folder = assoc.association_type == md.HAS_MEMBER and ss is not None and assoc.source != ss.id
        if to_folder and assoc.source not in new_ids:
            folder = session.get(RegistryObjectRow, assoc.source)
            if folder is not None and folder.object_type == "Folder":
                folder.last_update_time = stamp
                _update_xml(folder, lambda e: md.set_slot(e, "lastUpdateTime", [stamp]))


# --- reading back --------------------------------------------------------------------------------


def load_rows(session: Session, entry_uuids: Iterable[str]) -> list[RegistryObjectRow]:
    wanted = list(dict.fromkeys(entry_uuids))
    rows: dict[str, RegistryObjectRow] = {}
    for chunk in _chunks(wanted):
        rows.update(
            (r.entry_uuid, r)
            for r in session.scalars(select(RegistryObjectRow).where(RegistryObjectRow.entry_uuid.in_(chunk)))
        )
    return [rows[u] for u in wanted if u in rows]


def classifications_of(session: Session, owners: Iterable[str]) -> dict[str, list[RegistryObjectRow]]:
    """Top-level Classification rows by the object they classify."""
    found: dict[str, list[RegistryObjectRow]] = {}
    for chunk in _chunks(sorted(set(owners))):
        stmt = (
            select(RegistryObjectRow)
            .where(RegistryObjectRow.object_type == "Classification", RegistryObjectRow.owner_uuid.in_(chunk))
            .order_by(RegistryObjectRow.entry_uuid)
        )
        for row in session.scalars(stmt):
            found.setdefault(row.owner_uuid or "", []).append(row)
    return found


def row_element(row: RegistryObjectRow) -> etree._Element:
    """The stored object as an element, ready to append to a RegistryObjectList."""
    return md.from_text(row.xml)
