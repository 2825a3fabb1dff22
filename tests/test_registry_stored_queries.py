"""The ITI-18 stored queries beyond FindDocuments/FindSubmissionSets/GetAll/GetDocuments/
GetSubmissionSetAndContents (those are in test_registry_queries.py): FindFolders,
FindDocumentsByReferenceId, GetFolders, GetAssociations, GetDocumentsAndAssociations,
GetSubmissionSets, GetFolderAndContents, GetFoldersForDocument, GetRelatedDocuments, and the
parameter rules every stored query shares. On a real database, every backend."""

from __future__ import annotations

import pytest
from lxml import etree

from clearinghouse.db import transaction
from clearinghouse.errors import XdsError
from registry import patients, query_params
from tests import xds_samples as xs
from tests.registry_db import (
    SCHEMAS,
    association_uuid,
    codes,
    doc_uids,
    ids_of,
    kinds,
    new_patient,
    register,
    row,
    run,
    update,
    uuid_of,
)

pytest_plugins = ("tests.registry_db",)


@pytest.fixture(scope="module")
def query_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "query.xsd")))


def q(sessions, settings, query_id: str, return_type: str = "LeafClass", **params: xs.ParamValue) -> etree._Element:
    return run(sessions, settings, xs.query(query_id, {f"${k}": v for k, v in params.items()}, return_type))


def failing(sessions, settings, query_id: str, **params: xs.ParamValue) -> list[str]:
    with pytest.raises(XdsError) as excinfo:
        q(sessions, settings, query_id, **params)
    return codes(excinfo)


