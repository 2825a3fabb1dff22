"""Persistence of registered metadata, in the caller's session.

Nothing here commits: the functions add, change or delete rows in the session the caller opened
with ``clearinghouse.db.transaction``, so a transaction is applied entirely or not at all. The
lookup functions give the rules the registry facts they need (``rules.KnownObject``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime

from lxml import etree
from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from registry import metadata as md
from registry.formats import is_dtm
from registry.metadata import (
    Association,
    DocumentEntry,
    Folder,
    RegistryObject,
    Submission,
    SubmissionSet,
)
from registry.models import RegistryAssociationRow, RegistryObjectRow, RegistryValueRow
from registry.rules import KnownObject

# Bound IN-lists: SQLite and some drivers cap the number of bound parameters per statement.
_CHUNK = 500

# Padding that turns YYYY[MM[DD[hh[mm[ss]]]]] into 14 digits: the earliest instant of the period.
_DTM_PAD = "0101000000"

O = RegistryObjectRow  # noqa: E741 - short alias keeps the statements readable
A = RegistryAssociationRow


def dtm_key(value: str | None) -> str | None:
    """Normalised, sortable form of a DTM (``2004`` -> ``20040101000000``); None if not a DTM."""
    if not value or not is_dtm(value):
        return None
    return value + _DTM_PAD[len(value) - 4 :]


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), _CHUNK):
        yield values[i : i + _CHUNK]


def stamp(when: datetime) -> str:
    """A DTM to the second, in UTC."""
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def _known(row: RegistryObjectRow, ends: tuple[str, str, str] | None = None) -> KnownObject:
    source, target, kind = ends or (None, None, None)
    return KnownObject(
        entry_uuid=row.entry_uuid,
        object_type=row.object_type,
        patient_id=row.patient_id,
        status=row.status,
        unique_id=row.unique_id,
        hash=row.hash,
        size=row.size,
        entry_type=row.entry_type,
        lid=row.lid or row.entry_uuid,
        version=row.version or 1,
        submitted_by=row.submitted_by,
        repository_unique_id=row.repository_unique_id,
        source_uuid=source,
        target_uuid=target,
        association_type=kind,
    )


def lookup_objects(session: Session, entry_uuids: Iterable[str]) -> dict[str, KnownObject]:
    """Registered objects among ``entry_uuids`` (top-level Classifications excluded); Associations
    come with their ends."""
    wanted = sorted({u for u in entry_uuids if u})
    found: dict[str, KnownObject] = {}
    for chunk in _chunks(wanted):
        stmt = (
            select(O, A.source_uuid, A.target_uuid, A.assoc_type)
            .outerjoin(A, A.entry_uuid == O.entry_uuid)
            .where(O.entry_uuid.in_(chunk), O.object_type != "Classification")
        )
        for row, source, target, kind in session.execute(stmt):
            found[row.entry_uuid] = _known(row, (source, target, kind) if source is not None else None)
    return found


def lookup_unique_ids(session: Session, unique_ids: Iterable[str]) -> dict[str, list[KnownObject]]:
    """uniqueId -> the registered objects that carry it."""
    wanted = sorted({u for u in unique_ids if u})
    found: dict[str, list[KnownObject]] = {}
    for chunk in _chunks(wanted):
        for row in session.scalars(select(O).where(O.unique_id.in_(chunk))):
            found.setdefault(row.unique_id or "", []).append(_known(row))
    return found


def latest_versions(session: Session, lids: Iterable[str]) -> dict[str, KnownObject]:
    """lid -> the registered version with the highest version number."""
    found: dict[str, KnownObject] = {}
    for chunk in _chunks(sorted({lid for lid in lids if lid})):
        for row in session.scalars(select(O).where(O.lid.in_(chunk), O.object_type != "Classification")):
            known = _known(row)
            best = found.get(known.lid or "")
            if best is None or known.version > best.version:
                found[known.lid or ""] = known
    return found


def associations_touching(session: Session, entry_uuids: Collection[str]) -> dict[str, KnownObject]:
    """Every registered Association whose source or target is among ``entry_uuids``."""
    ids: set[str] = set()
    for chunk in _chunks(sorted(entry_uuids)):
        ids.update(session.scalars(select(A.entry_uuid).where(A.source_uuid.in_(chunk))))
        ids.update(session.scalars(select(A.entry_uuid).where(A.target_uuid.in_(chunk))))
    return lookup_objects(session, ids)


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


def object_row(
    obj: RegistryObject,
    submission_set_uuid: str | None,
    created_at: datetime,
    *,
    submitted_by: str | None = None,
) -> RegistryObjectRow:
    """The row for one resolved object: its verbatim XML and its query columns."""
    row = RegistryObjectRow(
        entry_uuid=obj.id,
        object_type=obj.kind,
        unique_id=obj.unique_id,
        patient_id=obj.patient_id,
        status=obj.status or md.APPROVED,
        submission_set_uuid=submission_set_uuid,
        lid=obj.lid or obj.id,
        version=md.version_of(obj.element) or 1,
        submitted_by=submitted_by,
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
    submitted_by: str | None = None,
) -> None:
    """Add a validated, resolved submission to ``session`` (no commit), then apply its effects on
    registered objects (see ``apply_relationships``).

    ``already_registered``: uniqueIds that earlier objects hold (identical DocumentEntries, or the
    previous versions of an ITI-57 update); the new row then does not claim the uniqueId (see
    RegistryObjectRow.unique_id_claim).
    """
    created_at = now or datetime.now(UTC)
    ss = sub.submission_set
    ss_uuid = ss.id if ss else None
    rows = []
    for obj in sub.objects():
        row = object_row(obj, ss_uuid, created_at, submitted_by=submitted_by)
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
            submitted_by=submitted_by,
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
    session.flush()
    apply_relationships(session, sub, created_at, submitted_by=submitted_by)
    session.flush()


# --- effects on registered objects ---------------------------------------------------------------


def _update_xml(row: RegistryObjectRow, change: Callable[[etree._Element], None]) -> None:
    element = md.from_text(row.xml)
    change(element)
    row.xml = md.to_text(element)


def set_status(row: RegistryObjectRow, status: str) -> None:
    """Change an object's availabilityStatus, in its column and in its stored XML."""
    row.status = status
    _update_xml(row, lambda e: e.set("status", status))


