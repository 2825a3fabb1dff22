"""DICOM instances the repository holds: reading their identity with pydicom, and re-encoding an
uncompressed instance in the other little-endian transfer syntax when a RAD-69 consumer asks.

Only the header is read to index an instance (``stop_before_pixels``); the bytes stored are always
the bytes received.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
# Native (uncompressed) encodings pydicom converts between without touching pixel values.
TRANSCODABLE = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN})


@dataclass(frozen=True)
class InstanceInfo:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


class NotDicom(ValueError):
    """The bytes are not a DICOM Part 10 file with the identifying UIDs."""


def read_dataset(path: Path, *, pixels: bool = False) -> Dataset:
    """The file as a pydicom Dataset; NotDicom when it is not a DICOM Part 10 file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        raise NotDicom(f"not a DICOM Part 10 file: {exc}") from exc


def instance_info(ds: Dataset) -> InstanceInfo:
    """The UIDs that identify an instance; NotDicom when one is missing."""
    meta = getattr(ds, "file_meta", None)
    values = {
        "StudyInstanceUID": str(ds.get("StudyInstanceUID", "") or ""),
        "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "") or ""),
        "SOPInstanceUID": str(ds.get("SOPInstanceUID", "") or ""),
        "SOPClassUID": str(ds.get("SOPClassUID", "") or ""),
        "TransferSyntaxUID": str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else "",
    }
    missing = [k for k, v in values.items() if not v]
    if missing:
        raise NotDicom(f"the DICOM file lacks {', '.join(missing)}")
    return InstanceInfo(
        values["StudyInstanceUID"],
        values["SeriesInstanceUID"],
        values["SOPInstanceUID"],
        values["SOPClassUID"],
        values["TransferSyntaxUID"],
    )


def read_instance(path: Path) -> InstanceInfo:
    return instance_info(read_dataset(path))


def transcode(path: Path, transfer_syntax_uid: str, spool_dir: Path) -> Path:
    """A copy of the instance at ``path`` encoded in ``transfer_syntax_uid`` (one of TRANSCODABLE),
    written to a new 0600 file in ``spool_dir``; the caller deletes it."""
    if transfer_syntax_uid not in TRANSCODABLE:
        raise ValueError(f"cannot encode in {transfer_syntax_uid}")
    ds = pydicom.dcmread(path)
    if str(ds.file_meta.TransferSyntaxUID) not in TRANSCODABLE:
        raise ValueError(f"cannot re-encode an instance stored in {ds.file_meta.TransferSyntaxUID}")
    ds.file_meta.TransferSyntaxUID = transfer_syntax_uid
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix="rad69-", suffix=".dcm")
    os.close(fd)
    try:
        ds.save_as(name, enforce_file_format=True)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)
