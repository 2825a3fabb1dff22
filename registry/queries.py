"""ITI-18 Registry Stored Query: FindDocuments, FindSubmissionSets, GetAll, GetDocuments and
GetSubmissionSetAndContents (ITI TF-2a 3.18.4.1.2.3.7).

A request is checked against the query's parameter table (names, required, single or multiple,
AND/OR), its slot values parsed by a small tokenizer for the SQL-like literal syntax of
3.18.4.1.2.3.5 (``'string'``, ``('a','b')``, bare numbers), then run as one SELECT per object kind.

Privacy rule of this clearinghouse: a consumer finds only what it names. Every query is keyed by a
non-empty patient id, or by exact entryUUIDs / uniqueIds (no wildcards, bounded in number, and a
GetDocuments answer never spans two patients), so no query can list other patients.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lxml import etree
from sqlalchemy import ColumnElement, Select, exists, func, or_, select
from sqlalchemy.orm import Session

from clearinghouse.errors import (
    XdsError,
    XDSRegistryError,
    XDSResultNotSinglePatient,
    XDSStoredQueryParamNumber,
    XDSTooManyResults,
    XDSUnknownCommunity,
    XDSUnknownStoredQuery,
)
from clearinghouse.xmlsafe import NS, qname
from registry import metadata as md
from registry.models import RegistryAssociationRow, RegistryObjectRow, RegistryValueRow
from registry.patients import merged_aliases, resolve_patient
from registry.rules import is_dtm
from registry.store import _chunks, classifications_of, dtm_key, row_element

RIM = NS["rim"]

FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_SUBMISSION_SETS = "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9"
GET_ALL = "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
GET_SUBMISSION_SET_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"

OBJECT_REF = "ObjectRef"
LEAF_CLASS = "LeafClass"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"

RESULT_NOT_SINGLE_PATIENT = XDSResultNotSinglePatient.code
UNKNOWN_COMMUNITY = XDSUnknownCommunity.code


# --- value syntax --------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?[0-9]+)|(?P<punct>[(),]))")


class ValueSyntaxError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str | int]]:
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueSyntaxError(f"unexpected text at position {pos}: {text[pos : pos + 20]!r}")
        if m.group("str") is not None:
            out.append(("value", m.group("str")[1:-1].replace("''", "'")))
        elif m.group("num") is not None:
            out.append(("value", int(m.group("num"))))
        else:
            out.append((m.group("punct"), m.group("punct")))
        pos = m.end()
    return out


def parse_literal(text: str) -> tuple[list[str | int], bool]:
    """Parse one rim:Value: a single literal, or a parenthesised, comma-separated list of them.

    Returns (values, was_list). Strings are in single quotes with '' for a quote inside; numbers
    are bare digits. Anything else raises ValueSyntaxError.
    """
    toks = _tokens(text)
    if not toks:
        raise ValueSyntaxError("empty value")
    if toks[0][0] == "value":
        if len(toks) != 1:
            raise ValueSyntaxError("a single value must not be followed by anything (lists need parentheses)")
        return [toks[0][1]], False
    if toks[0][0] != "(" or toks[-1][0] != ")" or len(toks) < 3:
        raise ValueSyntaxError("expected a quoted string, a number, or a list in parentheses")
    values: list[str | int] = []
    inner = toks[1:-1]
    for i, (kind, val) in enumerate(inner):
        expected = "value" if i % 2 == 0 else ","
        if kind != expected:
            raise ValueSyntaxError(f"expected {'a value' if expected == 'value' else 'a comma'} in the list")
        if kind == "value":
            values.append(val)
    if inner[-1][0] != "value":
        raise ValueSyntaxError("list ends with a comma")
    return values, True


# --- parameter tables ----------------------------------------------------------------------------

STRING, DTM, CODE, STATUS, UUID, NUMBER = "string", "dtm", "code", "status", "uuid", "number"


@dataclass(frozen=True)
class Param:
    name: str
    kind: str = STRING
    required: bool = False
    multiple: bool = False  # a list of values (OR)
    and_or: bool = False  # may repeat as several slots (AND of ORs)


@dataclass(frozen=True)
class QuerySpec:
    id: str
    name: str
    params: tuple[Param, ...]
    one_of: tuple[str, ...] = ()  # exactly one of these must be given

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def _de_code(name: str, and_or: bool = False) -> Param:
    return Param(name, CODE, multiple=True, and_or=and_or)


_DE_TYPE = Param("$XDSDocumentEntryType", UUID, multiple=True)
_HOME = Param("$homeCommunityId")
_METADATA_LEVEL = Param("$MetadataLevel", NUMBER)

QUERIES: dict[str, QuerySpec] = {
    spec.id: spec
    for spec in (
        QuerySpec(
            FIND_DOCUMENTS,
            "FindDocuments",
            (
                Param("$XDSDocumentEntryPatientId", required=True),
                _de_code("$XDSDocumentEntryClassCode"),
                _de_code("$XDSDocumentEntryTypeCode"),
                _de_code("$XDSDocumentEntryPracticeSettingCode"),
                Param("$XDSDocumentEntryCreationTimeFrom", DTM),
                Param("$XDSDocumentEntryCreationTimeTo", DTM),
                Param("$XDSDocumentEntryServiceStartTimeFrom", DTM),
                Param("$XDSDocumentEntryServiceStartTimeTo", DTM),
                Param("$XDSDocumentEntryServiceStopTimeFrom", DTM),
                Param("$XDSDocumentEntryServiceStopTimeTo", DTM),
                _de_code("$XDSDocumentEntryHealthcareFacilityTypeCode"),
                _de_code("$XDSDocumentEntryEventCodeList", and_or=True),
                _de_code("$XDSDocumentEntryConfidentialityCode", and_or=True),
                Param("$XDSDocumentEntryAuthorPerson", multiple=True),
                _de_code("$XDSDocumentEntryFormatCode"),
                Param("$XDSDocumentEntryStatus", STATUS, required=True, multiple=True),
                _DE_TYPE,
                Param("$XDSDocumentEntryReferenceIdList", multiple=True),
                _METADATA_LEVEL,
            ),
        ),
        QuerySpec(
            FIND_SUBMISSION_SETS,
            "FindSubmissionSets",
            (
                Param("$XDSSubmissionSetPatientId", required=True),
                Param("$XDSSubmissionSetSourceId", multiple=True),
                Param("$XDSSubmissionSetSubmissionTimeFrom", DTM),
                Param("$XDSSubmissionSetSubmissionTimeTo", DTM),
                Param("$XDSSubmissionSetAuthorPerson"),
                Param("$XDSSubmissionSetContentType", CODE, multiple=True),
                Param("$XDSSubmissionSetStatus", STATUS, required=True, multiple=True),
            ),
        ),
        QuerySpec(
            GET_ALL,
            "GetAll",
            (
                Param("$patientId", required=True),
                Param("$XDSDocumentEntryStatus", STATUS, required=True, multiple=True),
                Param("$XDSSubmissionSetStatus", STATUS, required=True, multiple=True),
                Param("$XDSFolderStatus", STATUS, required=True, multiple=True),
                _de_code("$XDSDocumentEntryFormatCode"),
                _de_code("$XDSDocumentEntryConfidentialityCode", and_or=True),
                _DE_TYPE,
                _METADATA_LEVEL,
            ),
        ),
        QuerySpec(
            GET_DOCUMENTS,
            "GetDocuments",
            (
                Param("$XDSDocumentEntryEntryUUID", UUID, multiple=True),
                Param("$XDSDocumentEntryUniqueId", multiple=True),
                _HOME,
                _METADATA_LEVEL,
            ),
            one_of=("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"),
        ),
        QuerySpec(
            GET_SUBMISSION_SET_AND_CONTENTS,
            "GetSubmissionSetAndContents",
            (
                Param("$XDSSubmissionSetEntryUUID", UUID),
                Param("$XDSSubmissionSetUniqueId"),
                _de_code("$XDSDocumentEntryFormatCode"),
                _de_code("$XDSDocumentEntryConfidentialityCode", and_or=True),
                _DE_TYPE,
                _HOME,
                _METADATA_LEVEL,
            ),
            one_of=("$XDSSubmissionSetEntryUUID", "$XDSSubmissionSetUniqueId"),
        ),
    )
}


# --- request parsing -----------------------------------------------------------------------------


@dataclass
class QueryRequest:
    """A parsed AdhocQueryRequest. ``params`` maps a parameter name to its groups of values:
    one group per slot (OR inside a group, AND across groups)."""

    spec: QuerySpec
    return_type: str
    params: dict[str, list[list[str | int]]] = field(default_factory=dict)

    def values(self, name: str) -> list[str | int]:
        """All values of a parameter (OR); empty if absent."""
        return [v for group in self.params.get(name, []) for v in group]

    def value(self, name: str) -> str | int | None:
        values = self.values(name)
        return values[0] if values else None

    def text(self, name: str) -> str | None:
        value = self.value(name)
        return None if value is None else str(value)

    def texts(self, name: str) -> list[str]:
        return [str(v) for v in self.values(name)]


def _bad(param: str, message: str) -> XDSRegistryError:
    return XDSRegistryError(f"parameter {param}: {message}", param)


def _check_value(param: Param, value: str | int) -> str | int:
    """Type rules per parameter kind; an empty string names nothing and is refused (privacy)."""
    if param.kind == DTM:
        text = str(value)
        if not is_dtm(text):
            raise _bad(param.name, f"{text!r} is not a DTM (YYYY[MM[DD[hh[mm[ss]]]]])")
        return text
    if param.kind == NUMBER:
        if not isinstance(value, int) and not str(value).isdigit():
            raise _bad(param.name, f"{value!r} is not a number")
        return int(value)
    if not isinstance(value, str):
        raise _bad(param.name, f"{value!r} must be a quoted string")
    if not value.strip():
        raise _bad(param.name, "an empty value is not allowed")
    if param.kind == UUID and not md.is_uuid_urn(value):
        raise _bad(param.name, f"{value!r} is not a urn:uuid")
    return value


def parse_slot(param: Param, raw_values: Sequence[str]) -> list[str | int]:
    """The values of one slot of ``param``: each rim:Value parsed and type-checked."""
    if not raw_values:
        raise _bad(param.name, "slot has no value")
    if not param.multiple and len(raw_values) > 1:
        raise XDSStoredQueryParamNumber(
            f"parameter {param.name} takes a single value, got {len(raw_values)}", param.name
        )
    values: list[str | int] = []
    for raw in raw_values:
        try:
            parsed, _was_list = parse_literal(raw)
        except ValueSyntaxError as exc:
            raise _bad(param.name, f"malformed value {raw!r}: {exc}") from exc
        values.extend(_check_value(param, v) for v in parsed)
    if not param.multiple and len(values) > 1:
        raise XDSStoredQueryParamNumber(f"parameter {param.name} takes a single value, got {len(values)}", param.name)
    return values


def parse_request(request: etree._Element) -> QueryRequest:
    """Check an ``query:AdhocQueryRequest`` against the stored query's parameter table."""
    if request.tag != qname("query", "AdhocQueryRequest"):
        raise XDSRegistryError(f"expected query:AdhocQueryRequest, got {request.tag}")
    option = request.find(qname("query", "ResponseOption"))
    return_type = option.get("returnType", "RegistryObject") if option is not None else OBJECT_REF
    if return_type not in (OBJECT_REF, LEAF_CLASS):
        raise XDSRegistryError(f"returnType {return_type!r} is not supported (ObjectRef or LeafClass)")
    query = request.find(f"{{{RIM}}}AdhocQuery")
    if query is None:
        raise XDSRegistryError("AdhocQueryRequest has no rim:AdhocQuery")
    spec = QUERIES.get(query.get("id", ""))
    if spec is None:
        raise XDSUnknownStoredQuery(
            f"stored query {query.get('id')!r} is not supported by this registry", query.get("id", "")
        )
    # Which parameters are there is checked before what they say: a request with the wrong set of
    # parameters is answered XDSStoredQueryParamNumber whatever its values look like.
    slots: list[tuple[Param, list[str]]] = []
    for slot in query.findall(f"{{{RIM}}}Slot"):
        name = slot.get("name", "")
        param = spec.param(name)
        if param is None:
            raise XDSRegistryError(f"parameter {name} is not a parameter of {spec.name}", name)
        if not param.and_or and any(p.name == name for p, _ in slots):
            raise XDSStoredQueryParamNumber(f"parameter {name} is given more than once", name)
        slots.append((param, [(v.text or "") for v in slot.findall(f"{{{RIM}}}ValueList/{{{RIM}}}Value")]))
    check_parameter_set(spec, {p.name for p, _ in slots})
    parsed = QueryRequest(spec, return_type)
    for param, raw in slots:
        parsed.params.setdefault(param.name, []).append(parse_slot(param, raw))
    return parsed


