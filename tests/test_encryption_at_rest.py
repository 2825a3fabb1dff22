"""Encryption at rest end to end, on the filesystem store and on an S3-compatible store (moto), on both
databases: an edge submits over HTTPS with MTOM, the PHR retrieves; a document altered on disk or in
the bucket is refused by ITI-43 (and RAD-69) with XDSRepositoryError and a Security Alert in the
audit repository; a document altered in a segment past the up-front checks aborts the response."""

from __future__ import annotations

import hashlib
import os
import stat

import edge
import pytest
import xds_samples as xs
from atna_client import entity_ids, resources, search, wait_for
from conftest import running_instance
from s3_server import s3_server  # noqa: F401 - fixture
from sqlalchemy import select

from clearinghouse.errors import XDSRepositoryError
from clearinghouse.soap.mtom import MtomError
from clearinghouse.xmlsafe import NS
from repository import crypto
from repository.keys import keys_dir
from repository.models import StoredDocument
from repository.store import FilesystemStore, read_exact
from repository.store_sealed import build_store

PREVERIFY = 1 << 20  # documents up to 1 MiB are verified whole before the response; larger ones per segment
INTEGRITY = "urn:isn-clearinghouse:audit|stored-document-integrity"


@pytest.fixture(scope="module", params=["filesystem", "s3"])
def instance(request, backend, tmp_path_factory):
    overrides: dict[str, object] = {"encryption_preverify_bytes": PREVERIFY}
    if request.param == "s3":
        overrides.update(request.getfixturevalue("s3_server").settings())
    with running_instance(tmp_path_factory.mktemp(f"enc-{request.param}-{backend}"), backend, **overrides) as r:
        r.raw_store = build_store(r.settings)  # type: ignore[attr-defined]
        yield r


def _feed(running, patient: str) -> None:
    client = running.feed_client("edge")
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()


def _submit(running, contents: list[bytes] | None = None, *, dicom: bool = True) -> edge.Study:
    patient = edge.patient_for(edge.new_access_code(), "19650302")
    _feed(running, patient)
    study = edge.study(patient, report=True, samples=["CT_small.dcm"] if dicom else [])
    for data in contents or []:
        uid = xs.new_oid()
        study.documents.append(
            xs.DocSpec(
                unique_id=uid,
                mime_type="text/plain",
                content=data,
                title="Large report",
                class_code=xs.CLASS_REPORTS,
                format_code=edge.FORMAT_TEXT_REPORT,
            )
        )
        study.contents[uid] = data
    reply = edge.submit(running.soap("edge", "/xds/repository"), study, mtom=True)
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    return study


def _row(running, uid: str) -> StoredDocument:
    with running.ch.sessions() as session:
        row = session.scalar(select(StoredDocument).where(StoredDocument.unique_id == uid))
        assert row is not None
        session.expunge(row)
        return row


def _tamper(running, key: str, offset: int) -> None:
    """Flip one bit of the stored object, on disk or in the bucket, behind the clearinghouse's back."""
    store = running.raw_store
    if isinstance(store, FilesystemStore):
        path = store._path(key)
        with open(path, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)
            fh.seek(offset)
            fh.write(bytes([byte[0] ^ 0x01]))
        return
    raw = bytearray(b"".join(store.chunks(key)))
    raw[offset] ^= 0x01
    store.client.put_object(store.location.bucket, store._name(key), _Reader(bytes(raw)), len(raw))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) - self.pos if n < 0 else n
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def _integrity_alert(running, uid: str) -> dict:
    """The Security Alert recorded for ``uid`` (events reach the audit repository asynchronously)."""

    def found() -> dict | None:
        events = resources(search(running, [("type", "110113"), ("subtype", INTEGRITY), ("_count", "1000")]))
        return next((ev for ev in events if f"urn:oid:{uid}" in entity_ids(ev)), None)

    return wait_for(found, 15, f"the integrity Security Alert of {uid}")


def test_documents_are_stored_sealed_and_retrieved_exactly(instance):
    # Encryption is on by default: the first start generated the embedded KEK, readable by its owner only.
    [kek_file] = keys_dir(instance.settings).glob("*.key")
    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600
    study = _submit(instance)
    for uid, data in study.contents.items():
        row = _row(instance, uid)
        assert row.encryption == crypto.SCHEME and row.kek_id and row.wrapped_dek
        assert (row.size, row.sha1) == (len(data), hashlib.sha1(data).hexdigest())  # the plaintext's
        stored = b"".join(instance.raw_store.chunks(row.store_key))
        assert len(stored) == crypto.sealed_size(len(data))
        assert data[:32] not in stored and data[-32:] not in stored
    got = edge.retrieve(instance.soap("phr", "/xds/repository"), study.unique_ids)
    assert got.body.find("rs:RegistryResponse", NS).get("status") == edge.SUCCESS
    assert edge.retrieved_documents(got) == study.contents
    got.close()