def touch_folder(row: RegistryObjectRow, when: datetime) -> None:
    """A Folder whose membership changed gets a new lastUpdateTime (ITI TF-3 4.2.3.4.4)."""
    _set_last_update_time(row, stamp(when))


def keep_last_update_time(row: RegistryObjectRow, previous: RegistryObjectRow) -> None:
    """A Folder's new version whose members were propagated keeps the lastUpdateTime of the version
    it replaces: its contents have not changed (as the NIST toolkit reads ITI TF-2b 3.57.4.1.3.3.3)."""
    kept = md.from_text(previous.xml).findtext(
        f"{{{md.RIM}}}Slot[@name='lastUpdateTime']/{{{md.RIM}}}ValueList/{{{md.RIM}}}Value"
    )
    if kept:
        _set_last_update_time(row, kept.strip())


def _set_last_update_time(row: RegistryObjectRow, value: str) -> None:
    row.last_update_time = dtm_key(value)
    _update_xml(row, lambda e: md.set_slot(e, "lastUpdateTime", [value]))


def new_association(
    session: Session,
    kind: str,
    source: str,
    target: str,
    *,
    submission_set_uuid: str | None,
    patient_id: str | None,
    when: datetime,
    submitted_by: str | None,
) -> str:
    """Create an Association the registry itself derives (folder membership of a replacement or of
    a new version, a relationship propagated to a new version); returns its entry UUID."""
    entry_uuid = md.new_uuid_urn()
    element = etree.Element(
        f"{{{md.RIM}}}Association",
        nsmap={"rim": md.RIM},
        id=entry_uuid,
        lid=entry_uuid,
        objectType=md.OBJECT_TYPE_ASSOCIATION,
        associationType=kind,
        sourceObject=source,
        targetObject=target,
        status=md.APPROVED,
    )
    session.add(
        RegistryObjectRow(
            entry_uuid=entry_uuid,
            object_type="Association",
            patient_id=patient_id,
            status=md.APPROVED,
            submission_set_uuid=submission_set_uuid,
            lid=entry_uuid,
            version=1,
            submitted_by=submitted_by,
            created_at=when,
            xml=md.to_text(element),
        )
    )
    session.flush()
    session.add(RegistryAssociationRow(entry_uuid=entry_uuid, source_uuid=source, target_uuid=target, assoc_type=kind))
    return entry_uuid


def approved_folders_of(session: Session, document_uuid: str) -> list[RegistryObjectRow]:
    """Approved Folders holding the document through an Approved HasMember association."""
    membership = (
        select(A.source_uuid)
        .join(O, O.entry_uuid == A.entry_uuid)
        .where(A.target_uuid == document_uuid, A.assoc_type == md.HAS_MEMBER, O.status == md.APPROVED)
    )
    return list(
        session.scalars(
            select(O).where(O.entry_uuid.in_(membership), O.object_type == "Folder", O.status == md.APPROVED)
        )
    )


def approved_members_of(session: Session, folder_uuid: str) -> list[str]:
    """Approved DocumentEntries a Folder holds through Approved HasMember associations."""
    membership = (
        select(A.target_uuid)
        .join(O, O.entry_uuid == A.entry_uuid)
        .where(A.source_uuid == folder_uuid, A.assoc_type == md.HAS_MEMBER, O.status == md.APPROVED)
    )
    members = select(O.entry_uuid).where(
        O.entry_uuid.in_(membership), O.object_type == "DocumentEntry", O.status == md.APPROVED
    )
    return list(session.scalars(members.order_by(O.created_at, O.entry_uuid)))


