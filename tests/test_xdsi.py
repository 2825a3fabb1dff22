"""XDS-I.b end to end over TLS: an edge sends a study with its Key Object Selection manifest
(RAD-68, as ITI-41), a PHR finds the manifest, retrieves it (ITI-43), reads the instances it
references with pydicom and retrieves exactly those images by Study / Series / SOP Instance UID
(RAD-69). Bad manifests are refused with XDSRepositoryMetadataError and leave nothing behind."""

from __future__ import annotations

import copy
from pathlib import Path

import edge
import pytest
from lxml import etree
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from clearinghouse.soap.client import SoapFault
from clearinghouse.xmlsafe import NS
from repository import kos as kos_rules
from tests import imaging_samples as im
from tests import xds_samples as xs

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "ebRS"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@pytest.fixture(scope="module")
def rs_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "rs.xsd")))


def _patient(clearinghouse) -> str:
    patient = edge.patient_for(edge.new_access_code(), "19720304")
    client = clearinghouse.feed_client()
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()
    return patient


def _submit(clearinghouse, patient: str, docs: list[xs.DocSpec]):  # noqa: ANN202
    request = xs.provide_and_register(patient, docs)
    return clearinghouse.soap("edge", "/xds/repository").call(
        edge.ITI41, request, attachments=edge.to_mtom(request), mtom=True
    )


def _rad69(clearinghouse, wanted, syntaxes=None, who: str = "phr"):  # noqa: ANN001, ANN202
    request = im.rad69_request(wanted, edge.REPOSITORY_ID, syntaxes)
    return clearinghouse.soap(who, "/xds/repository").call(im.RAD69, request, mtom=True)


def _registry_response(reply) -> etree._Element:  # noqa: ANN001
    return reply.body.find("rs:RegistryResponse", NS)


def _triples(instances: list[im.Instance]) -> list[tuple[str, str, str]]:
    return [(i.study_uid, i.series_uid, i.sop_instance_uid) for i in instances]


def test_manifest_leads_the_phr_to_the_images(clearinghouse, rs_schema):
    patient = _patient(clearinghouse)
    study = im.imaging_study()
    kos = im.manifest(study, edge.REPOSITORY_ID)
    reply = _submit(clearinghouse, patient, im.rad68_documents(study, kos))
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    assert rs_schema.validate(copy.deepcopy(reply.body)), rs_schema.error_log

    # The PHR finds the manifest by its formatCode and retrieves it.
    phr_registry = clearinghouse.soap("phr", "/xds/registry")
    kos_format = xs.quoted_list([f"{im.KOS_SOP_CLASS}^^{im.DICOM_UID_REGISTRY}"])
    found = phr_registry.call(edge.ITI18, xs.find_documents(patient, XDSDocumentEntryFormatCode=kos_format))
    [manifest_entry] = found.body.iter(f"{{{NS['rim']}}}ExtrinsicObject")
    manifest_uid = [
        e.get("value")
        for e in manifest_entry.iter(f"{{{NS['rim']}}}ExternalIdentifier")
        if e.get("identificationScheme") == "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
    ][0]
    got = edge.retrieve(clearinghouse.soap("phr", "/xds/repository"), [manifest_uid])
    assert rs_schema.validate(copy.deepcopy(_registry_response(got))), rs_schema.error_log
    manifest_bytes = edge.retrieved_documents(got)[manifest_uid]
    assert manifest_bytes == kos

    # It reads the references with pydicom and asks for exactly those instances.
    refs, _ = kos_rules.evidence(im.dataset(manifest_bytes))
    wanted = [(r.study_uid, r.series_uid, r.sop_instance_uid) for r in refs]
    assert {r.retrieve_location_uid for r in refs} == {edge.REPOSITORY_ID}
    images = _rad69(clearinghouse, wanted)
    assert images.action == im.RAD69 + "Response"
    response = _registry_response(images)
    assert rs_schema.validate(copy.deepcopy(response)), rs_schema.error_log
    assert response.get("status") == edge.SUCCESS
    assert edge.retrieved_documents(images) == {i.sop_instance_uid: i.data for i in study.instances}
    assert {dr.findtext("xdsb:mimeType", namespaces=NS) for dr in images.body.findall("xdsb:DocumentResponse", NS)} == {
        "application/dicom"
    }

    # A consumer that only reads Implicit VR Little Endian gets the same images re-encoded.
    implicit = _rad69(clearinghouse, wanted[:1], [ImplicitVRLittleEndian])
    [(uid, data)] = edge.retrieved_documents(implicit).items()
    original, served = im.dataset(study.instances[0].data), im.dataset(data)
    assert served.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert (served.SOPInstanceUID, served.PixelData) == (original.SOPInstanceUID, original.PixelData)


