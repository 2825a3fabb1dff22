"""The XDS-I.b imaging manifest rules (repository.kos) on Key Object Selection documents built with
pydicom from its sample images, and the DICOM reading and re-encoding of repository.dicom."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from repository import dicom, kos
from tests import imaging_samples as im

REPOSITORY = "1.3.6.1.4.1.21367.2026.1.1"


@pytest.fixture(scope="module")
def study() -> im.ImagingStudy:
    return im.imaging_study()


def held(study: im.ImagingStudy) -> dict[str, list[dicom.InstanceInfo]]:
    return {
        i.sop_instance_uid: [
            dicom.InstanceInfo(i.study_uid, i.series_uid, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid)
        ]
        for i in study.instances
    }


def test_a_manifest_built_like_an_imaging_document_source_is_valid(study):
    ds = im.manifest_dataset(study, REPOSITORY)
    assert kos.check_manifest(ds, unique_id=str(ds.SOPInstanceUID), repository_unique_id=REPOSITORY) == []
    refs, gaps = kos.evidence(ds)
    assert gaps == [] and {r.sop_instance_uid for r in refs} == {i.sop_instance_uid for i in study.instances}
    assert {r.series_uid for r in refs} == {i.series_uid for i in study.instances}
    assert kos.content_references(ds) == {i.sop_instance_uid for i in study.instances}
    assert kos.check_references_held(refs, held(study)) == []


def test_manifest_identity_rules(study):
    ds = im.manifest_dataset(study, REPOSITORY)
    problems = kos.check_manifest(ds, unique_id="1.2.3", repository_unique_id="9.9.9")
    assert any("differs from the DocumentEntry uniqueId 1.2.3" in p for p in problems)
    assert any("is not this repository (9.9.9)" in p for p in problems)
    ds.ConceptNameCodeSequence[0].CodeValue = "113000"
    ds.Modality = "SR"
    problems = kos.check_manifest(ds, unique_id=str(ds.SOPInstanceUID), repository_unique_id=REPOSITORY)
    assert len(problems) == 2 and "Modality is SR" in problems[0] and "113000" in problems[1]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    [problem] = kos.check_manifest(ds, unique_id=str(ds.SOPInstanceUID), repository_unique_id=REPOSITORY)
    assert "is not Key Object Selection Document" in problem


def test_evidence_must_be_complete(study):
    ds = im.manifest_dataset(study, REPOSITORY)
    series = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    del series.RetrieveLocationUID
    del series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    problems = kos.check_manifest(ds, unique_id=str(ds.SOPInstanceUID), repository_unique_id=REPOSITORY)
    assert any("no Retrieve Location UID" in p for p in problems)
    assert any("lacks its SOP Class or SOP Instance UID" in p for p in problems)
    assert any("which the evidence sequence does not list" in p for p in problems)
    del ds.CurrentRequestedProcedureEvidenceSequence
    _refs, gaps = kos.evidence(ds)
    assert gaps == ["Current Requested Procedure Evidence Sequence (0040,A375) is missing or empty"]


def test_referenced_instances_must_be_held_where_the_manifest_says(study):
    refs, _ = kos.evidence(im.manifest_dataset(study, REPOSITORY))
    partial = held(study)
    missing = study.instances[0].sop_instance_uid
    del partial[missing]
    [problem] = kos.check_references_held(refs, partial)
    assert missing in problem and "neither in this submission nor held" in problem
    moved = held(study)
    first = moved[missing][0]
    moved[missing] = [dicom.InstanceInfo(first.study_uid, "1.2.3", missing, first.sop_class_uid, "")]
    [problem] = kos.check_references_held(refs, moved)
    assert "not study" in problem and "series 1.2.3" in problem


def test_dicom_instances_are_read_and_re_encoded(study, tmp_path):
    inst = study.instances[0]
    path = tmp_path / "ct.dcm"
    path.write_bytes(inst.data)
    info = dicom.read_instance(path)
    assert (info.sop_instance_uid, info.series_uid, info.transfer_syntax_uid) == (
        inst.sop_instance_uid,
        inst.series_uid,
        ExplicitVRLittleEndian,
    )
    implicit = dicom.transcode(path, ImplicitVRLittleEndian, tmp_path / "spool")
    again = im.dataset(implicit)
    assert again.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert again.PixelData == im.dataset(inst.data).PixelData and again.SOPInstanceUID == inst.sop_instance_uid
    with pytest.raises(ValueError):
        dicom.transcode(path, "1.2.840.10008.1.2.4.50", tmp_path)
    not_dicom = tmp_path / "report.txt"
    not_dicom.write_bytes(b"FINDINGS: none")
    with pytest.raises(dicom.NotDicom):
        dicom.read_instance(not_dicom)
    assert isinstance(implicit, Path) and implicit.parent == tmp_path / "spool"
