"""Registry storage (ITI-42) and stored queries (ITI-18) against a real database.

Runs on SQLite, and also on PostgreSQL in a throw-away schema when CLEARINGHOUSE_TEST_DATABASE_URL
is set. Each test files its documents under fresh patients, so tests share one database per backend.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from lxml import etree
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import registry.models  # noqa: F401 - registers the tables on Base.metadata
from clearinghouse.config import Settings
from clearinghouse.db import Base, transaction
from clearinghouse.errors import XdsError
from registry import api, patients, queries, query_params, store
from registry import metadata as md
from registry.models import RegistryAssociationRow, RegistryObjectRow, RegistryValueRow
from registry.queries import parse_literal
from tests import xds_samples as xs
from tests.registry_db import BACKENDS  # noqa: E402
from tests.registry_db import drop as _drop  # noqa: E402
from tests.registry_db import fresh_engine as _fresh_engine  # noqa: E402

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "ebRS"
MIGRATION = Path(__file__).resolve().parents[1] / "registry" / "migrations" / "registry_0001_objects.py"
REGISTRY_TABLES = {"registry_objects", "registry_values", "registry_associations", "registry_patient"}
SS_NODE = md.SUBMISSION_SET_NODE


# --- database fixtures ---------------------------------------------------------------------------


# The database fixtures (engine, sessions, settings on SQLite and PostgreSQL) are shared with the other
# registry tests.
pytest_plugins = ("tests.registry_db",)


@pytest.fixture(scope="module")
def query_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "query.xsd")))


def new_patient(sessions: sessionmaker[Session]) -> str:
    pid = xs.patient_cx()
    with transaction(sessions) as session:
        patients.register_patient(session, pid)
    return pid


@pytest.fixture
def patient(sessions: sessionmaker[Session]) -> str:
    return new_patient(sessions)


def register(sessions: sessionmaker[Session], settings: Settings, request: etree._Element) -> None:
    api.register_document_set(sessions, settings, request)


def run(sessions: sessionmaker[Session], settings: Settings, request: etree._Element) -> etree._Element:
    return api.stored_query(sessions, settings, request)


def error_codes(excinfo: pytest.ExceptionInfo[XdsError]) -> list[str]:
    return [i.code for i in excinfo.value.items]


def listed(response: etree._Element) -> list[etree._Element]:
    [object_list] = response.findall(f"{{{md.RIM}}}RegistryObjectList")
    return list(object_list)


def kinds(response: etree._Element) -> list[str]:
    return [etree.QName(e).localname for e in listed(response)]


def doc_uids(response: etree._Element) -> set[str]:
    """uniqueIds of the ExtrinsicObjects in a LeafClass response."""
    return {
        md.parse_extrinsic_object(e).unique_id or ""
        for e in listed(response)
        if e.tag == f"{{{md.RIM}}}ExtrinsicObject"
    }


def ref_ids(response: etree._Element) -> set[str]:
    return {e.get("id", "") for e in listed(response)}


def find_docs(sessions, settings, patient: str, **extra: xs.ParamValue) -> set[str]:
    return doc_uids(run(sessions, settings, xs.find_documents(patient, **extra)))


def stored_uuid(sessions: sessionmaker[Session], unique_id: str) -> str:
    with sessions() as session:
        return session.scalars(
            select(RegistryObjectRow.entry_uuid).where(RegistryObjectRow.unique_id == unique_id)
        ).one()


# --- migration -----------------------------------------------------------------------------------


def _table_of(diff: object) -> str:
    item = diff[0] if isinstance(diff, list) else diff
    for part in item[1:]:  # type: ignore[index]
        name = getattr(part, "name", None) if not isinstance(part, str) else part
        table = getattr(part, "table", None)
        if table is not None:
            return table.name
        if isinstance(name, str) and name.startswith("registry_"):
            return name
    return ""


def _load_migration(path: Path):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("backend", BACKENDS)
def test_migration_creates_exactly_the_model_tables(backend, tmp_path):
    eng, cleanup = _fresh_engine(backend, tmp_path)
    try:
        modules = [_load_migration(p) for p in sorted(MIGRATION.parent.glob("registry_*.py"))]
        assert [(m.revision, m.down_revision) for m in modules] == [
            ("registry_0001", None),
            ("registry_0002", "registry_0001"),
            ("registry_0003", "registry_0002"),
            ("registry_0004", "registry_0003"),
        ]
        assert modules[0].branch_labels == ("registry",)
        with eng.begin() as conn:
            with Operations.context(MigrationContext.configure(conn)):
                for module in modules:
                    module.upgrade()
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        ours = [d for d in diffs if _table_of(d) in REGISTRY_TABLES]
        assert ours == []
        with eng.begin() as conn:
            with Operations.context(MigrationContext.configure(conn)):
                for module in reversed(modules):
                    module.downgrade()
    finally:
        _drop(eng, cleanup)


# --- value syntax (no database) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("'abc'", (["abc"], False)),
        ("  'it''s'  ", (["it's"], False)),
        ("20240101", ([20240101], False)),
        ("('a','b')", (["a", "b"], True)),
        ("( 'a' , 'b' )", (["a", "b"], True)),
        ("('a^^b, c')", (["a^^b, c"], True)),
        ("(1, 2)", ([1, 2], True)),
    ],
)
def test_parse_literal(raw, expected):
    assert parse_literal(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "abc", "'abc", "('a',)", "('a' 'b')", "('a'", "'a' 'b'", "()", "(,'a')", "'a')", "a'b'"]
)
def test_parse_literal_rejects_malformed(raw):
    with pytest.raises(query_params.ValueSyntaxError):
        parse_literal(raw)


# --- ITI-42 storage ------------------------------------------------------------------------------


def test_register_stores_objects_with_new_uuids(sessions, settings, patient):
    docs = [xs.DocSpec(), xs.DocSpec()]
    request = xs.submission(patient, docs, folders=[xs.FolderSpec(documents=[1])])
    register(sessions, settings, request)
    with sessions() as session:
        rows = session.scalars(select(RegistryObjectRow).where(RegistryObjectRow.patient_id == patient)).all()
        kinds_ = sorted(r.object_type for r in rows)
        assert kinds_ == ["DocumentEntry", "DocumentEntry", "Folder", "SubmissionSet"]
        ss = next(r for r in rows if r.object_type == "SubmissionSet")
        members = session.scalars(
            select(RegistryObjectRow).where(RegistryObjectRow.submission_set_uuid == ss.entry_uuid)
        ).all()
        assert sorted(r.object_type for r in members).count("Association") == 5
        for row in members:
            assert md.is_uuid_urn(row.entry_uuid) and row.status == md.APPROVED
            element = md.from_text(row.xml)
            assert element.get("id") == row.entry_uuid and element.get("status") == md.APPROVED
            assert "Document01" not in row.xml and "SubmissionSet01" not in row.xml
        de = next(r for r in rows if r.unique_id == docs[0].unique_id)
        assert de.unique_id_claim == de.unique_id and de.hash and de.size
        assert de.creation_time == "20240105103000" and de.class_code == xs.CLASS_IMAGES.key
        assert de.entry_type == md.STABLE_DOCUMENT_ENTRY and de.repository_unique_id == xs.REPOSITORY_UNIQUE_ID
        values = session.execute(
            select(RegistryValueRow.kind, RegistryValueRow.value).where(RegistryValueRow.entry_uuid == de.entry_uuid)
        ).all()
        assert ("eventCode", xs.EVENT_CT.key) in values and (
            "confidentialityCode",
            xs.CONFIDENTIALITY_NORMAL.key,
        ) in values
        assert any(k == "authorPerson" for k, _ in values)
        n_assoc = session.scalar(
            select(func.count())
            .select_from(RegistryAssociationRow)
            .where(RegistryAssociationRow.source_uuid == ss.entry_uuid)
        )
        assert n_assoc == 4  # 2 documents, the folder, the folder->document association


def test_register_all_errors_and_nothing_stored(sessions, settings, patient):
    other = xs.patient_cx()
    request = xs.submission(
        patient,
        [
            xs.DocSpec(unique_id="1.2.3.77", omit=frozenset({"classCode"})),
            xs.DocSpec(unique_id="1.2.3.77"),
            xs.DocSpec(patient_id=other),
        ],
    )
    with pytest.raises(XdsError) as excinfo:
        register(sessions, settings, request)
    assert set(error_codes(excinfo)) == {
        "XDSRegistryMetadataError",
        "XDSRegistryDuplicateUniqueIdInMessage",
        "XDSPatientIdDoesNotMatch",
        "XDSUnknownPatientId",  # the other patient was never fed
    }
    with sessions() as session:
        assert session.scalar(select(func.count()).where(RegistryObjectRow.patient_id == patient)) == 0


def test_register_unknown_patient(sessions, settings):
    with pytest.raises(XdsError) as excinfo:
        register(sessions, settings, xs.submission(xs.patient_cx()))
    assert set(error_codes(excinfo)) == {"XDSUnknownPatientId"}
    assert "is not known to the registry" in excinfo.value.items[0].context


def test_identical_resubmission_is_accepted(sessions, settings, patient):
    spec = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [spec]))
    register(sessions, settings, xs.submission(patient, [xs.DocSpec(unique_id=spec.unique_id)]))
    with sessions() as session:
        rows = session.scalars(select(RegistryObjectRow).where(RegistryObjectRow.unique_id == spec.unique_id)).all()
        assert len(rows) == 2 and sorted(r.unique_id_claim is None for r in rows) == [False, True]
    assert find_docs(sessions, settings, patient) == {spec.unique_id}


def test_resubmission_with_other_content_is_refused(sessions, settings, patient):
    spec = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [spec]))
    with pytest.raises(XdsError) as excinfo:
        register(sessions, settings, xs.submission(patient, [xs.DocSpec(unique_id=spec.unique_id, content=b"x")]))
    assert error_codes(excinfo) == ["XDSNonIdenticalHash"]
    ss = xs.new_oid()
    register(sessions, settings, xs.submission(patient, ss_unique_id=ss))
    with pytest.raises(XdsError) as excinfo:
        register(sessions, settings, xs.submission(patient, ss_unique_id=ss))
    assert error_codes(excinfo) == ["XDSDuplicateUniqueIdInRegistry"]


def _race(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """Make the read-time duplicate check miss ``times`` times, as if a competing registration
    committed between the check and the insert."""
    real = store.lookup_unique_ids
    calls = {"n": 0}

    def blind(session, unique_ids):  # noqa: ANN001, ANN202
        calls["n"] += 1
        return {} if calls["n"] <= times else real(session, unique_ids)

    monkeypatch.setattr(store, "lookup_unique_ids", blind)


def test_concurrent_duplicate_is_caught_by_the_unique_index(sessions, settings, patient, monkeypatch):
    spec = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [spec]))
    _race(monkeypatch, 1)
    with pytest.raises(XdsError) as excinfo:
        register(sessions, settings, xs.submission(patient, [xs.DocSpec(unique_id=spec.unique_id, content=b"y")]))
    assert error_codes(excinfo) == ["XDSNonIdenticalHash"]  # the retry saw the winner
    _race(monkeypatch, 1)
    register(sessions, settings, xs.submission(patient, [xs.DocSpec(unique_id=spec.unique_id)]))  # identical
    _race(monkeypatch, 99)
    with pytest.raises(XdsError) as excinfo:
        register(sessions, settings, xs.submission(patient, [xs.DocSpec(unique_id=spec.unique_id, content=b"z")]))
    assert error_codes(excinfo) == ["XDSDuplicateUniqueIdInRegistry"]


def test_replacement_deprecates_the_original(sessions, settings, patient):
    old = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [old]))
    old_uuid = stored_uuid(sessions, old.unique_id)
    new = xs.DocSpec()
    register(
        sessions,
        settings,
        xs.submission(patient, [new], extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", old_uuid)]),
    )
    assert find_docs(sessions, settings, patient) == {new.unique_id}
    deprecated = run(sessions, settings, xs.find_documents(patient, status=[xs.DEPRECATED]))
    assert doc_uids(deprecated) == {old.unique_id}
    assert listed(deprecated)[0].get("status") == xs.DEPRECATED
    with pytest.raises(XdsError) as excinfo:  # a deprecated entry cannot be replaced again
        register(
            sessions,
            settings,
            xs.submission(patient, extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", old_uuid)]),
        )
    assert error_codes(excinfo) == ["XDSRegistryDeprecatedDocumentError"]


def test_references_must_resolve_to_the_same_patient(sessions, settings, patient):
    other = new_patient(sessions)
    theirs = xs.DocSpec()
    register(sessions, settings, xs.submission(other, [theirs]))
    for target, code in (
        (stored_uuid(sessions, theirs.unique_id), "XDSPatientIdDoesNotMatch"),
        (xs.new_uuid(), "UnresolvedReferenceException"),
    ):
        with pytest.raises(XdsError) as excinfo:
            register(
                sessions,
                settings,
                xs.submission(patient, extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", target)]),
            )
        assert error_codes(excinfo) == [code]


def test_adding_a_document_to_a_registered_folder(sessions, settings, patient):
    folder = xs.FolderSpec()
    register(sessions, settings, xs.submission(patient, [], folders=[folder]))
    folder_uuid = stored_uuid(sessions, folder.unique_id)
    with sessions() as session:
        session.execute(
            RegistryObjectRow.__table__.update()
            .where(RegistryObjectRow.entry_uuid == folder_uuid)
            .values(last_update_time="20000101000000")
        )
        session.commit()
    register(
        sessions,
        settings,
        xs.submission(
            patient,
            extra_associations=[
                xs.AssocSpec(xs.HAS_MEMBER, folder_uuid, "Document01", id="inner"),
                xs.AssocSpec(xs.HAS_MEMBER, "SubmissionSet01", "inner"),
            ],
        ),
    )
    with sessions() as session:
        row = session.get(RegistryObjectRow, folder_uuid)
        assert row.last_update_time > "20000101000000"
        assert md.parse_registry_package(md.from_text(row.xml), []).slot("lastUpdateTime") == [row.last_update_time]


def test_entry_uuid_chosen_by_the_source_must_be_new(sessions, settings, patient):
    fixed = xs.new_uuid()
    register(sessions, settings, xs.submission(patient, [xs.DocSpec(entry_uuid=fixed)]))
    with pytest.raises(XdsError) as excinfo:
        register(sessions, settings, xs.submission(patient, [xs.DocSpec(entry_uuid=fixed)]))
    assert error_codes(excinfo) == ["XDSRegistryMetadataError"]


# --- FindDocuments -------------------------------------------------------------------------------


def test_find_documents_is_keyed_by_patient(sessions, settings, patient, query_schema):
    mine = [xs.DocSpec(), xs.DocSpec()]
    register(sessions, settings, xs.submission(patient, mine))
    register(sessions, settings, xs.submission(new_patient(sessions), [xs.DocSpec()]))
    response = run(sessions, settings, xs.find_documents(patient))
    assert query_schema.validate(response), query_schema.error_log
    assert response.get("status") == queries.SUCCESS
    assert kinds(response) == ["ExtrinsicObject", "ExtrinsicObject"]
    assert doc_uids(response) == {d.unique_id for d in mine}
    refs = run(sessions, settings, xs.find_documents(patient, return_type="ObjectRef"))
    assert query_schema.validate(refs)
    assert kinds(refs) == ["ObjectRef", "ObjectRef"]
    assert ref_ids(refs) == {stored_uuid(sessions, d.unique_id) for d in mine}


CODE_PARAMS = [
    ("XDSDocumentEntryClassCode", "class_code", xs.CLASS_IMAGES, xs.CLASS_REPORTS),
    (
        "XDSDocumentEntryTypeCode",
        "type_code",
        xs.TYPE_IMAGING_STUDY,
        xs.Code("11488-4", "2.16.840.1.113883.6.1"),
    ),
    (
        "XDSDocumentEntryPracticeSettingCode",
        "practice_setting_code",
        xs.PRACTICE_RADIOLOGY,
        xs.Code("CARDIOLOGY", "1.3.6.1.4.1.21367.2026.3"),
    ),
    (
        "XDSDocumentEntryHealthcareFacilityTypeCode",
        "healthcare_facility_type_code",
        xs.FACILITY_OUTPATIENT,
        xs.Code("INPATIENT", "2.16.840.1.113883.5.11"),
    ),
    ("XDSDocumentEntryFormatCode", "format_code", xs.FORMAT_KOS, xs.FORMAT_PDF),
]


@pytest.mark.parametrize("param, field, first, second", CODE_PARAMS)
def test_find_documents_single_valued_codes(sessions, settings, patient, param, field, first, second):
    a, b = xs.DocSpec(**{field: first}), xs.DocSpec(**{field: second})
    register(sessions, settings, xs.submission(patient, [a, b]))
    assert find_docs(sessions, settings, patient, **{param: xs.quoted_list([first.key])}) == {a.unique_id}
    both = find_docs(sessions, settings, patient, **{param: xs.quoted_list([first.key, second.key])})
    assert both == {a.unique_id, b.unique_id}
    # several rim:Value elements in one slot are an OR as well
    assert (
        find_docs(
            sessions,
            settings,
            patient,
            **{param: [xs.quoted_list([first.key]), xs.quoted_list([second.key])]},
        )
        == both
    )
    assert find_docs(sessions, settings, patient, **{param: xs.quoted_list([first.code])}) == {a.unique_id}
    assert find_docs(sessions, settings, patient, **{param: xs.quoted_list([f"{first.code}^^9.9"])}) == set()


@pytest.mark.parametrize(
    "param, field, ct, mr",
    [
        ("XDSDocumentEntryEventCodeList", "event_codes", xs.EVENT_CT, xs.EVENT_MR),
        (
            "XDSDocumentEntryConfidentialityCode",
            "confidentiality_codes",
            xs.CONFIDENTIALITY_NORMAL,
            xs.CONFIDENTIALITY_RESTRICTED,
        ),
    ],
)
def test_find_documents_multi_valued_codes_and_or(sessions, settings, patient, param, field, ct, mr):
    only_a, only_b, both = (xs.DocSpec(**{field: c}) for c in ([ct], [mr], [ct, mr]))
    register(sessions, settings, xs.submission(patient, [only_a, only_b, both]))
    name = "$" + param

    def ask(slots: list[tuple[str, str]]) -> set[str]:
        base = [
            ("$XDSDocumentEntryPatientId", xs.quoted(patient)),
            ("$XDSDocumentEntryStatus", xs.quoted_list([xs.APPROVED])),
        ]
        return doc_uids(run(sessions, settings, xs.query(xs.FIND_DOCUMENTS, base + slots)))

    assert ask([(name, xs.quoted_list([ct.key]))]) == {only_a.unique_id, both.unique_id}
    assert ask([(name, xs.quoted_list([ct.key, mr.key]))]) == {
        only_a.unique_id,
        only_b.unique_id,
        both.unique_id,
    }
    assert ask([(name, xs.quoted_list([ct.key])), (name, xs.quoted_list([mr.key]))]) == {both.unique_id}


@pytest.mark.parametrize(
    "stem, field",
    [
        ("CreationTime", "creation_time"),
        ("ServiceStartTime", "service_start_time"),
        ("ServiceStopTime", "service_stop_time"),
    ],
)
def test_find_documents_time_ranges(sessions, settings, patient, stem, field):
    early, late = xs.DocSpec(**{field: "20230615"}), xs.DocSpec(**{field: "20240105103000"})
    register(sessions, settings, xs.submission(patient, [early, late]))
    frm, to = f"XDSDocumentEntry{stem}From", f"XDSDocumentEntry{stem}To"
    assert find_docs(sessions, settings, patient, **{frm: "20240105103000"}) == {late.unique_id}  # inclusive
    assert find_docs(sessions, settings, patient, **{to: "20240105103000"}) == {early.unique_id}  # exclusive
    assert find_docs(sessions, settings, patient, **{frm: "2023", to: "2024"}) == {early.unique_id}
    assert find_docs(sessions, settings, patient, **{frm: "202306", to: "20230615"}) == set()
    assert find_docs(sessions, settings, patient, **{frm: "'2024'"}) == {late.unique_id}  # quoted is fine too
    with pytest.raises(XdsError) as excinfo:
        find_docs(sessions, settings, patient, **{frm: "2024-01-01"})
    assert error_codes(excinfo) == ["XDSRegistryError"] and frm in excinfo.value.items[0].context


def test_find_documents_author_person_like(sessions, settings, patient):
    welby = xs.DocSpec(author_person="^Welby^Marcus^^^Dr^^^&1.2.3&ISO")
    house = xs.DocSpec(author_person="^House^Gregory^^^Dr^^^&1.2.3&ISO")
    register(sessions, settings, xs.submission(patient, [welby, house]))
    assert find_docs(sessions, settings, patient, XDSDocumentEntryAuthorPerson=xs.quoted("%Welby%")) == {
        welby.unique_id
    }
    assert find_docs(sessions, settings, patient, XDSDocumentEntryAuthorPerson=xs.quoted("^_ouse%")) == {
        house.unique_id
    }
    assert find_docs(sessions, settings, patient, XDSDocumentEntryAuthorPerson=xs.quoted("%welby%")) == {
        welby.unique_id
    }  # case-insensitive on every database
    both = find_docs(
        sessions, settings, patient, XDSDocumentEntryAuthorPerson=[xs.quoted("%Welby%"), xs.quoted("%House%")]
    )
    assert both == {welby.unique_id, house.unique_id}
    assert find_docs(sessions, settings, patient, XDSDocumentEntryAuthorPerson=xs.quoted("Welby")) == set()


def test_find_documents_entry_type_defaults_to_stable(sessions, settings, patient):
    stable, on_demand = xs.DocSpec(), xs.DocSpec(on_demand=True)
    register(sessions, settings, xs.submission(patient, [stable, on_demand]))
    assert find_docs(sessions, settings, patient) == {stable.unique_id}
    assert find_docs(sessions, settings, patient, XDSDocumentEntryType=xs.quoted_list([xs.ON_DEMAND])) == {
        on_demand.unique_id
    }
    both = find_docs(sessions, settings, patient, XDSDocumentEntryType=xs.quoted_list([xs.STABLE, xs.ON_DEMAND]))
    assert both == {stable.unique_id, on_demand.unique_id}


@pytest.mark.parametrize("repeat", [1, 2, queries._SLOTS + 1])  # the fixed parameter slots, and beyond them
def test_find_documents_status_lists_of_any_length(sessions, settings, patient, repeat):
    """FindDocuments fills a fixed set of parameters for short status / entry type lists and falls
    back to an expanding IN list for long ones: same answers either way."""
    old, new = xs.DocSpec(), xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [old]))
    register(
        sessions,
        settings,
        xs.submission(
            patient,
            [new],
            extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", stored_uuid(sessions, old.unique_id))],
        ),
    )
    types = xs.quoted_list([xs.STABLE, xs.ON_DEMAND] * repeat)
    assert find_docs(
        sessions, settings, patient, status=[xs.APPROVED, xs.DEPRECATED] * repeat, XDSDocumentEntryType=types
    ) == {
        old.unique_id,
        new.unique_id,
    }
    assert find_docs(sessions, settings, patient, status=[xs.DEPRECATED] * repeat, XDSDocumentEntryType=types) == {
        old.unique_id
    }
    assert find_docs(sessions, settings, patient, status=[xs.APPROVED] * repeat) == {new.unique_id}


def test_find_documents_reference_id_list(sessions, settings, patient):
    ref = "ACC123^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession"
    tagged = xs.DocSpec(reference_ids=[ref])
    register(sessions, settings, xs.submission(patient, [tagged, xs.DocSpec()]))
    by_reference = xs.query(
        xs.FIND_DOCUMENTS_BY_REFERENCE_ID,
        {
            "$XDSDocumentEntryPatientId": xs.quoted(patient),
            "$XDSDocumentEntryStatus": xs.quoted_list([xs.APPROVED]),
            "$XDSDocumentEntryReferenceIdList": xs.quoted_list([ref, "other^^^&1.2.3&ISO"]),
        },
    )
    assert doc_uids(run(sessions, settings, by_reference)) == {tagged.unique_id}
    with pytest.raises(XdsError) as excinfo:  # FindDocuments has no reference parameter
        find_docs(sessions, settings, patient, XDSDocumentEntryReferenceIdList=xs.quoted_list([ref]))
    assert error_codes(excinfo) == ["XDSRegistryError"]
    without = xs.query(
        xs.FIND_DOCUMENTS_BY_REFERENCE_ID,
        {"$XDSDocumentEntryPatientId": xs.quoted(patient), "$XDSDocumentEntryStatus": xs.quoted_list([xs.APPROVED])},
    )
    with pytest.raises(XdsError) as excinfo:  # ... which FindDocumentsByReferenceId requires
        run(sessions, settings, without)
    assert error_codes(excinfo) == ["XDSStoredQueryMissingParam"]


def test_find_documents_follows_patient_merges(sessions, settings):
    prior, surviving = new_patient(sessions), new_patient(sessions)
    doc = xs.DocSpec()
    register(sessions, settings, xs.submission(prior, [doc]))
    with transaction(sessions) as session:
        patients.merge_patients(session, surviving, prior)
    assert find_docs(sessions, settings, surviving) == {doc.unique_id}


@pytest.mark.parametrize(
    "slots, code, names",
    [
        (
            [("$XDSDocumentEntryStatus", "('" + xs.APPROVED + "')")],
            "XDSStoredQueryMissingParam",
            "$XDSDocumentEntryPatientId",
        ),
        (
            [("$XDSDocumentEntryPatientId", "'x^^^&1.2&ISO'")],
            "XDSStoredQueryMissingParam",
            "$XDSDocumentEntryStatus",
        ),
        ([("$XDSDocumentEntryPatientId", "''")], "XDSRegistryError", "$XDSDocumentEntryPatientId"),
        ([("$XDSDocumentEntryPatientId", "x^^^&1.2&ISO")], "XDSRegistryError", "$XDSDocumentEntryPatientId"),
        (
            [("$XDSDocumentEntryPatientId", ["'a'", "'b'"])],
            "XDSStoredQueryParamNumber",
            "$XDSDocumentEntryPatientId",
        ),
        (
            [("$XDSDocumentEntryPatientId", "('a','b')")],
            "XDSStoredQueryParamNumber",
            "$XDSDocumentEntryPatientId",
        ),
        (
            [("$XDSDocumentEntryPatientId", "'a'"), ("$XDSDocumentEntryPatientId", "'a'")],
            "XDSStoredQueryParamNumber",
            "$XDSDocumentEntryPatientId",
        ),
        (
            [("$XDSDocumentEntryPatientId", "'a'"), ("$XDSDocumentEntryClassCode", "('a'")],
            "XDSRegistryError",
            "$XDSDocumentEntryClassCode",
        ),
        (
            [
                ("$XDSDocumentEntryPatientId", "'a'"),
                ("$XDSDocumentEntryStatus", "('a')"),
                ("$Nonsense", "'a'"),
            ],
            "XDSRegistryError",
            "$Nonsense",
        ),
        (
            [("$XDSDocumentEntryPatientId", "'a'"), ("$XDSDocumentEntryType", "('stable')")],
            "XDSRegistryError",
            "$XDSDocumentEntryType",
        ),
    ],
)
def test_find_documents_parameter_errors(sessions, settings, slots, code, names):
    # The required status is added unless the case is about it: each case breaks one thing.
    if names != "$XDSDocumentEntryStatus" and all(n != "$XDSDocumentEntryStatus" for n, _ in slots):
        slots = [*slots, ("$XDSDocumentEntryStatus", xs.quoted_list([xs.APPROVED]))]
    with pytest.raises(XdsError) as excinfo:
        run(sessions, settings, xs.query(xs.FIND_DOCUMENTS, slots))
    assert error_codes(excinfo) == [code]
    assert names in excinfo.value.items[0].context


def test_unknown_stored_query(sessions, settings):
    with pytest.raises(XdsError) as excinfo:
        run(sessions, settings, xs.query("urn:uuid:00000000-0000-0000-0000-000000000000", {}))
    assert error_codes(excinfo) == ["XDSUnknownStoredQuery"]


def test_unsupported_return_type(sessions, settings, patient):
    with pytest.raises(XdsError) as excinfo:
        run(sessions, settings, xs.find_documents(patient, return_type="RegistryObject"))
    assert error_codes(excinfo) == ["XDSRegistryError"]


def test_too_many_results(sessions, settings, patient):
    register(sessions, settings, xs.submission(patient, [xs.DocSpec(), xs.DocSpec()]))
    small = settings.replace(query_max_results=1)
    with pytest.raises(XdsError) as excinfo:
        run(sessions, small, xs.find_documents(patient))
    assert error_codes(excinfo) == ["XDSTooManyResults"]
    assert len(doc_uids(run(sessions, settings.replace(query_max_results=2), xs.find_documents(patient)))) == 2


# --- FindSubmissionSets --------------------------------------------------------------------------


def find_sets(sessions, settings, patient: str, **extra: xs.ParamValue) -> list[etree._Element]:
    params: dict[str, xs.ParamValue] = {
        "$XDSSubmissionSetPatientId": xs.quoted(patient),
        "$XDSSubmissionSetStatus": xs.quoted_list([xs.APPROVED]),
    }
    params.update({f"${k}": v for k, v in extra.items()})
    return listed(run(sessions, settings, xs.query(xs.FIND_SUBMISSION_SETS, params)))


def ss_uids(elements: list[etree._Element]) -> set[str]:
    found = set()
    for e in elements:
        if e.tag == f"{{{md.RIM}}}RegistryPackage":
            found.add(md.parse_registry_package(e, []).external_id(md.SS_UNIQUE_ID))
    return found


def test_find_submission_sets_parameters(sessions, settings, patient, query_schema):
    a, b = xs.new_oid(), xs.new_oid()
    register(
        sessions,
        settings,
        xs.submission(
            patient,
            ss_unique_id=a,
            source_id="1.2.3.1",
            submission_time="20230101",
            ss_author_person="^Edge^One",
        ),
    )
    register(
        sessions,
        settings,
        xs.submission(
            patient,
            ss_unique_id=b,
            source_id="1.2.3.2",
            submission_time="20240101120000",
            ss_author_person="^Edge^Two",
            content_type=xs.Code("OTHER", "1.2.3"),
        ),
    )
    register(sessions, settings, xs.submission(new_patient(sessions)))
    assert ss_uids(find_sets(sessions, settings, patient)) == {a, b}
    assert ss_uids(find_sets(sessions, settings, patient, XDSSubmissionSetSourceId=xs.quoted_list(["1.2.3.2"]))) == {b}
    assert ss_uids(find_sets(sessions, settings, patient, XDSSubmissionSetSubmissionTimeFrom="2024")) == {b}
    assert ss_uids(find_sets(sessions, settings, patient, XDSSubmissionSetSubmissionTimeTo="2024")) == {a}
    assert ss_uids(find_sets(sessions, settings, patient, XDSSubmissionSetAuthorPerson=xs.quoted("%One"))) == {a}
    assert ss_uids(
        find_sets(
            sessions,
            settings,
            patient,
            XDSSubmissionSetContentType=xs.quoted_list([xs.CONTENT_TYPE_IMAGES.key]),
        )
    ) == {a}
    assert find_sets(sessions, settings, patient, XDSSubmissionSetStatus=xs.quoted_list([xs.DEPRECATED])) == []
    request = xs.query(
        xs.FIND_SUBMISSION_SETS,
        {
            "$XDSSubmissionSetPatientId": xs.quoted(patient),
            "$XDSSubmissionSetStatus": xs.quoted_list([xs.APPROVED]),
        },
    )
    assert query_schema.validate(run(sessions, settings, request))
    with pytest.raises(XdsError) as excinfo:  # AuthorPerson is single-valued here
        find_sets(sessions, settings, patient, XDSSubmissionSetAuthorPerson=[xs.quoted("a"), xs.quoted("b")])
    assert error_codes(excinfo) == ["XDSStoredQueryParamNumber"]


def test_find_submission_sets_returns_top_level_classification(sessions, settings, patient):
    register(sessions, settings, xs.submission(patient, top_level_ss_classification=True))
    found = find_sets(sessions, settings, patient)
    assert [etree.QName(e).localname for e in found] == ["RegistryPackage", "Classification"]
    assert found[1].get("classificationNode") == SS_NODE
    assert found[1].get("classifiedObject") == found[0].get("id")


# --- GetAll --------------------------------------------------------------------------------------


def get_all(sessions, settings, patient: str, return_type: str = "LeafClass", **extra: xs.ParamValue):
    params: dict[str, xs.ParamValue] = {
        "$patientId": xs.quoted(patient),
        "$XDSDocumentEntryStatus": xs.quoted_list([xs.APPROVED]),
        "$XDSSubmissionSetStatus": xs.quoted_list([xs.APPROVED]),
        "$XDSFolderStatus": xs.quoted_list([xs.APPROVED]),
    }
    params.update({f"${k}": v for k, v in extra.items()})
    return run(sessions, settings, xs.query(xs.GET_ALL, params, return_type))


def test_get_all_returns_the_patients_whole_graph(sessions, settings, patient, query_schema):
    docs = [xs.DocSpec(), xs.DocSpec(format_code=xs.FORMAT_PDF)]
    register(sessions, settings, xs.submission(patient, docs, folders=[xs.FolderSpec(documents=[0])]))
    register(sessions, settings, xs.submission(new_patient(sessions)))
    response = get_all(sessions, settings, patient)
    assert query_schema.validate(response), query_schema.error_log
    assert sorted(kinds(response)) == ["Association"] * 5 + ["ExtrinsicObject"] * 2 + ["RegistryPackage"] * 2
    refs = get_all(sessions, settings, patient, return_type="ObjectRef")
    assert ref_ids(refs) == {e.get("id") for e in listed(response)}
    pdf_only = get_all(sessions, settings, patient, XDSDocumentEntryFormatCode=xs.quoted_list([xs.FORMAT_PDF.key]))
    assert doc_uids(pdf_only) == {docs[1].unique_id}
    # associations follow the returned objects: SS->pdf only (folder holds the other document)
    assert sorted(kinds(pdf_only)) == [
        "Association",
        "Association",
        "ExtrinsicObject",
        "RegistryPackage",
        "RegistryPackage",
    ]
    restricted = get_all(
        sessions,
        settings,
        patient,
        XDSDocumentEntryConfidentialityCode=xs.quoted_list([xs.CONFIDENTIALITY_RESTRICTED.key]),
    )
    assert doc_uids(restricted) == set()
    no_folders = get_all(sessions, settings, patient, XDSFolderStatus=xs.quoted_list([xs.DEPRECATED]))
    assert kinds(no_folders).count("RegistryPackage") == 1


def test_get_all_entry_type_and_required_parameters(sessions, settings, patient):
    od = xs.DocSpec(on_demand=True)
    register(sessions, settings, xs.submission(patient, [od]))
    assert doc_uids(get_all(sessions, settings, patient)) == set()
    assert doc_uids(get_all(sessions, settings, patient, XDSDocumentEntryType=xs.quoted_list([xs.ON_DEMAND]))) == {
        od.unique_id
    }
    with pytest.raises(XdsError) as excinfo:
        run(sessions, settings, xs.query(xs.GET_ALL, {"$patientId": xs.quoted(patient)}))
    assert error_codes(excinfo) == ["XDSStoredQueryMissingParam"]


# --- GetDocuments --------------------------------------------------------------------------------


def get_documents(sessions, settings, **params: xs.ParamValue) -> etree._Element:
    return run(sessions, settings, xs.query(xs.GET_DOCUMENTS, {f"${k}": v for k, v in params.items()}))


def test_get_documents_by_uuid_and_unique_id(sessions, settings, patient, query_schema):
    a, b = xs.DocSpec(entry_uuid=xs.new_uuid()), xs.DocSpec(entry_uuid=xs.new_uuid())
    register(sessions, settings, xs.submission(patient, [a, b]))
    response = get_documents(sessions, settings, XDSDocumentEntryEntryUUID=xs.quoted_list([a.entry_uuid]))
    assert query_schema.validate(response)
    assert doc_uids(response) == {a.unique_id}
    both = get_documents(
        sessions,
        settings,
        XDSDocumentEntryUniqueId=xs.quoted_list([a.unique_id, b.unique_id]),
        homeCommunityId=xs.quoted(settings.home_community_id),
    )
    assert doc_uids(both) == {a.unique_id, b.unique_id}
    assert (
        doc_uids(get_documents(sessions, settings, XDSDocumentEntryEntryUUID=xs.quoted_list([xs.new_uuid()]))) == set()
    )


def test_get_documents_returns_every_copy_and_every_status(sessions, settings, patient):
    spec = xs.DocSpec()
    register(sessions, settings, xs.submission(patient, [spec]))
    register(sessions, settings, xs.submission(patient, [xs.DocSpec(unique_id=spec.unique_id)]))
    response = get_documents(sessions, settings, XDSDocumentEntryUniqueId=xs.quoted_list([spec.unique_id]))
    assert kinds(response) == ["ExtrinsicObject", "ExtrinsicObject"]


def test_get_documents_privacy(sessions, settings, patient):
    """Exact identifiers only, a bounded number of them, and never two patients in one answer."""
    mine, theirs = xs.DocSpec(entry_uuid=xs.new_uuid()), xs.DocSpec(entry_uuid=xs.new_uuid())
    register(sessions, settings, xs.submission(patient, [mine]))
    register(sessions, settings, xs.submission(new_patient(sessions), [theirs]))
    with pytest.raises(XdsError) as excinfo:
        get_documents(
            sessions, settings, XDSDocumentEntryEntryUUID=xs.quoted_list([mine.entry_uuid, theirs.entry_uuid])
        )
    assert error_codes(excinfo) == ["XDSResultNotSinglePatient"]
    with pytest.raises(XdsError) as excinfo:  # a wildcard is not a UUID
        get_documents(sessions, settings, XDSDocumentEntryEntryUUID=xs.quoted_list(["urn:uuid:%"]))
    assert error_codes(excinfo) == ["XDSRegistryError"]
    assert doc_uids(get_documents(sessions, settings, XDSDocumentEntryUniqueId=xs.quoted_list(["%"]))) == set()
    with pytest.raises(XdsError) as excinfo:
        get_documents(sessions, settings, XDSDocumentEntryUniqueId=xs.quoted_list([""]))
    assert error_codes(excinfo) == ["XDSRegistryError"]
    many = xs.quoted_list([xs.new_uuid() for _ in range(3)])
    with pytest.raises(XdsError) as excinfo:
        get_documents(sessions, settings.replace(query_max_results=2), XDSDocumentEntryEntryUUID=many)
    assert error_codes(excinfo) == ["XDSTooManyResults"]


def test_get_documents_parameter_rules(sessions, settings):
    uid = xs.quoted_list(["1.2.3"])
    ids = xs.quoted_list(["urn:uuid:x"])  # malformed too, but the parameter count is checked first
    with pytest.raises(XdsError) as excinfo:
        get_documents(sessions, settings, XDSDocumentEntryEntryUUID=ids, XDSDocumentEntryUniqueId=uid)
    assert error_codes(excinfo) == ["XDSStoredQueryParamNumber"]
    with pytest.raises(XdsError) as excinfo:
        get_documents(sessions, settings, homeCommunityId=xs.quoted(settings.home_community_id))
    assert error_codes(excinfo) == ["XDSStoredQueryMissingParam"]
    with pytest.raises(XdsError) as excinfo:
        get_documents(sessions, settings, XDSDocumentEntryUniqueId=uid, homeCommunityId=xs.quoted("urn:oid:9.9"))
    assert error_codes(excinfo) == ["XDSUnknownCommunity"]


# --- GetSubmissionSetAndContents -----------------------------------------------------------------


def ss_contents(sessions, settings, return_type: str = "LeafClass", **params: xs.ParamValue) -> etree._Element:
    request = xs.query(xs.GET_SUBMISSION_SET_AND_CONTENTS, {f"${k}": v for k, v in params.items()}, return_type)
    return run(sessions, settings, request)


def test_get_submission_set_and_contents(sessions, settings, patient, query_schema):
    ss_uuid, ss_uid = xs.new_uuid(), xs.new_oid()
    docs = [xs.DocSpec(), xs.DocSpec(format_code=xs.FORMAT_PDF)]
    register(
        sessions,
        settings,
        xs.submission(
            patient,
            docs,
            folders=[xs.FolderSpec(documents=[0])],
            ss_entry_uuid=ss_uuid,
            ss_unique_id=ss_uid,
            top_level_ss_classification=True,
        ),
    )
    register(sessions, settings, xs.submission(patient))  # another submission of the same patient
    by_uuid = ss_contents(sessions, settings, XDSSubmissionSetEntryUUID=xs.quoted(ss_uuid))
    assert query_schema.validate(by_uuid), query_schema.error_log
    assert sorted(kinds(by_uuid)) == (
        ["Association"] * 5 + ["Classification"] + ["ExtrinsicObject"] * 2 + ["RegistryPackage"] * 2
    )
    assert doc_uids(by_uuid) == {d.unique_id for d in docs}
    by_uid = ss_contents(sessions, settings, "ObjectRef", XDSSubmissionSetUniqueId=xs.quoted(ss_uid))
    assert ref_ids(by_uid) == {e.get("id") for e in listed(by_uuid) if etree.QName(e).localname != "Classification"}
    pdf = ss_contents(
        sessions,
        settings,
        XDSSubmissionSetEntryUUID=xs.quoted(ss_uuid),
        XDSDocumentEntryFormatCode=xs.quoted_list([xs.FORMAT_PDF.key]),
    )
    # the folder stays, the KOS document and the associations that lead to it go
    assert doc_uids(pdf) == {docs[1].unique_id}
    assert sorted(kinds(pdf)) == [
        "Association",
        "Association",
        "Classification",
        "ExtrinsicObject",
        "RegistryPackage",
        "RegistryPackage",
    ]
    normal = ss_contents(
        sessions,
        settings,
        XDSSubmissionSetEntryUUID=xs.quoted(ss_uuid),
        XDSDocumentEntryConfidentialityCode=xs.quoted_list([xs.CONFIDENTIALITY_NORMAL.key]),
    )
    assert doc_uids(normal) == {d.unique_id for d in docs}


def test_get_submission_set_and_contents_parameters(sessions, settings, patient):
    assert listed(ss_contents(sessions, settings, XDSSubmissionSetEntryUUID=xs.quoted(xs.new_uuid()))) == []
    with pytest.raises(XdsError) as excinfo:
        ss_contents(
            sessions,
            settings,
            XDSSubmissionSetEntryUUID=xs.quoted(xs.new_uuid()),
            XDSSubmissionSetUniqueId=xs.quoted("1.2.3"),
        )
    assert error_codes(excinfo) == ["XDSStoredQueryParamNumber"]
    with pytest.raises(XdsError) as excinfo:
        ss_contents(sessions, settings)
    assert error_codes(excinfo) == ["XDSStoredQueryMissingParam"]
    od = xs.DocSpec(on_demand=True)
    ss_uuid = xs.new_uuid()
    register(sessions, settings, xs.submission(patient, [od], ss_entry_uuid=ss_uuid))
    assert doc_uids(ss_contents(sessions, settings, XDSSubmissionSetEntryUUID=xs.quoted(ss_uuid))) == set()
    assert doc_uids(
        ss_contents(
            sessions,
            settings,
            XDSSubmissionSetEntryUUID=xs.quoted(ss_uuid),
            XDSDocumentEntryType=xs.quoted_list([xs.ON_DEMAND]),
        )
    ) == {od.unique_id}
