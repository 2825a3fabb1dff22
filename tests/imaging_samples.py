"""XDS-I.b test material built with pydicom from its sample files: a study of real DICOM instances
(re-identified so every test has its own UIDs), the Key Object Selection manifest that references
them, the RAD-68 DocumentEntries, and RAD-69 requests."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from lxml import etree
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from clearinghouse.xmlsafe import NS, qname
from tests import xds_samples as xs

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
DICOM_UID_REGISTRY = "1.2.840.10008.2.6.1"
XDSI = "urn:ihe:rad:xdsi-b:2009"
RAD69 = "urn:ihe:rad:2009:RetrieveImagingDocumentSet"


@dataclass
class Instance:
    data: bytes
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass
class ImagingStudy:
    study_uid: str
    instances: list[Instance] = field(default_factory=list)


def _encode(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def imaging_study(series: dict[str, int] | None = None) -> ImagingStudy:
    """A new study: for each sample file named in ``series``, one series of that many instances,
    each a copy of the sample with fresh Study/Series/SOP Instance UIDs."""
    study = ImagingStudy(generate_uid())
    for sample, count in (series or {"CT_small.dcm": 2, "MR_small.dcm": 1}).items():
        series_uid = generate_uid()
        for n in range(count):
            ds = pydicom.dcmread(get_testdata_file(sample))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = n + 1
            study.instances.append(
                Instance(
                    _encode(ds),
                    study.study_uid,
                    series_uid,
                    str(ds.SOPInstanceUID),
                    str(ds.SOPClassUID),
                    str(ds.file_meta.TransferSyntaxUID),
                )
            )
    return study


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def manifest_dataset(
    study: ImagingStudy, retrieve_location_uid: str, instances: list[Instance] | None = None
) -> Dataset:
    """A Key Object Selection Document titled Manifest (113030, DCM) referencing ``instances`` (all
    of the study's by default), as an XDS-I.b Imaging Document Source writes it."""
    chosen = study.instances if instances is None else instances
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = KOS_SOP_CLASS
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = KOS_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.study_uid, generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "KO", 99, 1
    ds.PatientID, ds.PatientName = "RSNA-ID", "^"
    ds.ContentDate, ds.ContentTime = "20240105", "101500"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("113030", "DCM", "Manifest")])
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "2010"
    ds.ContentTemplateSequence = Sequence([template])
    series_items = []
    for series_uid in dict.fromkeys(i.series_uid for i in chosen):
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.RetrieveLocationUID = retrieve_location_uid
        refs = []
        for inst in (i for i in chosen if i.series_uid == series_uid):
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = inst.sop_class_uid, inst.sop_instance_uid
            refs.append(ref)
        item.ReferencedSOPSequence = Sequence(refs)
        series_items.append(item)
    evidence = Dataset()
    evidence.StudyInstanceUID = study.study_uid
    evidence.ReferencedSeriesSequence = Sequence(series_items)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    content = []
    for inst in chosen:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = inst.sop_class_uid, inst.sop_instance_uid
        item.ReferencedSOPSequence = Sequence([ref])
        content.append(item)
    ds.ContentSequence = Sequence(content)
    return ds


def manifest(study: ImagingStudy, retrieve_location_uid: str, instances: list[Instance] | None = None) -> bytes:
    return _encode(manifest_dataset(study, retrieve_location_uid, instances))


def kos_uid(kos: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(kos)).SOPInstanceUID)


def rad68_documents(study: ImagingStudy, kos: bytes, *, images: list[Instance] | None = None) -> list[xs.DocSpec]:
    """The DocumentEntries of a RAD-68 submission: the manifest (uniqueId = its SOP Instance UID,
    formatCode = the KOS SOP Class) and each image (uniqueId = SOP Instance UID, formatCode = its
    SOP Class)."""
    docs = [
        xs.DocSpec(
            unique_id=kos_uid(kos),
            mime_type="application/dicom",
            content=kos,
            title="Imaging manifest",
            format_code=xs.Code(KOS_SOP_CLASS, DICOM_UID_REGISTRY, "Key Object Selection Document"),
        )
    ]
    for inst in study.instances if images is None else images:
        docs.append(
            xs.DocSpec(
                unique_id=inst.sop_instance_uid,
                mime_type="application/dicom",
                content=inst.data,
                title="Image",
                format_code=xs.Code(inst.sop_class_uid, DICOM_UID_REGISTRY, "DICOM image"),
            )
        )
    return docs


def rad69_request(
    wanted: list[tuple[str, str, str]],
    repository_unique_id: str,
    transfer_syntaxes: list[str] | None = None,
) -> etree._Element:
    """A RetrieveImagingDocumentSetRequest for (study, series, SOP instance) triples."""
    root = etree.Element(f"{{{XDSI}}}RetrieveImagingDocumentSetRequest", nsmap={"xdsi": XDSI, "xdsb": NS["xdsb"]})
    studies: dict[str, etree._Element] = {}
    series: dict[tuple[str, str], etree._Element] = {}
    for study_uid, series_uid, sop_uid in wanted:
        if study_uid not in studies:
            studies[study_uid] = etree.SubElement(root, f"{{{XDSI}}}StudyRequest", studyInstanceUID=study_uid)
        key = (study_uid, series_uid)
        if key not in series:
            series[key] = etree.SubElement(studies[study_uid], f"{{{XDSI}}}SeriesRequest", seriesInstanceUID=series_uid)
        dr = etree.SubElement(series[key], qname("xdsb", "DocumentRequest"))
        etree.SubElement(dr, qname("xdsb", "RepositoryUniqueId")).text = repository_unique_id
        etree.SubElement(dr, qname("xdsb", "DocumentUniqueId")).text = sop_uid
    syntaxes = etree.SubElement(root, f"{{{XDSI}}}TransferSyntaxUIDList")
    for ts in transfer_syntaxes or [ExplicitVRLittleEndian]:
        etree.SubElement(syntaxes, f"{{{XDSI}}}TransferSyntaxUID").text = ts
    return root


def dataset(data: bytes | Path) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data) if isinstance(data, bytes) else data)