def test_tampered_document_is_refused_with_repository_error_and_audited(instance):
    study = _submit(instance)
    bad, good = study.unique_ids
    row = _row(instance, bad)
    _tamper(instance, row.store_key, crypto.HEADER.size + 20)
    got = edge.retrieve(instance.soap("phr", "/xds/repository"), [bad, good])
    status = got.body.find("rs:RegistryResponse", NS).get("status")
    assert status == "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
    errors = got.body.findall(".//rs:RegistryError", NS)
    assert [(e.get("errorCode"), e.get("location")) for e in errors] == [(XDSRepositoryError.code, bad)]
    assert "integrity" in errors[0].get("codeContext")
    assert edge.retrieved_documents(got) == {good: study.contents[good]}
    got.close()
    alert = _integrity_alert(instance, bad)
    assert alert["outcome"] == "8" and "failed its integrity check" in alert["outcomeDesc"]
    # Refused every time, not only the first.
    again = edge.retrieve(instance.soap("phr", "/xds/repository"), [bad])
    assert again.body.find("rs:RegistryResponse", NS).get("status").endswith(":Failure")
    again.close()


def test_segment_failing_mid_stream_aborts_the_response(instance):
    large = os.urandom(3 * crypto.SEGMENT + 1234)  # past PREVERIFY: only length, first and last segments up front
    study = _submit(instance, [large], dicom=False)
    uid = study.unique_ids[-1]
    row = _row(instance, uid)
    offset, _ = crypto.segment_span(1, len(large))
    _tamper(instance, row.store_key, offset + 100)
    # The client sees the message cut short of its Content-Length, never a complete document.
    with pytest.raises(MtomError, match="truncated"):
        reply = edge.retrieve(instance.soap("phr", "/xds/repository"), [uid])
        reply.close()
    _integrity_alert(instance, uid)
    # The other, untouched large document of another submission still streams whole.
    other = os.urandom(2 * crypto.SEGMENT + 7)
    study2 = _submit(instance, [other], dicom=False)
    got = edge.retrieve(instance.soap("phr", "/xds/repository"), [study2.unique_ids[-1]])
    assert edge.retrieved_documents(got) == {study2.unique_ids[-1]: other}
    got.close()


def test_rad69_reads_through_the_verifying_reader(instance):
    from pydicom.uid import ImplicitVRLittleEndian

    from tests import imaging_samples as im

    patient = edge.patient_for(edge.new_access_code(), "19720304")
    _feed(instance, patient)
    study = im.imaging_study({"CT_small.dcm": 1})
    docs = im.rad68_documents(study, im.manifest(study, edge.REPOSITORY_ID))
    request = xs.provide_and_register(patient, docs)
    reply = instance.soap("edge", "/xds/repository").call(
        edge.ITI41, request, attachments=edge.to_mtom(request), mtom=True
    )
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    [inst] = study.instances
    wanted = [(inst.study_uid, inst.series_uid, inst.sop_instance_uid)]
    client = instance.soap("phr", "/xds/repository")
    stored = client.call(im.RAD69, im.rad69_request(wanted, edge.REPOSITORY_ID), mtom=True)
    assert edge.retrieved_documents(stored) == {inst.sop_instance_uid: inst.data}
    stored.close()
    # Re-encoding reads the decrypted instance too.
    implicit = client.call(im.RAD69, im.rad69_request(wanted, edge.REPOSITORY_ID, [ImplicitVRLittleEndian]), mtom=True)
    [data] = edge.retrieved_documents(implicit).values()
    assert im.dataset(data).SOPInstanceUID == inst.sop_instance_uid
    implicit.close()

    row = _row(instance, inst.sop_instance_uid)
    assert read_exact(instance.raw_store, row.store_key, 0, 4) == crypto.MAGIC
    _tamper(instance, row.store_key, crypto.sealed_size(len(inst.data)) - 3)
    for syntaxes in (None, [ImplicitVRLittleEndian]):
        bad = client.call(im.RAD69, im.rad69_request(wanted, edge.REPOSITORY_ID, syntaxes), mtom=True)
        errors = bad.body.findall(".//rs:RegistryError", NS)
        assert [(e.get("errorCode"), e.get("location")) for e in errors] == [
            (XDSRepositoryError.code, inst.sop_instance_uid)
        ]
        assert bad.body.findall("xdsb:DocumentResponse", NS) == []
        bad.close()
