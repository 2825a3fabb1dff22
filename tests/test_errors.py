"""Each error code of the round trip, through the real interfaces, and proof that a refused
submission leaves nothing behind and corrupts nothing already stored."""

from __future__ import annotations

import edge
import pytest
import xds_samples as xs
from sqlalchemy import func, select

from clearinghouse.xmlsafe import NS
from repository.models import StoredDocument


def _fed_patient(clearinghouse) -> str:
    patient = edge.patient_for(edge.new_access_code(), "19661231")
    client = clearinghouse.feed_client()
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()
    return patient


def _stored_count(clearinghouse) -> int:
    with clearinghouse.ch.sessions() as session:
        return session.scalar(select(func.count()).select_from(StoredDocument))


def _store_files(clearinghouse) -> int:
    return sum(1 for p in clearinghouse.settings.effective_store_path.rglob("*") if p.is_file())


def _codes(reply) -> list[str]:
    return [code for code, _ in edge.errors_of(reply.body)]


def _submit_and_expect(clearinghouse, study, code: str, **kwargs) -> list[tuple[str, str]]:
    before = (_stored_count(clearinghouse), _store_files(clearinghouse))
    reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), study, **kwargs)
    assert reply.body.get("status") == edge.FAILURE
    assert code in _codes(reply), edge.errors_of(reply.body)
    assert (_stored_count(clearinghouse), _store_files(clearinghouse)) == before, "a refused submission left data"
    # Nothing was registered either.
    found = edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), study.patient_id)
    for uid in study.unique_ids:
        assert uid.encode() not in _xml(found.body)
    return edge.errors_of(reply.body)


def _xml(el) -> bytes:
    from lxml import etree

    return etree.tostring(el)


def test_unknown_patient(clearinghouse):
    patient = edge.patient_for(edge.new_access_code(), "19661231")  # never fed
    errors = _submit_and_expect(clearinghouse, edge.study(patient, samples=["CT_small.dcm"]), "XDSUnknownPatientId")
    assert any(patient.split("^")[0] in ctx for _, ctx in errors)


@pytest.mark.parametrize("field, value", [("hash", "0" * 40), ("size", "1")])
def test_source_supplied_hash_or_size_that_does_not_match(clearinghouse, field, value):
    patient = _fed_patient(clearinghouse)
    st = edge.study(patient, samples=["CT_small.dcm"], report=False)
    st.documents[0] = xs.DocSpec(**{**st.documents[0].__dict__, field: value})
    errors = _submit_and_expect(clearinghouse, st, "XDSRepositoryMetadataError")
    assert any(field in ctx and st.documents[0].unique_id in ctx for _, ctx in errors)


def test_missing_required_metadata_is_reported_and_rolled_back(clearinghouse):
    patient = _fed_patient(clearinghouse)
    st = edge.study(patient, samples=["MR_small.dcm"])
    st.documents[0] = xs.DocSpec(**{**st.documents[0].__dict__, "omit": frozenset({"classCode"})})
    errors = _submit_and_expect(clearinghouse, st, "XDSRegistryMetadataError")
    assert any("classCode" in ctx for _, ctx in errors)


def test_patient_id_mismatch_within_a_submission(clearinghouse):
    patient, other = _fed_patient(clearinghouse), _fed_patient(clearinghouse)
    st = edge.study(patient, samples=["CT_small.dcm"], report=False)
    st.documents[0] = xs.DocSpec(**{**st.documents[0].__dict__, "patient_id": other})
    _submit_and_expect(clearinghouse, st, "XDSPatientIdDoesNotMatch")


def test_duplicate_unique_id_in_one_message(clearinghouse):
    patient = _fed_patient(clearinghouse)
    st = edge.study(patient, samples=["CT_small.dcm", "MR_small.dcm"], report=False)
    st.documents[1] = xs.DocSpec(**{**st.documents[1].__dict__, "unique_id": st.documents[0].unique_id})
    _submit_and_expect(clearinghouse, st, "XDSRepositoryDuplicateUniqueIdInMessage")


