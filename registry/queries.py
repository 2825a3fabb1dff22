"""ITI-18 Registry Stored Query: the fourteen stored queries of ITI TF-2a 3.18.4.1.2.3.7 run
against the registry tables, and the rendering of their results.

A request is parsed and checked by registry.query_params; each query then runs as a few SELECTs
that the indexes of registry.models answer (patient + kind + status for the Find queries and
GetAll; primary key, uniqueId, lid and association ends for the Get queries).

Matching rules (ITI TF-2a 3.18.4.1.2.3.6/7): codes are OR within one slot and AND across slots of
the AND/OR parameters; time ranges are From-inclusive, To-exclusive and compare the normalised DTM;
authorPerson is a LIKE pattern (``%``, ``_``), case-insensitive; without ``$XDSDocumentEntryType``
only stable entries are returned; Associations are returned when Approved unless
``$XDSAssociationStatus`` asks otherwise (XDS Metadata Update).

Privacy rule of this clearinghouse: a consumer finds only what it names. Every query is keyed by a
non-empty patient id, or by exact entryUUIDs / uniqueIds / logicalIds (no wildcards, bounded in
number), and a Get query's answer never spans two patients (XDSResultNotSinglePatient).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from lxml import etree
from sqlalchemy import ColumnElement, Integer, Select, String, and_, bindparam, exists, func, literal, or_, select
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from clearinghouse.errors import XDSResultNotSinglePatient, XDSTooManyResults, XDSUnknownCommunity
from clearinghouse.xmlsafe import NS, qname
from registry import metadata as md
from registry.models import RegistryAssociationRow, RegistryObjectRow, RegistryValueRow
from registry.patients import merged_aliases_query, resolve_patient
from registry.query_params import (  # noqa: F401 - re-exported: the query ids are this module's interface
    FIND_DOCUMENTS,
    FIND_DOCUMENTS_BY_REFERENCE_ID,
    FIND_FOLDERS,
    FIND_SUBMISSION_SETS,
    GET_ALL,
    GET_ASSOCIATIONS,
    GET_DOCUMENTS,
    GET_DOCUMENTS_AND_ASSOCIATIONS,
    GET_FOLDER_AND_CONTENTS,
    GET_FOLDERS,
    GET_FOLDERS_FOR_DOCUMENT,
    GET_RELATED_DOCUMENTS,
    GET_SUBMISSION_SET_AND_CONTENTS,
    GET_SUBMISSION_SETS,
    LEAF_CLASS,
    OBJECT_REF,
    QUERIES,
    QueryRequest,
    parse_literal,
    parse_request,
)
from registry.store import _chunks, classifications_of, dtm_key

RIM = NS["rim"]
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"

# Core tables, not ORM entities: a query only reads plain rows, and Core expressions cost less to
# build on every request. Short aliases keep the query builders readable.
OBJECTS = RegistryObjectRow.__table__
ASSOCIATIONS = RegistryAssociationRow.__table__
O = OBJECTS.c  # noqa: E741
A = ASSOCIATIONS.c
V = RegistryValueRow.__table__.c


# --- matching ------------------------------------------------------------------------------------


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def code_match(column: ColumnElement, codes: Sequence[str]) -> ColumnElement[bool]:
    """OR of codes. ``code^^scheme`` matches exactly; a bare ``code`` (some consumers omit the
    scheme) matches that code in any scheme."""
    full = [c for c in codes if "^^" in c]
    bare = [c for c in codes if "^^" not in c]
    clauses: list[ColumnElement[bool]] = []
    if full:
        clauses.append(column.in_(full))
    clauses += [column.like(_like_escape(c) + "^^%", escape="\\") for c in bare]
    return or_(*clauses)


def _has_value(kind: str, condition: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists(select(V.id).where(V.entry_uuid == O.entry_uuid, V.kind == kind, condition))


def _author_match(patterns: Sequence[str]) -> ColumnElement[bool]:
    # LIKE semantics of the TF (% and _ wildcards), made case-insensitive on every database.
    return or_(*(func.lower(V.value).like(p.lower()) for p in patterns))


def _range(column: ColumnElement, low: str | None, high: str | None) -> list[ColumnElement[bool]]:
    """From inclusive, To exclusive (ITI TF-2a 3.18.4.1.2.3.7.1); both normalised like the column."""
    clauses = []
    if low is not None:
        clauses.append(column >= dtm_key(low))
    if high is not None:
        clauses.append(column < dtm_key(high))
    return clauses


def _entry_types(req: QueryRequest) -> list[str]:
    # Without $XDSDocumentEntryType only stable entries are returned (ITI TF-2a 3.18.4.1.2.3.6.2).
    return req.texts("$XDSDocumentEntryType") or [md.STABLE_DOCUMENT_ENTRY]


def _association_statuses(req: QueryRequest) -> list[str]:
    return req.texts("$XDSAssociationStatus") or [md.APPROVED]


def _code_groups(req: QueryRequest, name: str, kind: str) -> list[ColumnElement[bool]]:
    """One EXISTS per slot (AND across slots), each an OR of its codes."""
    return [_has_value(kind, code_match(V.value, [str(v) for v in group])) for group in req.params.get(name, [])]


def document_filters(req: QueryRequest) -> list[ColumnElement[bool]]:
    """The DocumentEntry filters of FindDocuments(ByReferenceId), GetAll and the *AndContents queries."""
    return [O.object_type == "DocumentEntry", O.entry_type.in_(_entry_types(req)), *optional_document_filters(req)]


def optional_document_filters(req: QueryRequest) -> list[ColumnElement[bool]]:
    """The DocumentEntry filters for the optional parameters present in the request (none for a
    plain query by patient and status)."""
    clauses: list[ColumnElement[bool]] = []
    single_codes = (
        ("$XDSDocumentEntryClassCode", O.class_code),
        ("$XDSDocumentEntryTypeCode", O.type_code),
        ("$XDSDocumentEntryPracticeSettingCode", O.practice_setting_code),
        ("$XDSDocumentEntryHealthcareFacilityTypeCode", O.healthcare_facility_type_code),
        ("$XDSDocumentEntryFormatCode", O.format_code),
    )
    for name, column in single_codes:
        if name in req.params:
            clauses.append(code_match(column, req.texts(name)))
    clauses += _code_groups(req, "$XDSDocumentEntryEventCodeList", "eventCode")
    clauses += _code_groups(req, "$XDSDocumentEntryConfidentialityCode", "confidentialityCode")
    for column, stem in (
        (O.creation_time, "CreationTime"),
        (O.service_start_time, "ServiceStartTime"),
        (O.service_stop_time, "ServiceStopTime"),
    ):
        clauses += _range(column, req.text(f"$XDSDocumentEntry{stem}From"), req.text(f"$XDSDocumentEntry{stem}To"))
    if "$XDSDocumentEntryAuthorPerson" in req.params:
        clauses.append(_has_value("authorPerson", _author_match(req.texts("$XDSDocumentEntryAuthorPerson"))))
    if "$XDSDocumentEntryReferenceIdList" in req.params:
        refs = req.texts("$XDSDocumentEntryReferenceIdList")
        clauses.append(_has_value("referenceId", V.value.in_(refs)))
    return clauses


# --- execution helpers ---------------------------------------------------------------------------


# A result row: the RESULT_COLUMNS of one object, by attribute (row.entry_uuid, row.xml, ...).
ResultRow = Row[Any]


@dataclass
class QueryResult:
    return_type: str
    objects: list[ResultRow]


def _too_many(limit: int) -> XDSTooManyResults:
    return XDSTooManyResults(f"the query matches more than {limit} objects; narrow it down")


# What a result needs of each object: rendering reads the stored XML, the privacy rule the patient.
# Selecting these columns (not whole ORM objects) keeps a query's cost close to the SELECT's own.
RESULT_COLUMNS = (O.entry_uuid, O.object_type, O.patient_id, O.status, O.created_at, O.version, O.xml)


# An Association's row carries its ends, so that the queries following associations need no
# second look-up for them.
ASSOCIATION_COLUMNS = (*RESULT_COLUMNS, A.source_uuid, A.target_uuid, A.assoc_type)


def _fetch(session: Session, stmt: Select, limit: int, columns: Sequence = RESULT_COLUMNS) -> list[ResultRow]:
    """Run ``stmt`` returning at most ``limit`` rows (with ``columns``), or XDSTooManyResults."""
    ordered = stmt.with_only_columns(*columns).order_by(O.created_at, O.entry_uuid).limit(limit + 1)
    # Plain rows through the Core connection: no ORM identity map or entity loading on the way.
    rows = list(session.connection().execute(ordered))
    if len(rows) > limit:
        raise _too_many(limit)
    return rows


def _fetch_in(
    session: Session, column: ColumnElement, values: Collection[str], limit: int, *clauses: ColumnElement[bool]
) -> list[ResultRow]:
    """Rows whose ``column`` is one of ``values`` (chunked IN lists), at most ``limit`` in all."""
    rows: list[ResultRow] = []
    for chunk in _chunks(sorted(set(values))):
        rows += _fetch(session, select(OBJECTS).where(column.in_(chunk), *clauses), limit)
        if len(rows) > limit:
            raise _too_many(limit)
    return rows


def _associations(
    session: Session,
    req: QueryRequest,
    limit: int,
    *,
    sources: Collection[str] = (),
    targets: Collection[str] = (),
    types: Sequence[str] = (),
) -> list[ResultRow]:
    """Associations (of ``types``, if given, and of the statuses asked for) leaving ``sources``
    or arriving at ``targets``."""
    found: dict[str, ResultRow] = {}
    for ends, column in ((sources, A.source_uuid), (targets, A.target_uuid)):
        for chunk in _chunks(sorted(set(ends))):
            stmt = (
                select(OBJECTS)
                .join(ASSOCIATIONS, A.entry_uuid == O.entry_uuid)
                .where(column.in_(chunk), O.status.in_(_association_statuses(req)))
            )
            if types:
                stmt = stmt.where(A.assoc_type.in_(types))
            found.update((r.entry_uuid, r) for r in _fetch(session, stmt, limit, ASSOCIATION_COLUMNS))
    if len(found) > limit:
        raise _too_many(limit)
    return sorted(found.values(), key=lambda r: (r.created_at, r.entry_uuid))


def _ends(session: Session, assoc_rows: Sequence[ResultRow]) -> dict[str, tuple[str, str, str]]:
    """entry UUID -> (source, target, type) of Association rows (looked up unless they carry them)."""
    found: dict[str, tuple[str, str, str]] = {
        r.entry_uuid: (r.source_uuid, r.target_uuid, r.assoc_type) for r in assoc_rows if "source_uuid" in r._fields
    }
    ids = [r.entry_uuid for r in assoc_rows if r.entry_uuid not in found]
    for chunk in _chunks(ids):
        stmt = select(A.entry_uuid, A.source_uuid, A.target_uuid, A.assoc_type).where(A.entry_uuid.in_(chunk))
        found.update((e, (s, t, k)) for e, s, t, k in session.execute(stmt))
    return found


def _patients(req: QueryRequest, name: str) -> Select:
    """The named patient and the identifiers merged into it (ITI-8 A40): a merge moves the prior
    patient's documents to the surviving one, so a query for it must find them too. A subquery,
    so the lookup costs no round trip of its own."""
    patient = req.text(name) or ""
    return merged_aliases_query(patient).union_all(select(literal(patient, String)))


# FindDocuments is the query consumers send most, so its statement is built once, with bound
# parameters, and only the optional filters a request carries are added to it: building the
# expression tree and its cache key costs more than PostgreSQL takes to answer from the index.
# Status and entry type lists of up to _SLOTS values fill a fixed set of parameters (the last value
# repeated): an "expanding" IN list would make SQLAlchemy render the SQL again on every execution.
_SLOTS = 4
_PATIENT = bindparam("patient", type_=String)


def _find_documents_statement(statuses: ColumnElement[bool], entry_types: ColumnElement[bool]) -> Select:
    return (
        select(*RESULT_COLUMNS)
        .where(
            O.patient_id.in_(merged_aliases_query(_PATIENT).union_all(select(_PATIENT))),
            statuses,
            O.object_type == "DocumentEntry",
            entry_types,
        )
        .order_by(O.created_at, O.entry_uuid)
        .limit(bindparam("limit", type_=Integer))
    )


_FIND_DOCUMENTS = _find_documents_statement(
    O.status.in_([bindparam(f"status_{i}", type_=String) for i in range(_SLOTS)]),
    O.entry_type.in_([bindparam(f"entry_type_{i}", type_=String) for i in range(_SLOTS)]),
)
_FIND_DOCUMENTS_MANY = _find_documents_statement(
    O.status.in_(bindparam("statuses", expanding=True)),
    O.entry_type.in_(bindparam("entry_types", expanding=True)),
)


def _find_documents_values(patient: str, statuses: list[str], entry_types: list[str], limit: int) -> dict[str, Any]:
    """The parameters of _FIND_DOCUMENTS (or of _FIND_DOCUMENTS_MANY when a list is longer than _SLOTS)."""
    values: dict[str, Any] = {"patient": patient, "limit": limit}
    if len(statuses) > _SLOTS or len(entry_types) > _SLOTS:
        return values | {"statuses": statuses, "entry_types": entry_types}
    for name, given in (("status", statuses), ("entry_type", entry_types)):
        for i in range(_SLOTS):
            values[f"{name}_{i}"] = given[min(i, len(given) - 1)] if given else None
    return values


def _check_home(req: QueryRequest, home_community_id: str) -> None:
    home = req.text("$homeCommunityId")
    if home is not None and home != home_community_id:
        raise XDSUnknownCommunity(
            f"homeCommunityId {home} is not this community ({home_community_id})", "$homeCommunityId"
        )


def _single_patient(session: Session, rows: Sequence[ResultRow]) -> None:
    # Entries filed under a merged-away identifier belong to the surviving patient.
    patients = {resolve_patient(session, p) or p for p in {r.patient_id for r in rows if r.patient_id}}
    if len(patients) > 1:
        raise XDSResultNotSinglePatient(
            "the requested objects belong to more than one patient; ask for one patient at a time"
        )


def _named(req: QueryRequest, limit: int, *names: str) -> tuple[str, list[str]]:
    """The parameter given among ``names`` and its values; naming more objects than a result may
    hold is XDSTooManyResults, so no Get query can be turned into a listing."""
    name = req.given(*names)
    wanted = list(dict.fromkeys(req.texts(name)))
    if len(wanted) > limit:
        raise XDSTooManyResults(f"{name} names {len(wanted)} objects, at most {limit} per query", name)
    return name, wanted


_ID_COLUMNS = {"EntryUUID": O.entry_uuid, "UniqueId": O.unique_id, "LogicalID": O.lid}


def _by_identifier(session: Session, req: QueryRequest, limit: int, prefix: str, kind: str) -> list[ResultRow]:
    """Objects of ``kind`` named by ``{prefix}EntryUUID``, ``UniqueId`` or ``LogicalID``."""
    names = [f"{prefix}{suffix}" for suffix in _ID_COLUMNS if req.spec.param(f"{prefix}{suffix}") is not None]
    name, wanted = _named(req, limit, *names)
    column = _ID_COLUMNS[name[len(prefix) :]]
    return _fetch_in(session, column, wanted, limit, O.object_type == kind)


def _total(rows: list[ResultRow], limit: int) -> list[ResultRow]:
    if len(rows) > limit:
        raise _too_many(limit)
    return rows


# --- the stored queries --------------------------------------------------------------------------


def find_documents(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """FindDocuments and FindDocumentsByReferenceId (3.18.4.1.2.3.7.1, .7.14): one SELECT, in
    which the patient index (patient_id, object_type, status) gives the rows and the other filters
    are checked on them."""
    filters = optional_document_filters(req)
    values = _find_documents_values(
        req.text("$XDSDocumentEntryPatientId") or "", req.texts("$XDSDocumentEntryStatus"), _entry_types(req), limit + 1
    )
    stmt = _FIND_DOCUMENTS_MANY if "statuses" in values else _FIND_DOCUMENTS
    if filters:
        stmt = stmt.where(*filters)
    rows = session.connection().execute(stmt, values).all()
    if len(rows) > limit:
        raise _too_many(limit)
    return rows


def find_submission_sets(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    patients = _patients(req, "$XDSSubmissionSetPatientId")
    clauses: list[ColumnElement[bool]] = [
        O.object_type == "SubmissionSet",
        O.patient_id.in_(patients),
        O.status.in_(req.texts("$XDSSubmissionSetStatus")),
    ]
    if "$XDSSubmissionSetSourceId" in req.params:
        clauses.append(O.source_id.in_(req.texts("$XDSSubmissionSetSourceId")))
    clauses += _range(
        O.submission_time,
        req.text("$XDSSubmissionSetSubmissionTimeFrom"),
        req.text("$XDSSubmissionSetSubmissionTimeTo"),
    )
    if "$XDSSubmissionSetAuthorPerson" in req.params:
        clauses.append(_has_value("authorPerson", _author_match(req.texts("$XDSSubmissionSetAuthorPerson"))))
    if "$XDSSubmissionSetContentType" in req.params:
        clauses.append(code_match(O.content_type_code, req.texts("$XDSSubmissionSetContentType")))
    return _fetch(session, select(OBJECTS).where(*clauses), limit)


def find_folders(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """FindFolders (3.18.4.1.2.3.7.3): by patient, status, lastUpdateTime range and codeList."""
    patients = _patients(req, "$XDSFolderPatientId")
    clauses: list[ColumnElement[bool]] = [
        O.object_type == "Folder",
        O.patient_id.in_(patients),
        O.status.in_(req.texts("$XDSFolderStatus")),
        *_range(O.last_update_time, req.text("$XDSFolderLastUpdateTimeFrom"), req.text("$XDSFolderLastUpdateTimeTo")),
        *_code_groups(req, "$XDSFolderCodeList", "folderCode"),
    ]
    return _fetch(session, select(OBJECTS).where(*clauses), limit)


def _associations_among(session: Session, req: QueryRequest, ids: set[str], limit: int) -> list[ResultRow]:
    """Associations whose both ends are in ``ids``, then those linking to such an association
    (SubmissionSet HasMember of a Folder->DocumentEntry HasMember)."""
    leaving = _associations(session, req, limit, sources=ids)
    ends = _ends(session, leaving)
    direct = [r for r in leaving if ends[r.entry_uuid][1] in ids]
    second = {r.entry_uuid for r in direct}
    return direct + [r for r in leaving if ends[r.entry_uuid][1] in second]


def get_all(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """GetAll (3.18.4.1.2.3.7.4): the patient's SubmissionSets, Folders, DocumentEntries and the
    Associations among them."""
    patients = _patients(req, "$patientId")
    docs = select(OBJECTS).where(
        O.patient_id.in_(patients), O.status.in_(req.texts("$XDSDocumentEntryStatus")), *document_filters(req)
    )
    sets = select(OBJECTS).where(
        O.patient_id.in_(patients),
        O.object_type == "SubmissionSet",
        O.status.in_(req.texts("$XDSSubmissionSetStatus")),
    )
    folders = select(OBJECTS).where(
        O.patient_id.in_(patients), O.object_type == "Folder", O.status.in_(req.texts("$XDSFolderStatus"))
    )
    rows = _fetch(session, sets, limit) + _fetch(session, folders, limit) + _fetch(session, docs, limit)
    rows += _associations_among(session, req, {r.entry_uuid for r in rows}, limit)
    return _total(rows, limit)


def get_documents(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """GetDocuments (3.18.4.1.2.3.7.5): by entryUUID, uniqueId or logicalId (every version)."""
    _check_home(req, home)
    rows = _by_identifier(session, req, limit, "$XDSDocumentEntry", "DocumentEntry")
    _single_patient(session, rows)
    return rows


def get_folders(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """GetFolders (3.18.4.1.2.3.7.6): by entryUUID, uniqueId or logicalId."""
    _check_home(req, home)
    rows = _by_identifier(session, req, limit, "$XDSFolder", "Folder")
    _single_patient(session, rows)
    return rows


def _named_objects(session: Session, req: QueryRequest, limit: int) -> list[ResultRow]:
    _name, wanted = _named(req, limit, "$uuid")
    rows = _fetch_in(session, O.entry_uuid, wanted, limit, O.object_type != "Classification")
    _single_patient(session, rows)
    return rows


def get_associations(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """GetAssociations (3.18.4.1.2.3.7.7): the Associations leaving or arriving at the objects named."""
    _check_home(req, home)
    named = {r.entry_uuid for r in _named_objects(session, req, limit)}
    return _associations(session, req, limit, sources=named, targets=named)


def get_documents_and_associations(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """GetDocumentsAndAssociations (3.18.4.1.2.3.7.8): the documents and every Association that
    leaves or arrives at them."""
    _check_home(req, home)
    docs = _by_identifier(session, req, limit, "$XDSDocumentEntry", "DocumentEntry")
    _single_patient(session, docs)
    ids = {r.entry_uuid for r in docs}
    return _total(docs + _associations(session, req, limit, sources=ids, targets=ids), limit)


def get_submission_sets(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """GetSubmissionSets (3.18.4.1.2.3.7.9): the SubmissionSets the objects named are members of,
    with those HasMember Associations."""
    _check_home(req, home)
    named = {r.entry_uuid for r in _named_objects(session, req, limit)}
    memberships = _associations(session, req, limit, targets=named, types=[md.HAS_MEMBER])
    ends = _ends(session, memberships)
    sets = _fetch_in(session, O.entry_uuid, {e[0] for e in ends.values()}, limit, O.object_type == "SubmissionSet")
    set_ids = {s.entry_uuid for s in sets}
    return _total(sets + [m for m in memberships if ends[m.entry_uuid][0] in set_ids], limit)


def get_submission_set_and_contents(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """The SubmissionSet, its member DocumentEntries (filtered) and Folders, the associations among
    them, and the Folder->DocumentEntry associations submitted with it (3.18.4.1.2.3.7.10)."""
    _check_home(req, home)
    if "$XDSSubmissionSetEntryUUID" in req.params:
        key = O.entry_uuid == req.text("$XDSSubmissionSetEntryUUID")
    else:
        key = O.unique_id == req.text("$XDSSubmissionSetUniqueId")
    found = _fetch(session, select(OBJECTS).where(O.object_type == "SubmissionSet", key), limit)
    if not found:
        return []
    ss = found[0]
    memberships = _associations(session, req, limit, sources=[ss.entry_uuid], types=[md.HAS_MEMBER])
    ends = _ends(session, memberships)
    member_of = {ends[m.entry_uuid][1]: m for m in memberships}
    targets = set(member_of)
    # One SELECT for every kind of member: the DocumentEntries that pass the filters, the Folders,
    # and the Folder->DocumentEntry associations submitted with the set.
    wanted_kinds = or_(and_(*document_filters(req)), O.object_type.in_(("Folder", "Association")))
    members = _fetch_in(session, O.entry_uuid, targets, limit, wanted_kinds)
    docs = [m for m in members if m.object_type == "DocumentEntry"]
    folders = [m for m in members if m.object_type == "Folder"]
    included = {ss.entry_uuid} | {r.entry_uuid for r in docs + folders}
    # Associations that are themselves members (Folder->DocumentEntry) count if both ends are returned.
    statuses = _association_statuses(req)
    inner_rows = [m for m in members if m.object_type == "Association" and m.status in statuses]
    inner_ends = _ends(session, inner_rows)
    inner = [
        r for r in inner_rows if inner_ends[r.entry_uuid][0] in included and inner_ends[r.entry_uuid][1] in included
    ]
    wanted = included | {r.entry_uuid for r in inner}
    rows = [ss, *folders, *docs, *(m for t, m in member_of.items() if t in wanted), *inner]
    return _total(rows, limit)


def get_folder_and_contents(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """GetFolderAndContents (3.18.4.1.2.3.7.11): the Folder, its member DocumentEntries (filtered)
    and the HasMember Associations linking them."""
    _check_home(req, home)
    if "$XDSFolderEntryUUID" in req.params:
        key = O.entry_uuid == req.text("$XDSFolderEntryUUID")
    else:
        key = O.unique_id == req.text("$XDSFolderUniqueId")
    folders = _fetch(session, select(OBJECTS).where(O.object_type == "Folder", key), limit)
    if not folders:
        return []
    # A uniqueId names every version of a Folder; its contents are those of the latest.
    folder = max(folders, key=lambda f: f.version)
    memberships = _associations(session, req, limit, sources=[folder.entry_uuid], types=[md.HAS_MEMBER])
    ends = _ends(session, memberships)
    docs = _fetch_in(session, O.entry_uuid, {e[1] for e in ends.values()}, limit, *document_filters(req))
    doc_ids = {d.entry_uuid for d in docs}
    return _total([folder, *docs, *(m for m in memberships if ends[m.entry_uuid][1] in doc_ids)], limit)


def _one_document(session: Session, req: QueryRequest, limit: int) -> list[ResultRow]:
    """The DocumentEntry a single-document query names (every version sharing a uniqueId)."""
    if "$XDSDocumentEntryEntryUUID" in req.params:
        key = O.entry_uuid == req.text("$XDSDocumentEntryEntryUUID")
    else:
        key = O.unique_id == req.text("$XDSDocumentEntryUniqueId")
    docs = _fetch(session, select(OBJECTS).where(O.object_type == "DocumentEntry", key), limit)
    _single_patient(session, docs)
    return docs


def get_folders_for_document(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """GetFoldersForDocument (3.18.4.1.2.3.7.12): the Folders the document is a member of."""
    _check_home(req, home)
    docs = {d.entry_uuid for d in _one_document(session, req, limit)}
    memberships = _associations(session, req, limit, targets=docs, types=[md.HAS_MEMBER])
    sources = {e[0] for e in _ends(session, memberships).values()}
    return _fetch_in(session, O.entry_uuid, sources, limit, O.object_type == "Folder")


def get_related_documents(session: Session, req: QueryRequest, limit: int, home: str) -> list[ResultRow]:
    """GetRelatedDocuments (3.18.4.1.2.3.7.13): the document, the documents related to it by the
    association types asked for, and those Associations; nothing when it has no such relation."""
    _check_home(req, home)
    origin = _one_document(session, req, limit)
    ids = {d.entry_uuid for d in origin}
    types = req.texts("$AssociationTypes")
    links = _associations(session, req, limit, sources=ids, targets=ids, types=types)
    ends = _ends(session, links)
    others = {end for s, t, _k in ends.values() for end in (s, t) if end not in ids}
    related = _fetch_in(session, O.entry_uuid, others, limit, *document_filters(req))
    related_ids = {r.entry_uuid for r in related}
    used = [link for link in links if {ends[link.entry_uuid][0], ends[link.entry_uuid][1]} & related_ids]
    if not used:
        return []
    return _total([*origin, *related, *used], limit)


Runner = Callable[[Session, QueryRequest, int, str], list[ResultRow]]

RUNNERS: dict[str, Runner] = {
    FIND_DOCUMENTS: find_documents,
    FIND_DOCUMENTS_BY_REFERENCE_ID: find_documents,
    FIND_SUBMISSION_SETS: find_submission_sets,
    FIND_FOLDERS: find_folders,
    GET_ALL: get_all,
    GET_DOCUMENTS: get_documents,
    GET_FOLDERS: get_folders,
    GET_ASSOCIATIONS: get_associations,
    GET_DOCUMENTS_AND_ASSOCIATIONS: get_documents_and_associations,
    GET_SUBMISSION_SETS: get_submission_sets,
    GET_SUBMISSION_SET_AND_CONTENTS: get_submission_set_and_contents,
    GET_FOLDER_AND_CONTENTS: get_folder_and_contents,
    GET_FOLDERS_FOR_DOCUMENT: get_folders_for_document,
    GET_RELATED_DOCUMENTS: get_related_documents,
}
assert set(RUNNERS) == set(QUERIES), "every stored query in the parameter tables has a runner"


def run(session: Session, req: QueryRequest, *, max_results: int, home_community_id: str) -> QueryResult:
    """Run one parsed stored query; errors are raised as XdsError subclasses."""
    rows = RUNNERS[req.spec.id](session, req, max_results, home_community_id)
    return QueryResult(req.return_type, rows)


def execute(session: Session, request: etree._Element, *, max_results: int, home_community_id: str) -> QueryResult:
    """Parse and run one stored query; errors are raised as XdsError subclasses."""
    return run(session, parse_request(request), max_results=max_results, home_community_id=home_community_id)


# --- rendering -----------------------------------------------------------------------------------

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, collect_ids=False)
_LIST_OPEN = f'<rim:RegistryObjectList xmlns:rim="{RIM}">'
_LIST_CLOSE = "</rim:RegistryObjectList>"
_QUERY = NS["query"]
_RESPONSE_OPEN = f'<query:AdhocQueryResponse xmlns:query="{_QUERY}" xmlns:rim="{RIM}" status="{SUCCESS}">'.encode()
_RESPONSE_CLOSE = b"</query:AdhocQueryResponse>"


def object_list_text(session: Session, result: QueryResult) -> str:
    """The rim:RegistryObjectList of a result as XML text: ObjectRefs, or the stored objects
    verbatim, each RegistryPackage followed by the top-level Classifications submitted for it (the
    one that makes it a SubmissionSet or Folder must travel with it).

    The stored objects are XML the registry serialised itself, each declaring the namespaces it
    uses (metadata.to_text), so they are spliced as text: parsing them into elements only to
    serialise them again cost more than the query (docs/registry.md, "Indexes and speed").
    """
    if result.return_type == OBJECT_REF:
        refs = "".join(f"<rim:ObjectRef id={quoteattr(row.entry_uuid)}/>" for row in result.objects)
        return _LIST_OPEN + refs + _LIST_CLOSE
    packages = [r.entry_uuid for r in result.objects if r.object_type in ("SubmissionSet", "Folder")]
    extra = classifications_of(session, packages) if packages else {}
    parts = [_LIST_OPEN]
    for row in result.objects:
        parts.append(row.xml)
        parts += [c.xml for c in extra.get(row.entry_uuid, [])]
    parts.append(_LIST_CLOSE)
    return "".join(parts)


def response_xml(session: Session, result: QueryResult) -> bytes:
    """The ``query:AdhocQueryResponse`` (status Success) of a result, serialised in UTF-8 without an
    XML declaration: what the ITI-18 endpoint puts in the SOAP Body."""
    return _RESPONSE_OPEN + object_list_text(session, result).encode("utf-8") + _RESPONSE_CLOSE


def response_outline() -> etree._Element:
    """The response element of a successful query without its contents: what the transport's
    audit and metrics observers read (the status) when the body itself travels as ``response_xml``."""
    return etree.Element(qname("query", "AdhocQueryResponse"), nsmap={"query": NS["query"], "rim": RIM}, status=SUCCESS)


def parse_response(data: bytes) -> etree._Element:
    """``response_xml`` as an element (for callers that inspect the answer, e.g. tests)."""
    return etree.fromstring(data, _PARSER)