def check_parameter_set(spec: QuerySpec, names: set[str]) -> None:
    """Required parameters present, and exactly one of a query's alternatives."""
    for param in spec.params:
        if param.required and param.name not in names:
            raise XDSStoredQueryParamNumber(f"{spec.name}: required parameter {param.name} is missing", param.name)
    if spec.one_of:
        given = [n for n in spec.one_of if n in names]
        if len(given) != 1:
            raise XDSStoredQueryParamNumber(
                f"{spec.name}: exactly one of {', '.join(spec.one_of)} is required, got {len(given)}",
                ", ".join(spec.one_of),
            )


# --- matching ------------------------------------------------------------------------------------

O = RegistryObjectRow  # noqa: E741 - short alias keeps the query builders readable


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
    return exists(
        select(RegistryValueRow.id).where(
            RegistryValueRow.entry_uuid == O.entry_uuid, RegistryValueRow.kind == kind, condition
        )
    )


def _author_match(patterns: Sequence[str]) -> ColumnElement[bool]:
    # LIKE semantics of the TF (% and _ wildcards), made case-insensitive on every database.
    return or_(*(func.lower(RegistryValueRow.value).like(p.lower()) for p in patterns))


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


def document_filters(req: QueryRequest) -> list[ColumnElement[bool]]:
    """The DocumentEntry filters shared by FindDocuments, GetAll and GetSubmissionSetAndContents."""
    clauses: list[ColumnElement[bool]] = [
        O.object_type == "DocumentEntry",
        O.entry_type.in_(_entry_types(req)),
    ]
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
    for name, kind in (
        ("$XDSDocumentEntryEventCodeList", "eventCode"),
        ("$XDSDocumentEntryConfidentialityCode", "confidentialityCode"),
    ):
        for group in req.params.get(name, []):  # AND across slots, OR within one
            clauses.append(_has_value(kind, code_match(RegistryValueRow.value, [str(v) for v in group])))
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
        clauses.append(_has_value("referenceId", RegistryValueRow.value.in_(refs)))
    return clauses