def test_resubmitting_a_unique_id_identical_is_accepted_different_is_refused(clearinghouse):
    # ITI TF-2b 3.42.4.1.3.4: the same uniqueId with the same hash and size is accepted (the document
    # is not stored twice); with different content it is XDSNonIdenticalHash, and the original survives.
    patient = _fed_patient(clearinghouse)
    first = edge.study(patient, samples=["CT_small.dcm"], report=False)
    ok = edge.submit(clearinghouse.soap("edge", "/xds/repository"), first)
    assert ok.body.get("status") == edge.SUCCESS, edge.errors_of(ok.body)
    uid = first.unique_ids[0]

    same_bytes = edge.study(patient, samples=["CT_small.dcm"], report=False)
    same_bytes.documents[0] = xs.DocSpec(**{**same_bytes.documents[0].__dict__, "unique_id": uid})
    files = _store_files(clearinghouse)
    reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), same_bytes)
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    assert _store_files(clearinghouse) == files

    other_bytes = edge.study(patient, samples=["MR_small.dcm"], report=False)
    other_bytes.documents[0] = xs.DocSpec(**{**other_bytes.documents[0].__dict__, "unique_id": uid})
    reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), other_bytes)
    assert "XDSNonIdenticalHash" in _codes(reply)

    got = edge.retrieve(clearinghouse.soap("phr", "/xds/repository"), [uid])
    assert edge.retrieved_documents(got) == {uid: first.contents[uid]}


def test_document_without_metadata_and_metadata_without_document(clearinghouse):
    patient = _fed_patient(clearinghouse)
    st = edge.study(patient, samples=["CT_small.dcm"], report=False)
    request = xs.provide_and_register(st.patient_id, st.documents)
    doc = request.find("xdsb:Document", NS)
    doc.set("id", "NoSuchEntry")
    reply = clearinghouse.soap("edge", "/xds/repository").call(edge.ITI41, request)
    assert {"XDSMissingDocument", "XDSMissingDocumentMetadata"} <= set(_codes(reply))


def test_bad_base64_and_missing_attachment(clearinghouse):
    patient = _fed_patient(clearinghouse)
    st = edge.study(patient, samples=["CT_small.dcm"], report=False)
    request = xs.provide_and_register(st.patient_id, st.documents)
    request.find("xdsb:Document", NS).text = "!!!not base64!!!"
    reply = clearinghouse.soap("edge", "/xds/repository").call(edge.ITI41, request)
    assert "XDSRepositoryError" in _codes(reply)

    request = xs.provide_and_register(st.patient_id, st.documents)
    parts = edge.to_mtom(request)
    reply = clearinghouse.soap("edge", "/xds/repository").call(edge.ITI41, request, attachments=parts[1:], mtom=True)
    assert "XDSRepositoryError" in _codes(reply) and "cid" in str(edge.errors_of(reply.body))


def test_retrieve_partial_success_and_unknown_repository(clearinghouse):
    patient = _fed_patient(clearinghouse)
    st = edge.study(patient, samples=["CT_small.dcm"], report=False)
    assert edge.submit(clearinghouse.soap("edge", "/xds/repository"), st).body.get("status") == edge.SUCCESS
    consumer = clearinghouse.soap("phr", "/xds/repository")

    got = edge.retrieve(consumer, [st.unique_ids[0], "1.2.3.4.5.404"])
    rr = got.body.find("rs:RegistryResponse", NS)
    assert rr.get("status") == edge.PARTIAL
    assert [c for c, _ in edge.errors_of(rr)] == ["XDSDocumentUniqueIdError"]
    assert edge.retrieved_documents(got) == st.contents

    got = edge.retrieve(consumer, ["1.2.3.4.5.404"])
    assert got.body.find("rs:RegistryResponse", NS).get("status") == edge.FAILURE

    got = edge.retrieve(consumer, st.unique_ids, repository_id="9.9.9")
    assert "XDSUnknownRepositoryId" in _codes(got)


@pytest.mark.parametrize(
    "query, code",
    [
        (
            lambda p: xs.query(xs.FIND_DOCUMENTS, {"$XDSDocumentEntryStatus": xs.quoted_list([xs.APPROVED])}),
            "XDSStoredQueryMissingParam",
        ),
        (
            lambda p: xs.query("urn:uuid:00000000-0000-0000-0000-000000000000", {"$patientId": xs.quoted(p)}),
            "XDSUnknownStoredQuery",
        ),
        (
            lambda p: xs.query(
                xs.GET_DOCUMENTS,
                {
                    "$XDSDocumentEntryUniqueId": xs.quoted_list(["1.2"]),
                    "$XDSDocumentEntryEntryUUID": xs.quoted_list(["urn:uuid:x"]),
                },
            ),
            "XDSStoredQueryParamNumber",
        ),
        (
            lambda p: xs.query(
                xs.FIND_DOCUMENTS,
                {
                    "$XDSDocumentEntryPatientId": "'unterminated",
                    "$XDSDocumentEntryStatus": xs.quoted_list([xs.APPROVED]),
                },
            ),
            "XDSRegistryError",
        ),
    ],
)
def test_stored_query_parameter_errors(clearinghouse, query, code):
    patient = _fed_patient(clearinghouse)
    reply = clearinghouse.soap("phr", "/xds/registry").call(edge.ITI18, query(patient))
    assert reply.body.get("status") == edge.FAILURE
    assert code in _codes(reply), edge.errors_of(reply.body)
