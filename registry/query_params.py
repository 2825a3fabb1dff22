"""ITI-18 stored query requests: the value syntax, the parameter table of every stored query
(ITI TF-2a 3.18.4.1.2.3.7), and the parsing of an ``query:AdhocQueryRequest`` against them.

Errors follow ITI TF-2a 3.18.4.1.3 and ITI TF-3 4.2.4.1: an unknown query id is
XDSUnknownStoredQuery; a required parameter missing (or none of a query's alternatives) is
XDSStoredQueryMissingParam; a single-valued parameter with several values, a parameter repeated
that may not be, or two alternatives at once is XDSStoredQueryParamNumber; a parameter the query
does not define or a malformed value is XDSRegistryError. Which parameters are there is checked
before what they say.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from lxml import etree

from clearinghouse.errors import (
    XDSRegistryError,
    XDSStoredQueryMissingParam,
    XDSStoredQueryParamNumber,
    XDSUnknownStoredQuery,
)
from clearinghouse.xmlsafe import NS, qname
from registry import metadata as md
from registry.formats import is_dtm

RIM = NS["rim"]

FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_DOCUMENTS_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
FIND_SUBMISSION_SETS = "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9"
FIND_FOLDERS = "urn:uuid:958f3006-baad-4929-a4de-ff1114824431"
GET_ALL = "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
GET_FOLDERS = "urn:uuid:5737b14c-8a1a-4539-b659-e03a34a5e1e4"
GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
GET_DOCUMENTS_AND_ASSOCIATIONS = "urn:uuid:bab9529a-4a10-40b3-a01f-f68a615d247a"
GET_SUBMISSION_SETS = "urn:uuid:51224314-5390-4169-9b91-b1980040715a"
GET_SUBMISSION_SET_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
GET_FOLDER_AND_CONTENTS = "urn:uuid:b909a503-523d-4517-8acf-8e5834dfc4c7"
GET_FOLDERS_FOR_DOCUMENT = "urn:uuid:10cae35a-c7f9-4cf5-b61e-fc3278ffb578"
GET_RELATED_DOCUMENTS = "urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6"

OBJECT_REF = "ObjectRef"
LEAF_CLASS = "LeafClass"
STATUS_PREFIX = "urn:oasis:names:tc:ebxml-regrep:StatusType:"
METADATA_LEVELS = (1, 2)  # 1: XDS.b; 2: with Metadata Update, which this registry supports


# --- value syntax (ITI TF-2a 3.18.4.1.2.3.5) -----------------------------------------------------

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

STRING, DTM, CODE, STATUS, UUID, NUMBER, ENTRY_TYPE, ASSOCIATION_TYPE = (
    "string",
    "dtm",
    "code",
    "status",
    "uuid",
    "number",
    "entry type",
    "association type",
)


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


def _code(name: str, and_or: bool = False) -> Param:
    return Param(name, CODE, multiple=True, and_or=and_or)


def _status(name: str, required: bool = True) -> Param:
    return Param(name, STATUS, required=required, multiple=True)


_DE_TYPE = Param("$XDSDocumentEntryType", ENTRY_TYPE, multiple=True)
# Any value other than this community is XDSUnknownCommunity (checked when the query runs).
_HOME = Param("$homeCommunityId")
_METADATA_LEVEL = Param("$MetadataLevel", NUMBER)
_ASSOCIATION_STATUS = _status("$XDSAssociationStatus", required=False)
_DE_UUID_LIST = Param("$XDSDocumentEntryEntryUUID", UUID, multiple=True)
_DE_UID_LIST = Param("$XDSDocumentEntryUniqueId", multiple=True)
_DE_UUID = Param("$XDSDocumentEntryEntryUUID", UUID)
_DE_UID = Param("$XDSDocumentEntryUniqueId")
_FIND_DOCUMENTS_PARAMS = (
    Param("$XDSDocumentEntryPatientId", required=True),
    _code("$XDSDocumentEntryClassCode"),
    _code("$XDSDocumentEntryTypeCode"),
    _code("$XDSDocumentEntryPracticeSettingCode"),
    Param("$XDSDocumentEntryCreationTimeFrom", DTM),
    Param("$XDSDocumentEntryCreationTimeTo", DTM),
    Param("$XDSDocumentEntryServiceStartTimeFrom", DTM),
    Param("$XDSDocumentEntryServiceStartTimeTo", DTM),
    Param("$XDSDocumentEntryServiceStopTimeFrom", DTM),
    Param("$XDSDocumentEntryServiceStopTimeTo", DTM),
    _code("$XDSDocumentEntryHealthcareFacilityTypeCode"),
    _code("$XDSDocumentEntryEventCodeList", and_or=True),
    _code("$XDSDocumentEntryConfidentialityCode", and_or=True),
    Param("$XDSDocumentEntryAuthorPerson", multiple=True),
    _code("$XDSDocumentEntryFormatCode"),
    _status("$XDSDocumentEntryStatus"),
    _DE_TYPE,
    _METADATA_LEVEL,
)

QUERIES: dict[str, QuerySpec] = {
    spec.id: spec
    for spec in (
        QuerySpec(FIND_DOCUMENTS, "FindDocuments", _FIND_DOCUMENTS_PARAMS),
        QuerySpec(
            FIND_DOCUMENTS_BY_REFERENCE_ID,
            "FindDocumentsByReferenceId",
            (*_FIND_DOCUMENTS_PARAMS, Param("$XDSDocumentEntryReferenceIdList", required=True, multiple=True)),
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
                _status("$XDSSubmissionSetStatus"),
            ),
        ),
        QuerySpec(
            FIND_FOLDERS,
            "FindFolders",
            (
                Param("$XDSFolderPatientId", required=True),
                Param("$XDSFolderLastUpdateTimeFrom", DTM),
                Param("$XDSFolderLastUpdateTimeTo", DTM),
                _code("$XDSFolderCodeList", and_or=True),
                _status("$XDSFolderStatus"),
                _METADATA_LEVEL,
            ),
        ),
        QuerySpec(
            GET_ALL,
            "GetAll",
            (
                Param("$patientId", required=True),
                _status("$XDSDocumentEntryStatus"),
                _status("$XDSSubmissionSetStatus"),
                _status("$XDSFolderStatus"),
                _code("$XDSDocumentEntryFormatCode"),
                _code("$XDSDocumentEntryConfidentialityCode", and_or=True),
                _DE_TYPE,
                _ASSOCIATION_STATUS,
                _METADATA_LEVEL,
            ),
        ),
        QuerySpec(
            GET_DOCUMENTS,
            "GetDocuments",
            (
                _DE_UUID_LIST,
                _DE_UID_LIST,
                Param("$XDSDocumentEntryLogicalID", UUID, multiple=True),
                _HOME,
                _METADATA_LEVEL,
            ),
            one_of=("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId", "$XDSDocumentEntryLogicalID"),
        ),
        QuerySpec(
            GET_FOLDERS,
            "GetFolders",
            (
                Param("$XDSFolderEntryUUID", UUID, multiple=True),
                Param("$XDSFolderUniqueId", multiple=True),
                Param("$XDSFolderLogicalID", UUID, multiple=True),
                _HOME,
                _METADATA_LEVEL,
            ),
            one_of=("$XDSFolderEntryUUID", "$XDSFolderUniqueId", "$XDSFolderLogicalID"),
        ),
        QuerySpec(
            GET_ASSOCIATIONS,
            "GetAssociations",
            (Param("$uuid", UUID, required=True, multiple=True), _HOME, _ASSOCIATION_STATUS, _METADATA_LEVEL),
        ),
        QuerySpec(
            GET_DOCUMENTS_AND_ASSOCIATIONS,
            "GetDocumentsAndAssociations",
            (_DE_UUID_LIST, _DE_UID_LIST, _HOME, _ASSOCIATION_STATUS, _METADATA_LEVEL),
            one_of=("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"),
        ),
        QuerySpec(
            GET_SUBMISSION_SETS,
            "GetSubmissionSets",
            (Param("$uuid", UUID, required=True, multiple=True), _HOME, _ASSOCIATION_STATUS, _METADATA_LEVEL),
        ),
        QuerySpec(
            GET_SUBMISSION_SET_AND_CONTENTS,
            "GetSubmissionSetAndContents",
            (
                Param("$XDSSubmissionSetEntryUUID", UUID),
                Param("$XDSSubmissionSetUniqueId"),
                _code("$XDSDocumentEntryFormatCode"),
                _code("$XDSDocumentEntryConfidentialityCode", and_or=True),
                _DE_TYPE,
                _HOME,
                _ASSOCIATION_STATUS,
                _METADATA_LEVEL,
            ),
            one_of=("$XDSSubmissionSetEntryUUID", "$XDSSubmissionSetUniqueId"),
        ),
        QuerySpec(
            GET_FOLDER_AND_CONTENTS,
            "GetFolderAndContents",
            (
                Param("$XDSFolderEntryUUID", UUID),
                Param("$XDSFolderUniqueId"),
                _code("$XDSDocumentEntryFormatCode"),
                _code("$XDSDocumentEntryConfidentialityCode", and_or=True),
                _DE_TYPE,
                _HOME,
                _ASSOCIATION_STATUS,
                _METADATA_LEVEL,
            ),
            one_of=("$XDSFolderEntryUUID", "$XDSFolderUniqueId"),
        ),
        QuerySpec(
            GET_FOLDERS_FOR_DOCUMENT,
            "GetFoldersForDocument",
            (_DE_UUID, _DE_UID, _HOME, _ASSOCIATION_STATUS, _METADATA_LEVEL),
            one_of=("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"),
        ),
        QuerySpec(
            GET_RELATED_DOCUMENTS,
            "GetRelatedDocuments",
            (
                _DE_UUID,
                _DE_UID,
                Param("$AssociationTypes", ASSOCIATION_TYPE, required=True, multiple=True),
                _DE_TYPE,
                _HOME,
                _ASSOCIATION_STATUS,
                _METADATA_LEVEL,
            ),
            one_of=("$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"),
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

    def given(self, *names: str) -> str:
        """The first of ``names`` present (for queries with alternatives)."""
        return next(n for n in names if n in self.params)


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
        number = int(value)
        if param.name == "$MetadataLevel" and number not in METADATA_LEVELS:
            raise _bad(param.name, f"{number} is not a metadata level of this registry (1 or 2)")
        return number
    if not isinstance(value, str):
        raise _bad(param.name, f"{value!r} must be a quoted string")
    if not value.strip():
        raise _bad(param.name, "an empty value is not allowed")
    if param.kind == UUID and not md.is_uuid_urn(value):
        raise _bad(param.name, f"{value!r} is not a urn:uuid")
    if param.kind == ENTRY_TYPE and value not in md.DOCUMENT_ENTRY_TYPES:
        raise _bad(param.name, f"{value!r} is neither the stable nor the on-demand DocumentEntry type")
    if param.kind == STATUS and not value.startswith(STATUS_PREFIX):
        raise _bad(param.name, f"{value!r} is not an availabilityStatus ({STATUS_PREFIX}...)")
    if param.kind == ASSOCIATION_TYPE and value not in md.ASSOCIATION_TYPES + (md.UPDATE_AVAILABILITY_STATUS,):
        raise _bad(param.name, f"{value!r} is not an XDS association type")
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
    """Required parameters present (XDSStoredQueryMissingParam), and exactly one of a query's
    alternatives (none: XDSStoredQueryMissingParam; several: XDSStoredQueryParamNumber)."""
    for param in spec.params:
        if param.required and param.name not in names:
            raise XDSStoredQueryMissingParam(f"{spec.name}: required parameter {param.name} is missing", param.name)
    if spec.one_of:
        given = [n for n in spec.one_of if n in names]
        if not given:
            raise XDSStoredQueryMissingParam(
                f"{spec.name}: one of {', '.join(spec.one_of)} is required", ", ".join(spec.one_of)
            )
        if len(given) > 1:
            raise XDSStoredQueryParamNumber(
                f"{spec.name}: only one of {', '.join(spec.one_of)} may be given, got {', '.join(given)}",
                ", ".join(spec.one_of),
            )