# --- execution -----------------------------------------------------------------------------------


@dataclass
class QueryResult:
    return_type: str
    objects: list[RegistryObjectRow]


def _fetch(session: Session, stmt: Select, limit: int) -> list[RegistryObjectRow]:
    """Run ``stmt`` returning at most ``limit`` rows, or XDSTooManyResults."""
    rows = list(session.scalars(stmt.order_by(O.created_at, O.entry_uuid).limit(limit + 1)))
    if len(rows) > limit:
        raise XDSTooManyResults(f"the query matches more than {limit} objects; narrow it down")
    return rows


def _patients(session: Session, req: QueryRequest, name: str) -> list[str]:
    """The named patient and the identifiers merged into it (ITI-8 A40): a merge moves the prior
    patient's documents to the surviving one, so a query for it must find them too."""
    patient = req.text(name)
    if not patient or not patient.strip():  # parse already refuses '', this guards the invariant
        raise XDSStoredQueryParamNumber(f"{name} must name a patient", name)
    return [patient, *merged_aliases(session, patient)]


def find_documents(session: Session, req: QueryRequest, limit: int) -> list[RegistryObjectRow]:
    patients = _patients(session, req, "$XDSDocumentEntryPatientId")
    stmt = select(O).where(
        O.patient_id.in_(patients), O.status.in_(req.texts("$XDSDocumentEntryStatus")), *document_filters(req)
    )
    return _fetch(session, stmt, limit)