def test_retrieve_imaging_errors(clearinghouse, rs_schema):
    patient = _patient(clearinghouse)
    study = im.imaging_study({"CT_small.dcm": 1})
    reply = _submit(clearinghouse, patient, im.rad68_documents(study, im.manifest(study, edge.REPOSITORY_ID)))
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    [inst] = study.instances
    unknown = (inst.study_uid, inst.series_uid, "1.2.3.999")
    wrong_series = (inst.study_uid, "1.2.3.4", inst.sop_instance_uid)
    partial = _rad69(clearinghouse, [_triples([inst])[0], unknown, wrong_series])
    response = _registry_response(partial)
    assert rs_schema.validate(copy.deepcopy(response)), rs_schema.error_log
    assert response.get("status") == edge.PARTIAL
    locations = [e.get("location") for e in response.iter(f"{{{NS['rs']}}}RegistryError")]
    assert edge.errors_of(response)[0][0] == "XDSMissingDocument" and locations == ["1.2.3.999", inst.sop_instance_uid]
    assert list(edge.retrieved_documents(partial)) == [inst.sop_instance_uid]

    no_syntax = _rad69(clearinghouse, _triples([inst]), [JPEG_BASELINE])
    assert _registry_response(no_syntax).get("status") == edge.FAILURE
    assert [c for c, _ in edge.errors_of(no_syntax.body)] == ["XDSRepositoryError"]

    elsewhere = im.rad69_request(_triples([inst]), "9.9.9")
    got = clearinghouse.soap("phr", "/xds/repository").call(im.RAD69, elsewhere, mtom=True)
    assert [c for c, _ in edge.errors_of(got.body)] == ["XDSUnknownRepositoryId"]

    malformed = im.rad69_request(_triples([inst]), edge.REPOSITORY_ID)
    malformed.remove(malformed.find(f"{{{im.XDSI}}}TransferSyntaxUIDList"))
    got = clearinghouse.soap("phr", "/xds/repository").call(im.RAD69, malformed, mtom=True)
    assert _registry_response(got).get("status") == edge.FAILURE
    assert [c for c, _ in edge.errors_of(got.body)] == ["XDSRepositoryError"]

    with pytest.raises(SoapFault) as excinfo:  # retrieving images is a consumer's transaction
        _rad69(clearinghouse, _triples([inst]), who="edge")
    assert excinfo.value.code == "Sender"


def _refused(clearinghouse, patient: str, docs: list[xs.DocSpec], expected: str) -> None:
    reply = _submit(clearinghouse, patient, docs)
    assert etree.XMLSchema(etree.parse(str(SCHEMAS / "rs.xsd"))).validate(copy.deepcopy(reply.body))
    errors = edge.errors_of(reply.body)
    assert reply.body.get("status") == edge.FAILURE
    assert any(code == "XDSRepositoryMetadataError" and expected in text for code, text in errors), errors


def test_bad_manifests_are_refused_and_leave_nothing(clearinghouse):
    patient = _patient(clearinghouse)
    study = im.imaging_study({"CT_small.dcm": 2})
    first, second = study.instances
    good = im.manifest(study, edge.REPOSITORY_ID)
    # an image the manifest references is not sent
    _refused(clearinghouse, patient, im.rad68_documents(study, good, images=[first]), "neither in this submission")
    # the manifest points consumers to another repository
    _refused(
        clearinghouse,
        patient,
        im.rad68_documents(study, im.manifest(study, "1.2.3.4.5")),
        "Retrieve Location UID 1.2.3.4.5 is not this repository",
    )
    # the DocumentEntry's uniqueId is not the manifest's SOP Instance UID
    docs = im.rad68_documents(study, good)
    docs[0].unique_id = xs.new_oid()
    _refused(clearinghouse, patient, docs, "differs from the DocumentEntry uniqueId")
    # a CT image registered as a manifest
    docs = im.rad68_documents(study, good)
    docs[0].content = first.data
    _refused(clearinghouse, patient, docs, "is not Key Object Selection Document")
    # a text file labelled application/dicom next to a manifest
    docs = im.rad68_documents(study, good)
    docs.append(xs.DocSpec(mime_type="application/dicom", content=b"not DICOM", format_code=xs.FORMAT_PDF))
    _refused(clearinghouse, patient, docs, "not a DICOM Part 10 file")
    # Nothing was kept: neither the images nor any metadata.
    got = _rad69(clearinghouse, _triples([first, second]))
    assert [c for c, _ in edge.errors_of(got.body)] == ["XDSMissingDocument", "XDSMissingDocument"]
    found = edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), patient)
    assert list(found.body.iter(f"{{{NS['rim']}}}ExtrinsicObject")) == []


def test_a_manifest_may_reference_images_sent_earlier(clearinghouse):
    patient = _patient(clearinghouse)
    study = im.imaging_study({"MR_small.dcm": 1, "CT_small.dcm": 1})
    images = im.rad68_documents(study, im.manifest(study, edge.REPOSITORY_ID))[1:]
    assert _submit(clearinghouse, patient, images).body.get("status") == edge.SUCCESS
    manifest_only = im.rad68_documents(study, im.manifest(study, edge.REPOSITORY_ID), images=[])
    reply = _submit(clearinghouse, patient, manifest_only)
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    got = _rad69(clearinghouse, _triples(study.instances))
    assert edge.retrieved_documents(got) == {i.sop_instance_uid: i.data for i in study.instances}


