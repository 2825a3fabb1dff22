"""The registry over real TLS sockets: ITI-57 Update Document Set and ITI-62 Delete Document Set
by the source that submitted the objects (through the repository or directly), refusals by role
and by ownership, every registry message checked against the official OASIS ebRIM/ebRS 3.0
schemas, and XDSRegistryBusy when a write cannot get its lock."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import edge
import pytest
from conftest import running_instance
from lxml import etree
from sqlalchemy import text

from clearinghouse.soap.client import SoapFault
from clearinghouse.xmlsafe import NS
from registry import query_params
from tests import xds_samples as xs

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "ebRS"
ITI42 = "urn:ihe:iti:2007:RegisterDocumentSet-b"
ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
ITI62 = "urn:ihe:iti:2010:DeleteDocumentSet"
RIM = NS["rim"]
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"


@pytest.fixture(scope="module")
def schemas() -> dict[str, etree.XMLSchema]:
    return {name: etree.XMLSchema(etree.parse(str(SCHEMAS / f"{name}.xsd"))) for name in ("lcm", "rs", "query")}


def valid(schema: etree.XMLSchema, element: etree._Element) -> bool:
    ok = schema.validate(copy.deepcopy(element))
    assert ok, schema.error_log
    return ok


def _patient(clearinghouse) -> str:
    patient = edge.patient_for(edge.new_access_code(), "19810203")
    client = clearinghouse.feed_client()
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()
    return patient


def _entries(reply) -> list[etree._Element]:  # noqa: ANN001
    return list(reply.body.iter(f"{{{RIM}}}ExtrinsicObject"))


def _unique_id(entry: etree._Element) -> str:
    return next(
        e.get("value")
        for e in entry.iter(f"{{{RIM}}}ExternalIdentifier")
        if e.get("identificationScheme") == DE_UNIQUE_ID
    )


def as_new_version(entry: etree._Element, title: str) -> etree._Element:
    """What a Document Administrator sends: the registered entry with a new (symbolic) id, the same
    lid, new ids for its parts, and the change."""
    version = copy.deepcopy(entry)
    version.set("id", "NewVersion")
    for attr in ("status", "home"):
        version.attrib.pop(attr, None)
    for n, part in enumerate(version.iter(f"{{{RIM}}}Classification", f"{{{RIM}}}ExternalIdentifier")):
        part.set("id", f"part{n}")
        part.set("classifiedObject" if part.tag.endswith("Classification") else "registryObject", "NewVersion")
    version.find(f"{{{RIM}}}Name/{{{RIM}}}LocalizedString").set("value", title)
    return version


def update_request(patient: str, entry: etree._Element, previous: str, title: str) -> etree._Element:
    request = xs.submission(patient, [])
    object_list = request.find(f"{{{RIM}}}RegistryObjectList")
    object_list.append(as_new_version(entry, title))
    member = etree.SubElement(
        object_list,
        f"{{{RIM}}}Association",
        id="NewVersionMembership",
        associationType=xs.HAS_MEMBER,
        sourceObject="SubmissionSet01",
        targetObject="NewVersion",
    )
    for name, value in (("SubmissionSetStatus", "Original"), ("PreviousVersion", previous)):
        slot = etree.SubElement(member, f"{{{RIM}}}Slot", name=name)
        etree.SubElement(etree.SubElement(slot, f"{{{RIM}}}ValueList"), f"{{{RIM}}}Value").text = value
    return request


def test_the_submitting_edge_updates_and_removes_its_documents(clearinghouse, schemas):
    patient = _patient(clearinghouse)
    study = edge.study(patient, samples=["CT_small.dcm"])
    assert edge.submit(clearinghouse.soap("edge", "/xds/repository"), study).body.get("status") == edge.SUCCESS
    phr = clearinghouse.soap("phr", "/xds/registry")
    report = next(e for e in _entries(edge.find_documents(phr, patient)) if e.get("mimeType") == "text/plain")
    lid = report.get("lid")

    # The edge sent ITI-41 to the repository; the registry recorded the edge, not the repository,
    # as the owner, so the edge may issue ITI-57 for it.
    request = update_request(patient, report, "1", "Report (addendum corrected)")
    assert valid(schemas["lcm"], request)
    reply = clearinghouse.soap("edge", "/xds/registry").call(ITI57, request)
    assert reply.action == ITI57 + "Response"
    assert valid(schemas["rs"], reply.body) and reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    versions = phr.call(edge.ITI18, xs.query(xs.GET_DOCUMENTS, {"$XDSDocumentEntryLogicalID": xs.quoted_list([lid])}))
    assert valid(schemas["query"], versions.body)
    by_status = {e.get("status"): e for e in _entries(versions)}
    assert set(by_status) == {xs.APPROVED, xs.DEPRECATED}
    current = by_status[xs.APPROVED]
    assert current.find(f"{{{RIM}}}VersionInfo").get("versionName") == "2"
    assert current.find(f"{{{RIM}}}Name/{{{RIM}}}LocalizedString").get("value") == "Report (addendum corrected)"

    # Another source may not touch it; a consumer may not even try.
    intruder = clearinghouse.identities.get("edge-b") or clearinghouse.add_identity("edge-b", ["source"])
    assert intruder.name == "edge-b"
    deprecate = xs.status_update(patient, current.get("id"), xs.APPROVED, xs.DEPRECATED)
    refused = clearinghouse.soap("edge-b", "/xds/registry").call(ITI57, deprecate)
    assert valid(schemas["rs"], refused.body)
    assert [c for c, _ in edge.errors_of(refused.body)] == ["XDSMetadataUpdateError"]
    with pytest.raises(SoapFault) as excinfo:
        clearinghouse.soap("phr", "/xds/registry").call(ITI57, deprecate)
    assert excinfo.value.code == "Sender"
    assert clearinghouse.soap("edge", "/xds/registry").call(ITI57, deprecate).body.get("status") == edge.SUCCESS
    assert _entries(edge.find_documents(phr, patient)) and all(
        _unique_id(e) != _unique_id(report) for e in _entries(edge.find_documents(phr, patient))
    )

    # ITI-62: the edge removes its whole first submission (SubmissionSet, entries, memberships).
    sets = phr.call(edge.ITI18, xs.query(xs.GET_SUBMISSION_SETS, {"$uuid": xs.quoted_list([report.get("id")])}))
    [first_ss] = [p.get("id") for p in sets.body.iter(f"{{{RIM}}}RegistryPackage")]
    contents = phr.call(
        edge.ITI18,
        xs.query(xs.GET_SUBMISSION_SET_AND_CONTENTS, {"$XDSSubmissionSetEntryUUID": xs.quoted(first_ss)}, "ObjectRef"),
    )
    ids = [r.get("id") for r in contents.body.iter(f"{{{RIM}}}ObjectRef")]
    assert len(ids) == 5  # the SubmissionSet, the image, the first version of the report, two memberships
    removal = xs.remove_request(ids)
    assert valid(schemas["lcm"], removal)
    refused = clearinghouse.soap("edge-b", "/xds/registry").call(ITI62, removal)
    assert {c for c, _ in edge.errors_of(refused.body)} == {"XDSRegistryError"}
    reply = clearinghouse.soap("edge", "/xds/registry").call(ITI62, removal)
    assert reply.action == ITI62 + "Response"
    assert valid(schemas["rs"], reply.body) and reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    left = phr.call(edge.ITI18, xs.query(xs.GET_DOCUMENTS, {"$XDSDocumentEntryLogicalID": xs.quoted_list([lid])}))
    assert [e.get("status") for e in _entries(left)] == [xs.DEPRECATED]  # the second version stays


def test_remove_a_submission_over_soap(clearinghouse, schemas):
    patient = _patient(clearinghouse)
    request = xs.submission(patient, [xs.DocSpec()], ss_entry_uuid=xs.new_uuid())
    ss_uuid = xs.submission_set_id(request)
    assert valid(schemas["lcm"], request)
    reply = clearinghouse.soap("edge", "/xds/registry").call(ITI42, request)
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    assert reply.action == ITI42 + "Response" and valid(schemas["rs"], reply.body)
    phr = clearinghouse.soap("phr", "/xds/registry")
    contents = xs.query(
        xs.GET_SUBMISSION_SET_AND_CONTENTS, {"$XDSSubmissionSetEntryUUID": xs.quoted(ss_uuid)}, "ObjectRef"
    )
    ids = [r.get("id") for r in phr.call(edge.ITI18, contents).body.iter(f"{{{RIM}}}ObjectRef")]
    assert len(ids) == 3
    partial = clearinghouse.soap("edge", "/xds/registry").call(ITI62, xs.remove_request(ids[:1]))
    assert valid(schemas["rs"], partial.body)
    assert [c for c, _ in edge.errors_of(partial.body)] == ["ReferencesExistException"]
    done = clearinghouse.soap("edge", "/xds/registry").call(ITI62, xs.remove_request(ids))
    assert done.body.get("status") == edge.SUCCESS, edge.errors_of(done.body)
    assert list(phr.call(edge.ITI18, contents).body.iter(f"{{{RIM}}}ObjectRef")) == []


def test_a_submitter_slot_from_a_participant_is_ignored(clearinghouse):
    patient = _patient(clearinghouse)
    owner = clearinghouse.identities.get("edge-b") or clearinghouse.add_identity("edge-b", ["source"])
    request = xs.submission(patient, [xs.DocSpec()])
    ss = xs.find(request, "RegistryPackage", "SubmissionSet01")
    slot = etree.Element(f"{{{RIM}}}Slot", name="urn:isn:clearinghouse:submitter")
    etree.SubElement(etree.SubElement(slot, f"{{{RIM}}}ValueList"), f"{{{RIM}}}Value").text = "edge"
    ss.insert(0, slot)  # edge-b pretends to relay for edge
    assert clearinghouse.soap(owner.name, "/xds/registry").call(ITI42, request).body.get("status") == edge.SUCCESS
    [entry] = _entries(edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), patient))
    assert "urn:isn:clearinghouse:submitter" not in etree.tostring(entry).decode()
    deprecate = xs.status_update(patient, entry.get("id"), xs.APPROVED, xs.DEPRECATED)
    as_edge = clearinghouse.soap("edge", "/xds/registry").call(ITI57, deprecate)
    assert [c for c, _ in edge.errors_of(as_edge.body)] == ["XDSMetadataUpdateError"]
    assert clearinghouse.soap(owner.name, "/xds/registry").call(ITI57, deprecate).body.get("status") == edge.SUCCESS


def _params_for(spec: query_params.QuerySpec, patient: str, ids: dict[str, str]) -> dict[str, str]:
    """Parameters that make ``spec`` find the objects of ``ids`` (one patient's submission)."""
    status = xs.quoted_list([xs.APPROVED])
    by_name = {
        "$XDSDocumentEntryPatientId": xs.quoted(patient),
        "$XDSSubmissionSetPatientId": xs.quoted(patient),
        "$XDSFolderPatientId": xs.quoted(patient),
        "$patientId": xs.quoted(patient),
        "$XDSDocumentEntryStatus": status,
        "$XDSSubmissionSetStatus": status,
        "$XDSFolderStatus": status,
        "$XDSDocumentEntryReferenceIdList": xs.quoted_list([ids["reference"]]),
        "$uuid": xs.quoted_list([ids["document"]]),
        "$AssociationTypes": xs.quoted_list([xs.RPLC]),
    }
    alternatives = {
        "$XDSDocumentEntryEntryUUID": ids["document"],
        "$XDSFolderEntryUUID": ids["folder"],
        "$XDSSubmissionSetEntryUUID": ids["submission_set"],
    }
    params = {p.name: by_name[p.name] for p in spec.params if p.required}
    if spec.one_of:
        first = spec.param(spec.one_of[0])
        value = alternatives[first.name]
        params[first.name] = xs.quoted_list([value]) if first.multiple else xs.quoted(value)
    return params


def test_every_stored_query_answer_is_schema_valid(clearinghouse, schemas):
    patient = _patient(clearinghouse)
    reference = "ACC-" + uuid.uuid4().hex[:8] + "^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession"
    docs = [xs.DocSpec(reference_ids=[reference]), xs.DocSpec()]
    ss_uuid = xs.new_uuid()
    first = xs.submission(patient, docs, folders=[xs.FolderSpec(documents=[0, 1])], ss_entry_uuid=ss_uuid)
    source = clearinghouse.soap("edge", "/xds/registry")
    assert source.call(ITI42, first).body.get("status") == edge.SUCCESS
    phr = clearinghouse.soap("phr", "/xds/registry")
    refs = phr.call(
        edge.ITI18, xs.query(xs.GET_SUBMISSION_SET_AND_CONTENTS, {"$XDSSubmissionSetEntryUUID": xs.quoted(ss_uuid)})
    )
    entries = _entries(refs)
    document = next(e.get("id") for e in entries if _unique_id(e) == docs[1].unique_id)
    folder = next(p.get("id") for p in refs.body.iter(f"{{{RIM}}}RegistryPackage") if p.get("id") != ss_uuid)
    replacement = xs.submission(
        patient, [xs.DocSpec()], extra_associations=[xs.AssocSpec(xs.RPLC, "Document01", document)]
    )
    assert source.call(ITI42, replacement).body.get("status") == edge.SUCCESS
    ids = {"document": document, "folder": folder, "submission_set": ss_uuid, "reference": reference}
    for spec in query_params.QUERIES.values():
        for return_type in ("LeafClass", "ObjectRef"):
            request = xs.query(spec.id, _params_for(spec, patient, ids), return_type)
            assert valid(schemas["query"], request)
            reply = phr.call(edge.ITI18, request)
            assert reply.body.get("status") == edge.SUCCESS, (spec.name, edge.errors_of(reply.body))
            assert valid(schemas["query"], reply.body)
            assert len(reply.body.find(f"{{{RIM}}}RegistryObjectList")) > 0, spec.name
    # Error answers are schema-valid too.
    bad = phr.call(edge.ITI18, xs.query(xs.FIND_FOLDERS, {"$XDSFolderStatus": xs.quoted_list([xs.APPROVED])}))
    assert valid(schemas["query"], bad.body) and bad.body.get("status") == edge.FAILURE
    refused = source.call(ITI42, xs.submission(patient, [xs.DocSpec(omit=frozenset({"classCode"}))]))
    assert valid(schemas["rs"], refused.body) and refused.body.get("status") == edge.FAILURE


def test_the_wsdls_describe_the_new_transactions(clearinghouse):
    import urllib.request

    for path, actions in (
        ("/xds/registry", (ITI57, ITI62)),
        ("/xds/repository", ("urn:ihe:rad:2009:RetrieveImagingDocumentSet",)),
    ):
        with urllib.request.urlopen(
            clearinghouse.url(path) + "?wsdl", context=clearinghouse.identities["phr"].context()
        ) as r:
            wsdl = r.read().decode()
        for action in actions:
            assert f'soapAction="{action}"' in wsdl, (path, action)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_write_that_cannot_get_its_lock_is_answered_busy(backend, tmp_path, request):
    from conftest import PG_URL

    if not PG_URL:
        pytest.skip("needs CLEARINGHOUSE_TEST_DATABASE_URL (PostgreSQL): SQLite has no per-transaction lock timeout")
    with running_instance(tmp_path, backend, registry_lock_timeout_ms=300) as running:
        patient = _patient(running)
        with running.ch.engine.connect() as blocker:
            tx = blocker.begin()
            blocker.execute(text("LOCK TABLE registry_objects IN ACCESS EXCLUSIVE MODE"))
            reply = running.soap("edge", "/xds/registry").call(ITI42, xs.submission(patient))
            tx.rollback()
        assert [c for c, _ in edge.errors_of(reply.body)] == ["XDSRegistryBusy"]
        assert (
            running.soap("edge", "/xds/registry").call(ITI42, xs.submission(patient)).body.get("status") == edge.SUCCESS
        )