def find_submission_sets(session: Session, req: QueryRequest, limit: int) -> list[RegistryObjectRow]:
    patients = _patients(session, req, "$XDSSubmissionSetPatientId")
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
    return _fetch(session, select(O).where(*clauses), limit)


def _associations_among(session: Session, ids: set[str]) -> list[str]:
    """Association entry UUIDs whose both ends are in ``ids``, then those linking to such an
    association (SubmissionSet HasMember of a Folder->DocumentEntry HasMember)."""
    edges: list[tuple[str, str]] = []
    for chunk in _chunks(sorted(ids)):
        stmt = select(RegistryAssociationRow.entry_uuid, RegistryAssociationRow.target_uuid).where(
            RegistryAssociationRow.source_uuid.in_(chunk)
        )
        edges += list(session.execute(stmt))
    direct = [uuid for uuid, target in edges if target in ids]
    second = set(direct)
    return direct + [uuid for uuid, target in edges if target in second]


def get_all(session: Session, req: QueryRequest, limit: int) -> list[RegistryObjectRow]:
    patients = _patients(session, req, "$patientId")
    docs = select(O).where(
        O.patient_id.in_(patients), O.status.in_(req.texts("$XDSDocumentEntryStatus")), *document_filters(req)
    )
    sets = select(O).where(
        O.patient_id.in_(patients),
        O.object_type == "SubmissionSet",
        O.status.in_(req.texts("$XDSSubmissionSetStatus")),
    )
    folders = select(O).where(
        O.patient_id.in_(patients), O.object_type == "Folder", O.status.in_(req.texts("$XDSFolderStatus"))
    )
    rows = _fetch(session, sets, limit) + _fetch(session, folders, limit) + _fetch(session, docs, limit)
    assoc_ids = _associations_among(session, {r.entry_uuid for r in rows})
    rows += _fetch(session, select(O).where(O.entry_uuid.in_(assoc_ids)), limit) if assoc_ids else []
    if len(rows) > limit:
        raise XDSTooManyResults(f"the query matches more than {limit} objects; narrow it down")
    return rows