def test_images_of_a_submission_the_registry_refuses_are_not_kept(clearinghouse):
    stranger = edge.patient_for(edge.new_access_code(), "19720304")  # never fed: the registry refuses
    study = im.imaging_study({"CT_small.dcm": 1})
    reply = _submit(clearinghouse, stranger, im.rad68_documents(study, im.manifest(study, edge.REPOSITORY_ID)))
    assert "XDSUnknownPatientId" in [c for c, _ in edge.errors_of(reply.body)]
    got = _rad69(clearinghouse, _triples(study.instances))
    assert [c for c, _ in edge.errors_of(got.body)] == ["XDSMissingDocument"]


def _native_pixels(data: bytes) -> bytes:
    """The pixel data of an instance in native form, decoded by pydicom if it is RLE."""
    ds = im.dataset(data)
    if ds.file_meta.TransferSyntaxUID == RLELossless:
        return bytes(get_decoder(RLELossless).as_buffer(ds, decoding_plugin="pydicom")[0])
    return ds.PixelData


def test_rad69_re_encodes_into_the_syntaxes_pydicom_can_write(clearinghouse, rs_schema):
    """RAD TF-3 4.69.4.2.3: each instance comes in one of the transfer syntaxes the consumer lists,
    its first choice that can be produced, or is an XDSRepositoryError for that instance."""
    patient = _patient(clearinghouse)
    study = im.imaging_study(
        {"CT_small.dcm": 1, "MR_small_RLE.dcm": 1, "SC_rgb_rle_2frame.dcm": 1, "SC_rgb_jpeg_dcmtk.dcm": 1}
    )
    reply = _submit(clearinghouse, patient, im.rad68_documents(study, im.manifest(study, edge.REPOSITORY_ID)))
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    ct, mr_rle, rgb_rle, jpeg = study.instances
    assert (mr_rle.transfer_syntax_uid, jpeg.transfer_syntax_uid) == (RLELossless, JPEG_BASELINE)

    def served(instance: im.Instance, syntaxes: list[str]):  # noqa: ANN202
        got = _rad69(clearinghouse, _triples([instance]), syntaxes)
        response = _registry_response(got)
        assert rs_schema.validate(copy.deepcopy(response)), rs_schema.error_log
        documents = edge.retrieved_documents(got)
        return response, (im.dataset(documents[instance.sop_instance_uid]) if documents else None)

    # Native into RLE Lossless (pydicom's encoder) and into Deflated Explicit VR Little Endian;
    # the first syntax of the list that can be produced wins.
    for syntaxes, expected in (
        ([RLELossless, ExplicitVRBigEndian], RLELossless),
        ([JPEG_BASELINE, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian], DeflatedExplicitVRLittleEndian),
    ):
        response, ds = served(ct, syntaxes)
        assert response.get("status") == edge.SUCCESS and ds is not None
        assert ds.file_meta.TransferSyntaxUID == expected
        assert ds.SOPInstanceUID == ct.sop_instance_uid
        assert _native_pixels(im._encode(ds)) == im.dataset(ct.data).PixelData

    # RLE Lossless decoded to native: the same pixels as the uncompressed original of the sample.
    response, ds = served(mr_rle, [ExplicitVRLittleEndian])
    assert response.get("status") == edge.SUCCESS and ds is not None
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.PixelData == im.dataset(Path(get_testdata_file("MR_small.dcm")).read_bytes()).PixelData
    # Colour, two frames: decoded planes stay planes (PlanarConfiguration 1), every byte present.
    response, ds = served(rgb_rle, [ImplicitVRLittleEndian])
    assert response.get("status") == edge.SUCCESS and ds is not None
    assert (ds.PlanarConfiguration, len(ds.PixelData)) == (1, ds.Rows * ds.Columns * 3 * int(ds.NumberOfFrames))
    assert ds.PixelData == _native_pixels(rgb_rle.data)

    # Stored as accepted: the bytes as received, even when the consumer also lists others.
    assert (
        edge.retrieved_documents(_rad69(clearinghouse, _triples([mr_rle]), [ImplicitVRLittleEndian, RLELossless]))[
            mr_rle.sop_instance_uid
        ]
        == mr_rle.data
    )

    # What pydicom cannot produce: JPEG without a codec, retired Big Endian.
    for instance, syntaxes in ((jpeg, [ExplicitVRLittleEndian, RLELossless]), (ct, [ExplicitVRBigEndian])):
        response, ds = served(instance, syntaxes)
        assert ds is None and response.get("status") == edge.FAILURE
        [(code, context)] = edge.errors_of(response)
        assert code == "XDSRepositoryError" and "transfer syntax not supported" in context
        assert [e.get("location") for e in response.iter(f"{{{NS['rs']}}}RegistryError")] == [instance.sop_instance_uid]
    assert edge.retrieved_documents(_rad69(clearinghouse, _triples([jpeg]), [JPEG_BASELINE]))[
        jpeg.sop_instance_uid
    ] == (jpeg.data)
