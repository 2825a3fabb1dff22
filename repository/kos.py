"""The XDS-I.b imaging manifest: a DICOM Key Object Selection (KOS) document (RAD TF-3 4.68.4.1.2),
checked with pydicom, as pure functions of the parsed dataset.

A manifest is valid when it is a KOS (SOP Class 1.2.840.10008.5.1.4.1.1.88.59, Modality KO) titled
(113030, DCM, "Manifest"); its SOP Instance UID is the DocumentEntry's uniqueId; its Current
Requested Procedure Evidence Sequence lists, study by study and series by series, every instance it
references, each series with the Retrieve Location UID of the repository that serves it (here:
this repository, since the edge sends the images along); and every instance its content refers to
is one of those. In this clearinghouse the referenced instances must be held (sent in the same
submission or earlier) so that a consumer can retrieve them with RAD-69.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.dataset import Dataset

from repository.dicom import InstanceInfo

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
MANIFEST_TITLE = ("113030", "DCM")


@dataclass(frozen=True)
class Reference:
    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    retrieve_location_uid: str


def _text(item: Dataset, keyword: str) -> str:
    return str(item.get(keyword, "") or "").strip()


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    return list(ds.get(keyword, None) or [])


def evidence(ds: Dataset) -> tuple[list[Reference], list[str]]:
    """The instances the Current Requested Procedure Evidence Sequence lists, and what is missing
    from it."""
    refs: list[Reference] = []
    problems: list[str] = []
    studies = _items(ds, "CurrentRequestedProcedureEvidenceSequence")
    if not studies:
        problems.append("Current Requested Procedure Evidence Sequence (0040,A375) is missing or empty")
    for i, study in enumerate(studies, 1):
        study_uid = _text(study, "StudyInstanceUID")
        if not study_uid:
            problems.append(f"evidence item {i} has no Study Instance UID")
        series_items = _items(study, "ReferencedSeriesSequence")
        if not series_items:
            problems.append(f"study {study_uid or i} lists no Referenced Series Sequence (0008,1115)")
        for series in series_items:
            series_uid = _text(series, "SeriesInstanceUID")
            location = _text(series, "RetrieveLocationUID")
            if not series_uid:
                problems.append(f"a series of study {study_uid} has no Series Instance UID")
            if not location:
                problems.append(f"series {series_uid} has no Retrieve Location UID (0040,E011)")
            sops = _items(series, "ReferencedSOPSequence")
            if not sops:
                problems.append(f"series {series_uid} lists no Referenced SOP Sequence (0008,1199)")
            for sop in sops:
                sop_class, sop_instance = _text(sop, "ReferencedSOPClassUID"), _text(sop, "ReferencedSOPInstanceUID")
                if not sop_class or not sop_instance:
                    problems.append(f"an instance of series {series_uid} lacks its SOP Class or SOP Instance UID")
                    continue
                refs.append(Reference(study_uid, series_uid, sop_class, sop_instance, location))
    return refs, problems


def content_references(ds: Dataset) -> set[str]:
    """SOP Instance UIDs the content tree refers to (IMAGE and COMPOSITE items, at any depth)."""
    found: set[str] = set()
    stack = _items(ds, "ContentSequence")
    while stack:
        item = stack.pop()
        for sop in _items(item, "ReferencedSOPSequence"):
            uid = _text(sop, "ReferencedSOPInstanceUID")
            if uid:
                found.add(uid)
        stack.extend(_items(item, "ContentSequence"))
    return found


def check_manifest(ds: Dataset, *, unique_id: str, repository_unique_id: str) -> list[str]:
    """What is wrong with ``ds`` as the manifest registered under ``unique_id``; empty if nothing."""
    problems = []
    sop_class = _text(ds, "SOPClassUID")
    if sop_class != KOS_SOP_CLASS:
        return [f"SOP Class {sop_class or '(none)'} is not Key Object Selection Document ({KOS_SOP_CLASS})"]
    if _text(ds, "Modality") != "KO":
        problems.append(f"Modality is {_text(ds, 'Modality') or '(none)'}, not KO")
    title = _items(ds, "ConceptNameCodeSequence")
    code = (_text(title[0], "CodeValue"), _text(title[0], "CodingSchemeDesignator")) if title else ("", "")
    if code != MANIFEST_TITLE:
        problems.append(f"the document title {code} is not (113030, DCM, Manifest)")
    if _text(ds, "SOPInstanceUID") != unique_id:
        problems.append(
            f"SOP Instance UID {_text(ds, 'SOPInstanceUID')} differs from the DocumentEntry uniqueId {unique_id}"
        )
    refs, gaps = evidence(ds)
    problems += gaps
    for location in sorted({r.retrieve_location_uid for r in refs if r.retrieve_location_uid}):
        if location != repository_unique_id:
            problems.append(
                f"Retrieve Location UID {location} is not this repository ({repository_unique_id}), which holds "
                "the images the manifest references"
            )
    listed = {r.sop_instance_uid for r in refs}
    for uid in sorted(content_references(ds) - listed):
        problems.append(f"the content refers to instance {uid}, which the evidence sequence does not list")
    return problems


def check_references_held(refs: list[Reference], held: Mapping[str, list[InstanceInfo]]) -> list[str]:
    """Each referenced instance is held (``held``: SOP Instance UID -> instances with that UID),
    in the study and series the manifest says, of the SOP Class it says."""
    problems = []
    for ref in refs:
        candidates = held.get(ref.sop_instance_uid, [])
        if not candidates:
            problems.append(
                f"instance {ref.sop_instance_uid} (series {ref.series_uid}) is neither in this submission nor "
                "held by the repository; send the images with their manifest"
            )
            continue
        if not any(c.study_uid == ref.study_uid and c.series_uid == ref.series_uid for c in candidates):
            c = candidates[0]
            problems.append(
                f"instance {ref.sop_instance_uid} belongs to study {c.study_uid} series {c.series_uid}, "
                f"not study {ref.study_uid} series {ref.series_uid} as the manifest says"
            )
        elif not any(c.sop_class_uid == ref.sop_class_uid for c in candidates):
            problems.append(
                f"instance {ref.sop_instance_uid} is of SOP Class {candidates[0].sop_class_uid}, "
                f"not {ref.sop_class_uid} as the manifest says"
            )
    return problems