def _check_home(req: QueryRequest, home_community_id: str) -> None:
    home = req.text("$homeCommunityId")
    if home is not None and home != home_community_id:
        raise XdsError(
            f"homeCommunityId {home} is not this community ({home_community_id})",
            "$homeCommunityId",
            code=UNKNOWN_COMMUNITY,
        )


def _single_patient(session: Session, rows: Sequence[RegistryObjectRow]) -> None:
    # Entries filed under a merged-away identifier belong to the surviving patient.
    patients = {resolve_patient(session, p) or p for p in {r.patient_id for r in rows if r.patient_id}}
    if len(patients) > 1:
        raise XdsError(
            "the requested documents belong to more than one patient; ask for one patient at a time",
            code=RESULT_NOT_SINGLE_PATIENT,
        )


def get_documents(session: Session, req: QueryRequest, limit: int, home: str) -> list[RegistryObjectRow]:
    _check_home(req, home)
    by_uuid = "$XDSDocumentEntryEntryUUID" in req.params
    name = "$XDSDocumentEntryEntryUUID" if by_uuid else "$XDSDocumentEntryUniqueId"
    wanted = list(dict.fromkeys(req.texts(name)))
    # Exact identifiers only, and no more of them than a result may hold: this query cannot be
    # turned into a listing.
    if len(wanted) > limit:
        raise XDSTooManyResults(f"{name} names {len(wanted)} documents, at most {limit} per query", name)
    column = O.entry_uuid if by_uuid else O.unique_id
    rows: list[RegistryObjectRow] = []
    for chunk in _chunks(wanted):
        rows += _fetch(session, select(O).where(O.object_type == "DocumentEntry", column.in_(chunk)), limit)
    _single_patient(session, rows)
    return rows