def approved_relationships_of(session: Session, document_uuid: str) -> list[tuple[str, str, str]]:
    """(source, target, type) of the Approved relationship Associations (RPLC, XFRM, APND,
    XFRM_RPLC, signs, IsSnapshotOf) that leave or arrive at a DocumentEntry."""
    stmt = (
        select(A.source_uuid, A.target_uuid, A.assoc_type)
        .join(O, O.entry_uuid == A.entry_uuid)
        .where(
            or_(A.source_uuid == document_uuid, A.target_uuid == document_uuid),
            A.assoc_type.in_(md.RELATIONSHIP_TYPES),
            O.status == md.APPROVED,
        )
        .order_by(O.created_at, A.entry_uuid)
    )
    return [(s, t, k) for s, t, k in session.execute(stmt)]


def _dependents(session: Session, document_uuid: str) -> list[RegistryObjectRow]:
    """Approved transformations and addenda of a document (sources of XFRM/APND to it)."""
    sources = select(A.source_uuid).where(A.target_uuid == document_uuid, A.assoc_type.in_(md.DEPENDENT_TYPES))
    return list(session.scalars(select(O).where(O.entry_uuid.in_(sources), O.status == md.APPROVED)))


def apply_relationships(session: Session, sub: Submission, when: datetime, *, submitted_by: str | None) -> None:
    """Effects of a submission on registered objects (ITI TF-3 4.2.2).

    RPLC / XFRM_RPLC: the replaced DocumentEntry becomes Deprecated, and so do its transformations
    and addenda (they belong to the replaced content); the replacement joins every Folder that held
    the replaced document. A registered Folder gaining a document gets a new lastUpdateTime.
    """
    new_ids = {obj.id for obj in sub.objects()}
    ss = sub.submission_set
    ss_uuid = ss.id if ss else None
    touched: dict[str, RegistryObjectRow] = {}
    for assoc in sub.associations:
        if assoc.association_type in md.REPLACING_TYPES and assoc.target not in new_ids:
            target = session.get(RegistryObjectRow, assoc.target)
            if target is None:
                continue
            for folder in approved_folders_of(session, target.entry_uuid):
                new_association(
                    session,
                    md.HAS_MEMBER,
                    folder.entry_uuid,
                    assoc.source,
                    submission_set_uuid=ss_uuid,
                    patient_id=folder.patient_id,
                    when=when,
                    submitted_by=submitted_by,
                )
                touched[folder.entry_uuid] = folder
            set_status(target, md.DEPRECATED)
            for dependent in _dependents(session, target.entry_uuid):
                set_status(dependent, md.DEPRECATED)
        to_folder = assoc.association_type == md.HAS_MEMBER and ss is not None and assoc.source != ss.id
        if to_folder and assoc.source not in new_ids:
            folder = session.get(RegistryObjectRow, assoc.source)
            if folder is not None and folder.object_type == "Folder":
                touched[folder.entry_uuid] = folder
    for folder in touched.values():
        touch_folder(folder, when)


def remove_objects(session: Session, entry_uuids: Collection[str]) -> None:
    """Delete objects, their query values, association ends and the top-level Classifications
    submitted for them (ITI-62)."""
    for chunk in _chunks(sorted(entry_uuids)):
        session.execute(delete(RegistryValueRow).where(RegistryValueRow.entry_uuid.in_(chunk)))
        session.execute(delete(RegistryAssociationRow).where(RegistryAssociationRow.entry_uuid.in_(chunk)))
        session.execute(delete(O).where(O.object_type == "Classification", O.owner_uuid.in_(chunk)))
        session.execute(delete(O).where(O.entry_uuid.in_(chunk)))
    session.flush()


def max_versions(session: Session, lids: Collection[str]) -> Mapping[str, int]:
    """lid -> highest registered version."""
    found: dict[str, int] = {}
    for chunk in _chunks(sorted(lids)):
        stmt = select(O.lid, func.max(O.version)).where(O.lid.in_(chunk)).group_by(O.lid)
        found.update((lid, version) for lid, version in session.execute(stmt) if lid)
    return found


# --- reading back --------------------------------------------------------------------------------


def load_rows(session: Session, entry_uuids: Iterable[str]) -> list[RegistryObjectRow]:
    wanted = list(dict.fromkeys(entry_uuids))
    rows: dict[str, RegistryObjectRow] = {}
    for chunk in _chunks(wanted):
        rows.update((r.entry_uuid, r) for r in session.scalars(select(O).where(O.entry_uuid.in_(chunk))))
    return [rows[u] for u in wanted if u in rows]


def classifications_of(session: Session, owners: Iterable[str]) -> dict[str, list[RegistryObjectRow]]:
    """Top-level Classification rows by the object they classify."""
    found: dict[str, list[RegistryObjectRow]] = {}
    for chunk in _chunks(sorted(set(owners))):
        stmt = select(O).where(O.object_type == "Classification", O.owner_uuid.in_(chunk)).order_by(O.entry_uuid)
        for row in session.scalars(stmt):
            found.setdefault(row.owner_uuid or "", []).append(row)
    return found


def row_element(row: RegistryObjectRow) -> etree._Element:
    """The stored object as an element, ready to append to a RegistryObjectList."""
    return md.from_text(row.xml)
