"""The first use case end to end, over real TLS sockets: an edge feeds a patient and submits a study;
the patient's PHR, knowing only the access code and date of birth, finds and downloads exactly those bytes."""

from __future__ import annotations

import edge
import pytest
import xds_samples as xs

from clearinghouse.xmlsafe import NS, qname


@pytest.fixture(params=["mtom", "inline"])
def encoding(request: pytest.FixtureRequest) -> str:
    return request.param


def _feed(clearinghouse, patient_id: str) -> None:
    client = clearinghouse.feed_client("edge")
    try:
        ack = client.send(edge.feed_message(patient_id))
    finally:
        client.close()
    assert b"MSA|AA|" in ack, ack


def test_edge_submits_and_phr_retrieves_exactly_those_bytes(clearinghouse, encoding):
    access_code, dob, password = edge.new_access_code(), "19700412", "s3cret"
    patient = edge.patient_for(access_code, dob, password)
    _feed(clearinghouse, patient)
    study = edge.study(patient)

    source = clearinghouse.soap("edge", "/xds/repository")
    reply = edge.submit(source, study, mtom=encoding == "mtom")
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    assert reply.action == "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"
    assert reply.relates_to and reply.relates_to.startswith("urn:uuid:")

    # The PHR knows only what the patient typed in.
    phr_patient = edge.patient_for(access_code.upper().replace("-", ""), "1970-04-12", password)
    assert phr_patient == patient
    registry = clearinghouse.soap("phr", "/xds/registry")
    found = edge.find_documents(registry, phr_patient)
    assert found.action == "urn:ihe:iti:2007:RegistryStoredQueryResponse"
    assert found.body.get("status") == edge.SUCCESS
    entries = found.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)
    assert len(entries) == len(study.documents)
    by_uid = {}
    for eo in entries:
        uid = next(
            ei.get("value")
            for ei in eo.findall("rim:ExternalIdentifier", NS)
            if ei.get("identificationScheme") == "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
        )
        by_uid[uid] = eo
        assert eo.get("status") == xs.APPROVED
        assert edge.slot(eo, "repositoryUniqueId") == [edge.REPOSITORY_ID]
        assert edge.slot(eo, "hash") == [edge.sha1(study.contents[uid])]
        assert edge.slot(eo, "size") == [str(len(study.contents[uid]))]
    assert set(by_uid) == set(study.unique_ids)

    consumer = clearinghouse.soap("phr", "/xds/repository")
    got = edge.retrieve(consumer, study.unique_ids)
    assert got.action == "urn:ihe:iti:2007:RetrieveDocumentSetResponse"
    assert got.content_type.startswith("multipart/related")
    status = got.body.find("rs:RegistryResponse", NS).get("status")
    assert status == edge.SUCCESS
    docs = edge.retrieved_documents(got)
    assert docs == study.contents
    for dr in got.body.findall("xdsb:DocumentResponse", NS):
        uid = dr.findtext("xdsb:DocumentUniqueId", namespaces=NS)
        assert dr.findtext("xdsb:mimeType", namespaces=NS) == by_uid[uid].get("mimeType")
    got.close()


def test_object_ref_query_and_submission_set_contents(clearinghouse):
    patient = edge.patient_for(edge.new_access_code(), "20010101")
    _feed(clearinghouse, patient)
    study = edge.study(patient, samples=["CT_small.dcm"])
    reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), study)
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    registry = clearinghouse.soap("phr", "/xds/registry")

    refs = edge.find_documents(registry, patient, return_type="ObjectRef")
    ids = [r.get("id") for r in refs.body.findall("rim:RegistryObjectList/rim:ObjectRef", NS)]
    assert len(ids) == 2 and all(i.startswith("urn:uuid:") for i in ids)

    ss = registry.call(
        edge.ITI18,
        xs.query(
            xs.FIND_SUBMISSION_SETS,
            {
                "$XDSSubmissionSetPatientId": xs.quoted(patient),
                "$XDSSubmissionSetStatus": xs.quoted_list([xs.APPROVED]),
            },
        ),
    )
    packages = ss.body.findall("rim:RegistryObjectList/rim:RegistryPackage", NS)
    assert len(packages) == 1
    ss_uuid = packages[0].get("id")

    contents = registry.call(
        edge.ITI18, xs.query(xs.GET_SUBMISSION_SET_AND_CONTENTS, {"$XDSSubmissionSetEntryUUID": xs.quoted(ss_uuid)})
    )
    olist = contents.body.find("rim:RegistryObjectList", NS)
    assert len(olist.findall("rim:ExtrinsicObject", NS)) == 2
    assocs = olist.findall("rim:Association", NS)
    assert {a.get("sourceObject") for a in assocs} == {ss_uuid}

    docs = registry.call(
        edge.ITI18, xs.query(xs.GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": xs.quoted_list(study.unique_ids)})
    )
    assert len(docs.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)) == 2

    everything = registry.call(
        edge.ITI18,
        xs.query(
            xs.GET_ALL,
            {
                "$patientId": xs.quoted(patient),
                "$XDSDocumentEntryStatus": xs.quoted_list([xs.APPROVED]),
                "$XDSSubmissionSetStatus": xs.quoted_list([xs.APPROVED]),
                "$XDSFolderStatus": xs.quoted_list([xs.APPROVED]),
            },
        ),
    )
    olist = everything.body.find("rim:RegistryObjectList", NS)
    assert len(olist.findall("rim:ExtrinsicObject", NS)) == 2
    assert len(olist.findall("rim:RegistryPackage", NS)) == 1


def test_one_patient_never_sees_another(clearinghouse):
    a = edge.patient_for(edge.new_access_code(), "19500101")
    b = edge.patient_for(edge.new_access_code(), "19500101")
    for p in (a, b):
        _feed(clearinghouse, p)
    reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), edge.study(a, samples=["MR_small.dcm"]))
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    found = edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), b)
    assert found.body.get("status") == edge.SUCCESS
    assert (
        found.body.find("rim:RegistryObjectList", NS) is None or len(found.body.find("rim:RegistryObjectList", NS)) == 0
    )


def test_wrong_password_finds_nothing(clearinghouse):
    code, dob = edge.new_access_code(), "19800101"
    patient = edge.patient_for(code, dob, "right")
    _feed(clearinghouse, patient)
    reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), edge.study(patient, samples=[]))
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    wrong = edge.patient_for(code, dob, "wrong")
    found = edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), wrong)
    assert not found.body.findall(f".//{qname('rim', 'ExtrinsicObject')}")