def get_submission_set_and_contents(
    session: Session, req: QueryRequest, limit: int, home: str
) -> list[RegistryObjectRow]:
    """The SubmissionSet, its member DocumentEntries (filtered) and Folders, the associations among
    them, and the Folder->DocumentEntry associations submitted with it (ITI TF-2a 3.18.4.1.2.3.7.8)."""
    _check_home(req, home)
    if "$XDSSubmissionSetEntryUUID" in req.params:
        key = O.entry_uuid == req.text("$XDSSubmissionSetEntryUUID")
    else:
        key = O.unique_id == req.text("$XDSSubmissionSetUniqueId")
    ss = session.scalars(select(O).where(O.object_type == "SubmissionSet", key)).first()
    if ss is None:
        return []
    A = RegistryAssociationRow  # noqa: N806
    members = {
        target: assoc
        for assoc, target in session.execute(
            select(A.entry_uuid, A.target_uuid).where(A.source_uuid == ss.entry_uuid, A.assoc_type == md.HAS_MEMBER)
        )
    }
    targets = sorted(members)
    docs: list[RegistryObjectRow] = []
    folders: list[RegistryObjectRow] = []
    for chunk in _chunks(targets):
        docs += _fetch(session, select(O).where(O.entry_uuid.in_(chunk), *document_filters(req)), limit)
        folders += _fetch(session, select(O).where(O.entry_uuid.in_(chunk), O.object_type == "Folder"), limit)
    included = {ss.entry_uuid} | {r.entry_uuid for r in docs + folders}
    # Associations that are themselves members (Folder->DocumentEntry) count if both ends are returned.
    inner = [
        uuid
        for uuid, source, target in session.execute(
            select(A.entry_uuid, A.source_uuid, A.target_uuid).where(A.entry_uuid.in_(targets or [""]))
        )
        if source in included and target in included
    ]
    wanted_assocs = [members[t] for t in sorted(included | set(inner)) if t in members] + inner
    rows = [ss, *folders, *docs]
    if wanted_assocs:
        rows += _fetch(session, select(O).where(O.entry_uuid.in_(wanted_assocs)), limit)
    if len(rows) > limit:
        raise XDSTooManyResults(f"the query matches more than {limit} objects; narrow it down")
    return rows


Runner = Callable[[Session, QueryRequest, int, str], list[RegistryObjectRow]]

RUNNERS: dict[str, Runner] = {
    FIND_DOCUMENTS: lambda s, r, n, h: find_documents(s, r, n),
    FIND_SUBMISSION_SETS: lambda s, r, n, h: find_submission_sets(s, r, n),
    GET_ALL: lambda s, r, n, h: get_all(s, r, n),
    GET_DOCUMENTS: get_documents,
    GET_SUBMISSION_SET_AND_CONTENTS: get_submission_set_and_contents,
}


def execute(session: Session, request: etree._Element, *, max_results: int, home_community_id: str) -> QueryResult:
    """Parse and run one stored query; errors are raised as XdsError subclasses."""
    req = parse_request(request)
    rows = RUNNERS[req.spec.id](session, req, max_results, home_community_id)
    return QueryResult(req.return_type, rows)


def render_objects(session: Session, result: QueryResult) -> etree._Element:
    """The rim:RegistryObjectList of a result: ObjectRefs, or the stored objects verbatim, each
    RegistryPackage followed by the top-level Classifications submitted for it (the one that makes
    it a SubmissionSet or Folder must travel with it)."""
    object_list = etree.Element(f"{{{RIM}}}RegistryObjectList", nsmap={"rim": RIM})
    if result.return_type == OBJECT_REF:
        for row in result.objects:
            etree.SubElement(object_list, f"{{{RIM}}}ObjectRef", id=row.entry_uuid)
        return object_list
    extra = classifications_of(session, [r.entry_uuid for r in result.objects if r.object_type != "Association"])
    for row in result.objects:
        object_list.append(row_element(row))
        for classification in extra.get(row.entry_uuid, []):
            object_list.append(row_element(classification))
    # Stored objects carry their own namespace declarations; drop the ones nothing uses.
    etree.cleanup_namespaces(object_list)
    return object_list


def success_response(object_list: etree._Element) -> etree._Element:
    """``query:AdhocQueryResponse`` status Success around ``object_list``."""
    response = etree.Element(
        qname("query", "AdhocQueryResponse"), nsmap={"query": NS["query"], "rim": RIM}, status=SUCCESS
    )
    response.append(object_list)
    return response