@pytest.fixture
def graph(sessions, settings, patient):
    """One patient's submission: two documents (KOS, PDF) of which the first in a folder, and a later
    replacement of the PDF."""
    docs = [xs.DocSpec(), xs.DocSpec(format_code=xs.FORMAT_PDF, confidentiality_codes=[xs.CONFIDENTIALITY_RESTRICTED])]
    folder = xs.FolderSpec(documents=[0])
    register(sessions, settings, xs.submission(patient, docs, folders=[folder], top_level_ss_classification=True))
    kos, pdf = (uuid_of(sessions, d.unique_id) for d in docs)
    folder_uuid = uuid_of(sessions, folder.unique_id, "Folder")
    replacement = xs.DocSpec(format_code=xs.FORMAT_PDF)
    register(
        sessions,
        settings,
        xs.submission(patient, [replacement], extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", pdf)]),
    )
    return {
        "patient": patient,
        "docs": docs,
        "kos": kos,
        "pdf": pdf,
        "folder": folder,
        "folder_uuid": folder_uuid,
        "ss": row(sessions, kos).submission_set_uuid,
        "replacement": replacement,
        "replacement_uuid": uuid_of(sessions, replacement.unique_id),
    }


# --- FindFolders ---------------------------------------------------------------------------------


def test_find_folders(sessions, settings, patient, query_schema):
    study = xs.FolderSpec(codes=[xs.FOLDER_CODE, xs.EVENT_CT])
    other = xs.FolderSpec(codes=[xs.EVENT_MR])
    register(sessions, settings, xs.submission(patient, [xs.DocSpec()], folders=[study, other]))
    approved = xs.quoted_list([xs.APPROVED])
    found = q(sessions, settings, xs.FIND_FOLDERS, XDSFolderPatientId=xs.quoted(patient), XDSFolderStatus=approved)
    assert query_schema.validate(found), query_schema.error_log
    assert kinds(found) == ["RegistryPackage", "RegistryPackage"]
    uids = {f.unique_id for f in (study, other)}
    assert {e.get("value") for e in found.iter(f"{{{xs.RIM}}}ExternalIdentifier")} >= uids

    def folders(**extra: xs.ParamValue) -> set[str]:
        request = xs.query(
            xs.FIND_FOLDERS,
            [("$XDSFolderPatientId", xs.quoted(patient)), ("$XDSFolderStatus", approved), *extra.get("pairs", [])],
            "ObjectRef",
        )
        return ids_of(run(sessions, settings, request))

    study_uuid, other_uuid = uuid_of(sessions, study.unique_id, "Folder"), uuid_of(sessions, other.unique_id, "Folder")
    codes_or = ("$XDSFolderCodeList", xs.quoted_list([xs.EVENT_CT.key, xs.EVENT_MR.key]))
    assert folders(pairs=[codes_or]) == {study_uuid, other_uuid}
    both = [
        ("$XDSFolderCodeList", xs.quoted_list([xs.FOLDER_CODE.key])),
        ("$XDSFolderCodeList", xs.quoted_list([xs.EVENT_CT.key])),
    ]
    assert folders(pairs=both) == {study_uuid}  # AND across slots
    stamp = row(sessions, study_uuid).last_update_time
    assert folders(pairs=[("$XDSFolderLastUpdateTimeFrom", stamp)]) == {study_uuid, other_uuid}
    assert folders(pairs=[("$XDSFolderLastUpdateTimeTo", stamp)]) == set()  # To is exclusive
    assert failing(sessions, settings, xs.FIND_FOLDERS, XDSFolderStatus=approved) == ["XDSStoredQueryMissingParam"]
    # A merged-away patient's folders are found under the surviving identifier.
    surviving = new_patient(sessions)
    with transaction(sessions) as session:
        patients.merge_patients(session, surviving, patient)
    merged = q(
        sessions,
        settings,
        xs.FIND_FOLDERS,
        "ObjectRef",
        XDSFolderPatientId=xs.quoted(surviving),
        XDSFolderStatus=approved,
    )
    assert ids_of(merged) == {study_uuid, other_uuid}


def test_find_documents_by_reference_id_takes_every_find_documents_filter(sessions, settings, patient):
    ref = "ORDER-1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:order"
    ct = xs.DocSpec(reference_ids=[ref], event_codes=[xs.EVENT_CT])
    mr = xs.DocSpec(reference_ids=[ref], event_codes=[xs.EVENT_MR])
    register(sessions, settings, xs.submission(patient, [ct, mr, xs.DocSpec()]))
    found = q(
        sessions,
        settings,
        xs.FIND_DOCUMENTS_BY_REFERENCE_ID,
        XDSDocumentEntryPatientId=xs.quoted(patient),
        XDSDocumentEntryStatus=xs.quoted_list([xs.APPROVED]),
        XDSDocumentEntryReferenceIdList=xs.quoted_list([ref]),
        XDSDocumentEntryEventCodeList=xs.quoted_list([xs.EVENT_MR.key]),
    )
    assert doc_uids(found) == {mr.unique_id}


# --- Get queries by identifier -------------------------------------------------------------------


def test_get_folders(sessions, settings, graph, query_schema):
    uuid, uid = graph["folder_uuid"], graph["folder"].unique_id
    by_uuid = q(sessions, settings, xs.GET_FOLDERS, XDSFolderEntryUUID=xs.quoted_list([uuid]))
    assert query_schema.validate(by_uuid), query_schema.error_log
    assert ids_of(by_uuid, "RegistryPackage") == {uuid} and kinds(by_uuid) == ["RegistryPackage"]
    assert ids_of(q(sessions, settings, xs.GET_FOLDERS, "ObjectRef", XDSFolderUniqueId=xs.quoted_list([uid]))) == {uuid}
    assert ids_of(q(sessions, settings, xs.GET_FOLDERS, "ObjectRef", XDSFolderLogicalID=xs.quoted_list([uuid]))) == {
        uuid
    }
    assert ids_of(q(sessions, settings, xs.GET_FOLDERS, XDSFolderEntryUUID=xs.quoted_list([graph["kos"]]))) == set()
    two = xs.quoted_list([uuid])
    assert failing(
        sessions, settings, xs.GET_FOLDERS, XDSFolderEntryUUID=two, XDSFolderUniqueId=xs.quoted_list([uid])
    ) == ["XDSStoredQueryParamNumber"]
    assert failing(sessions, settings, xs.GET_FOLDERS, homeCommunityId=xs.quoted(settings.home_community_id)) == [
        "XDSStoredQueryMissingParam"
    ]
    assert failing(
        sessions, settings, xs.GET_FOLDERS, XDSFolderEntryUUID=two, homeCommunityId=xs.quoted("urn:oid:1.9")
    ) == ["XDSUnknownCommunity"]


def test_get_queries_never_span_two_patients(sessions, settings, graph):
    other = new_patient(sessions)
    theirs = xs.FolderSpec(documents=[0])
    register(sessions, settings, xs.submission(other, [xs.DocSpec()], folders=[theirs]))
    both = xs.quoted_list([graph["folder_uuid"], uuid_of(sessions, theirs.unique_id, "Folder")])
    assert failing(sessions, settings, xs.GET_FOLDERS, XDSFolderEntryUUID=both) == ["XDSResultNotSinglePatient"]
    assert failing(sessions, settings, xs.GET_ASSOCIATIONS, uuid=both) == ["XDSResultNotSinglePatient"]
    assert failing(sessions, settings, xs.GET_SUBMISSION_SETS, uuid=both) == ["XDSResultNotSinglePatient"]
    many = xs.quoted_list([xs.new_uuid() for _ in range(3)])
    small = settings.replace(query_max_results=2)
    with pytest.raises(XdsError) as excinfo:
        run(sessions, small, xs.query(xs.GET_ASSOCIATIONS, {"$uuid": many}))
    assert codes(excinfo) == ["XDSTooManyResults"]


def test_get_associations(sessions, settings, graph, query_schema):
    found = q(sessions, settings, xs.GET_ASSOCIATIONS, uuid=xs.quoted_list([graph["pdf"]]))
    assert query_schema.validate(found), query_schema.error_log
    [object_list] = found
    ends = {(a.get("sourceObject"), a.get("targetObject"), a.get("associationType")) for a in object_list}
    assert ends == {
        (graph["ss"], graph["pdf"], xs.HAS_MEMBER),
        (graph["replacement_uuid"], graph["pdf"], xs.RPLC),
    }
    membership = association_uuid(sessions, graph["folder_uuid"], graph["kos"])
    update(sessions, settings, xs.status_update(graph["patient"], membership, xs.APPROVED, xs.DEPRECATED))
    current = q(sessions, settings, xs.GET_ASSOCIATIONS, "ObjectRef", uuid=xs.quoted_list([graph["folder_uuid"]]))
    assert membership not in ids_of(current)
    deprecated = q(
        sessions,
        settings,
        xs.GET_ASSOCIATIONS,
        "ObjectRef",
        uuid=xs.quoted_list([graph["folder_uuid"]]),
        XDSAssociationStatus=xs.quoted_list([xs.DEPRECATED]),
    )
    assert ids_of(deprecated) == {membership}


def test_get_documents_and_associations(sessions, settings, graph, query_schema):
    found = q(
        sessions,
        settings,
        xs.GET_DOCUMENTS_AND_ASSOCIATIONS,
        XDSDocumentEntryUniqueId=xs.quoted_list([graph["docs"][0].unique_id]),
    )
    assert query_schema.validate(found), query_schema.error_log
    assert doc_uids(found) == {graph["docs"][0].unique_id}
    assert kinds(found).count("Association") == 2  # from the SubmissionSet and from the Folder


def test_get_submission_sets(sessions, settings, graph, query_schema):
    found = q(sessions, settings, xs.GET_SUBMISSION_SETS, uuid=xs.quoted_list([graph["kos"], graph["folder_uuid"]]))
    assert query_schema.validate(found), query_schema.error_log
    assert ids_of(found, "RegistryPackage") == {graph["ss"]}
    assert kinds(found).count("Association") == 2 and "Classification" in kinds(found)
    later = q(sessions, settings, xs.GET_SUBMISSION_SETS, "ObjectRef", uuid=xs.quoted_list([graph["replacement_uuid"]]))
    assert graph["ss"] not in ids_of(later) and len(ids_of(later)) == 2


def test_get_folder_and_contents(sessions, settings, graph, query_schema):
    folder, kos = graph["folder_uuid"], graph["kos"]
    found = q(sessions, settings, xs.GET_FOLDER_AND_CONTENTS, XDSFolderEntryUUID=xs.quoted(folder))
    assert query_schema.validate(found), query_schema.error_log
    assert kinds(found) == ["Association", "ExtrinsicObject", "RegistryPackage"]
    by_uid = q(
        sessions,
        settings,
        xs.GET_FOLDER_AND_CONTENTS,
        "ObjectRef",
        XDSFolderUniqueId=xs.quoted(graph["folder"].unique_id),
    )
    assert ids_of(by_uid) == {folder, kos, association_uuid(sessions, folder, kos)}
    pdf_only = q(
        sessions,
        settings,
        xs.GET_FOLDER_AND_CONTENTS,
        "ObjectRef",
        XDSFolderEntryUUID=xs.quoted(folder),
        XDSDocumentEntryFormatCode=xs.quoted_list([xs.FORMAT_PDF.key]),
    )
    assert ids_of(pdf_only) == {folder}
    assert (
        ids_of(q(sessions, settings, xs.GET_FOLDER_AND_CONTENTS, XDSFolderEntryUUID=xs.quoted(xs.new_uuid()))) == set()
    )


def test_get_folders_for_document(sessions, settings, graph, query_schema):
    found = q(sessions, settings, xs.GET_FOLDERS_FOR_DOCUMENT, XDSDocumentEntryEntryUUID=xs.quoted(graph["kos"]))
    assert query_schema.validate(found), query_schema.error_log
    assert ids_of(found, "RegistryPackage") == {graph["folder_uuid"]} and "Association" not in kinds(found)
    by_uid = q(
        sessions,
        settings,
        xs.GET_FOLDERS_FOR_DOCUMENT,
        "ObjectRef",
        XDSDocumentEntryUniqueId=xs.quoted(graph["docs"][0].unique_id),
    )
    assert ids_of(by_uid) == {graph["folder_uuid"]}
    assert (
        ids_of(q(sessions, settings, xs.GET_FOLDERS_FOR_DOCUMENT, XDSDocumentEntryEntryUUID=xs.quoted(graph["pdf"])))
        == set()
    )


def test_get_related_documents(sessions, settings, graph, query_schema):
    rplc = xs.quoted_list([xs.RPLC])
    found = q(
        sessions,
        settings,
        xs.GET_RELATED_DOCUMENTS,
        XDSDocumentEntryEntryUUID=xs.quoted(graph["pdf"]),
        AssociationTypes=rplc,
    )
    assert query_schema.validate(found), query_schema.error_log
    assert doc_uids(found) == {graph["docs"][1].unique_id, graph["replacement"].unique_id}
    assert kinds(found).count("Association") == 1
    from_new = q(
        sessions,
        settings,
        xs.GET_RELATED_DOCUMENTS,
        "ObjectRef",
        XDSDocumentEntryUniqueId=xs.quoted(graph["replacement"].unique_id),
        AssociationTypes=rplc,
    )
    assert graph["pdf"] in ids_of(from_new)
    other_type = q(
        sessions,
        settings,
        xs.GET_RELATED_DOCUMENTS,
        XDSDocumentEntryEntryUUID=xs.quoted(graph["pdf"]),
        AssociationTypes=xs.quoted_list([xs.APND]),
    )
    assert ids_of(other_type) == set()
    unrelated = q(
        sessions,
        settings,
        xs.GET_RELATED_DOCUMENTS,
        XDSDocumentEntryEntryUUID=xs.quoted(graph["kos"]),
        AssociationTypes=rplc,
    )
    assert ids_of(unrelated) == set()
    assert failing(sessions, settings, xs.GET_RELATED_DOCUMENTS, XDSDocumentEntryEntryUUID=xs.quoted(graph["pdf"])) == [
        "XDSStoredQueryMissingParam"
    ]
    assert failing(
        sessions,
        settings,
        xs.GET_RELATED_DOCUMENTS,
        XDSDocumentEntryEntryUUID=xs.quoted(graph["pdf"]),
        AssociationTypes=xs.quoted_list(["urn:example:Likes"]),
    ) == ["XDSRegistryError"]


# --- parameter rules shared by every stored query ------------------------------------------------


def _valid_params(spec: query_params.QuerySpec) -> dict[str, str]:
    """Well-formed values for the required parameters and the first alternative."""
    sample = {
        query_params.STATUS: xs.quoted_list([xs.APPROVED]),
        query_params.UUID: xs.quoted(xs.new_uuid()),
        query_params.ASSOCIATION_TYPE: xs.quoted_list([xs.HAS_MEMBER]),
        query_params.STRING: xs.quoted("1.2.3"),
    }
    params = {p.name: sample[p.kind] for p in spec.params if p.required}
    if spec.one_of:
        first = spec.param(spec.one_of[0])
        params[first.name] = xs.quoted_list([xs.new_uuid()]) if first.multiple else xs.quoted(xs.new_uuid())
    return params


@pytest.mark.parametrize("spec", list(query_params.QUERIES.values()), ids=lambda s: s.name)
def test_every_query_checks_its_parameter_set(sessions, settings, spec):
    params = _valid_params(spec)
    run(sessions, settings, xs.query(spec.id, params))  # well-formed: answers, possibly empty
    for name in [p.name for p in spec.params if p.required] + list(spec.one_of[:1]):
        missing = {k: v for k, v in params.items() if k != name}
        with pytest.raises(XdsError) as excinfo:
            run(sessions, settings, xs.query(spec.id, missing))
        assert codes(excinfo) == ["XDSStoredQueryMissingParam"] and name in str(excinfo.value)
    with pytest.raises(XdsError) as excinfo:
        run(sessions, settings, xs.query(spec.id, {**params, "$Bogus": "'x'"}))
    assert codes(excinfo) == ["XDSRegistryError"]
    for level, code in (("1", None), ("2", None), ("3", "XDSRegistryError")):
        request = xs.query(spec.id, {**params, "$MetadataLevel": level})
        if spec.param("$MetadataLevel") is None:
            code = "XDSRegistryError"
        if code is None:
            run(sessions, settings, request)
        else:
            with pytest.raises(XdsError) as excinfo:
                run(sessions, settings, request)
            assert codes(excinfo) == [code]
