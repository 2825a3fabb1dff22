"""What an edge sends: the DICOM instances of a study (files or folders) and its report, read
without loading pixel data, with size and SHA-1 computed by streaming each file once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

CHUNK = 1 << 20
REPORT_TYPES = {".txt": "text/plain", ".pdf": "application/pdf"}


class StudyError(ValueError):
    """The files given do not make a study that can be sent; the message says which file and why."""


@dataclass(frozen=True)
class Instance:
    path: Path
    size: int
    sha1: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    study_datetime: str  # DTM, may be empty
    description: str


@dataclass(frozen=True)
class Report:
    path: Path
    size: int
    sha1: str
    mime_type: str


@dataclass
class Study:
    instances: list[Instance] = field(default_factory=list)
    report: Report | None = None

    @property
    def study_uids(self) -> set[str]:
        return {i.study_instance_uid for i in self.instances}

    @property
    def modalities(self) -> list[str]:
        return sorted({i.modality for i in self.instances if i.modality})

    @property
    def total_bytes(self) -> int:
        return sum(i.size for i in self.instances) + (self.report.size if self.report else 0)


def digest(path: Path) -> tuple[int, str]:
    sha, size = hashlib.sha1(), 0  # noqa: S324 - XDS defines the document hash as SHA-1
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            sha.update(block)
            size += len(block)
    return size, sha.hexdigest()


def _dtm(date: str, time: str) -> str:
    date = "".join(c for c in date if c.isdigit())[:8]
    time = "".join(c for c in time.split(".")[0] if c.isdigit())[:6]
    return (date + time) if len(date) == 8 else ""


def read_instance(path: Path) -> Instance:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as exc:
        raise StudyError(f"{path}: not a readable DICOM file ({exc})") from exc
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID") if not ds.get(k)]
    if missing:
        raise StudyError(f"{path}: DICOM file lacks {', '.join(missing)}")
    size, sha1 = digest(path)
    return Instance(
        path=path,
        size=size,
        sha1=sha1,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        study_instance_uid=str(ds.StudyInstanceUID),
        modality=str(ds.get("Modality", "")),
        study_datetime=_dtm(str(ds.get("StudyDate", "")), str(ds.get("StudyTime", ""))),
        description=str(ds.get("StudyDescription", "") or ds.get("SeriesDescription", "")),
    )


def collect(paths: list[Path], report: Path | None = None) -> Study:
    """The study made of ``paths`` (DICOM files, or folders searched recursively) and the report."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise StudyError(f"{p}: no such file or folder")
    study = Study(instances=[read_instance(f) for f in files])
    if len({i.sop_instance_uid for i in study.instances}) != len(study.instances):
        raise StudyError("the same SOP Instance UID appears in two files")
    if report is not None:
        mime = REPORT_TYPES.get(report.suffix.lower())
        if mime is None:
            raise StudyError(f"{report}: a report must be .txt or .pdf")
        size, sha1 = digest(report)
        study.report = Report(report, size, sha1, mime)
    if not study.instances and study.report is None:
        raise StudyError("nothing to send: give DICOM files or folders, or a report")
    return study
