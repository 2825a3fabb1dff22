"""DICOM instances the repository holds: reading their identity with pydicom, and re-encoding an
instance in another transfer syntax when a RAD-69 consumer does not accept the stored one.

What pydicom does on its own, without native codecs (RAD TF-3 4.69.4.2.3: the pixel data is encoded
in one of the transfer syntaxes the consumer lists, or that instance is an error):

- between the native little-endian syntaxes (Implicit VR, Explicit VR, Deflated Explicit VR):
  only the encoding of the data set changes, pixel values are copied as they are;
- into RLE Lossless (pydicom's own RLE encoder) from a native syntax;
- from RLE Lossless into a native syntax (pydicom's own RLE decoder).

Explicit VR Big Endian is retired (DICOM PS3.5 Annex A.3) and pydicom refuses to convert between
byte orders, so it is served only when stored that way; the JPEG family needs codecs this
repository does not ship, so such an instance is served only in its stored syntax.

Only the header is read to index an instance (``stop_before_pixels``); the bytes stored are always
the bytes received.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
# Native (uncompressed) little-endian encodings: converting between them leaves pixel values alone.
NATIVE = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN})
# Every syntax this repository can re-encode an instance into (from a syntax in TRANSCODABLE).
TRANSCODABLE = NATIVE | {RLE_LOSSLESS}


def can_transcode(stored: str, target: str) -> bool:
    """Whether an instance stored in ``stored`` can be re-encoded in ``target`` by pydicom alone."""
    return stored in TRANSCODABLE and target in TRANSCODABLE and stored != target


def transcode_target(stored: str, accepted: Sequence[str]) -> str | None:
    """The first of the consumer's ``accepted`` syntaxes (its order of preference) that an instance
    stored in ``stored`` can be re-encoded in; None when there is none."""
    return next((t for t in accepted if can_transcode(stored, t)), None)


@dataclass(frozen=True)
class InstanceInfo:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


class NotDicom(ValueError):
    """The bytes are not a DICOM Part 10 file with the identifying UIDs."""


def read_dataset(path: Path | BinaryIO, *, pixels: bool = False) -> Dataset:
    """The file (a path or a seekable binary file object) as a pydicom Dataset; NotDicom when it is
    not a DICOM Part 10 file."""
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


def _decode_rle(ds: Dataset) -> None:
    """Replace RLE Lossless pixel data by its native form (pydicom's own decoder, no NumPy)."""
    buffer, meta = get_decoder(RLE_LOSSLESS).as_buffer(ds, decoding_plugin="pydicom")
    pixels = bytes(buffer)
    if len(pixels) % 2:
        pixels += b"\0"
    ds.PixelData = pixels
    element = ds["PixelData"]
    element.VR = "OW" if int(meta.get("bits_allocated", ds.get("BitsAllocated", 8))) > 8 else "OB"
    element.is_undefined_length = False
    if "planar_configuration" in meta and int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = int(meta["planar_configuration"])


def transcode(path: Path, transfer_syntax_uid: str, spool_dir: Path) -> Path:
    """A copy of the instance at ``path`` encoded in ``transfer_syntax_uid``, written to a new 0600
    file in ``spool_dir``; the caller deletes it. ValueError when pydicom alone cannot do it
    (see ``can_transcode``)."""
    ds = _reencoded(pydicom.dcmread(path), transfer_syntax_uid)
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix="rad69-", suffix=".dcm")
    os.close(fd)
    try:
        ds.save_as(name, enforce_file_format=True)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def transcode_stream(source: BinaryIO, transfer_syntax_uid: str, out: BinaryIO) -> None:
    """``transcode`` between file objects: the instance read from ``source`` (seekable), encoded in
    ``transfer_syntax_uid``, written to ``out`` (a sealed spool writer, so no plaintext copy is
    on disk). ValueError as ``transcode``."""
    _reencoded(pydicom.dcmread(source), transfer_syntax_uid).save_as(out, enforce_file_format=True)


def _reencoded(ds: Dataset, transfer_syntax_uid: str) -> Dataset:
    stored = str(ds.file_meta.TransferSyntaxUID)
    if not can_transcode(stored, transfer_syntax_uid):
        raise ValueError(f"cannot re-encode an instance stored in {stored} in {transfer_syntax_uid}")
    has_pixels = "PixelData" in ds
    if stored == RLE_LOSSLESS and has_pixels:
        _decode_rle(ds)
    if transfer_syntax_uid == RLE_LOSSLESS and has_pixels:
        # Lossless: the same instance, so the same SOP Instance UID (pydicom would make a new one).
        ds.compress(RLE_LOSSLESS, encoding_plugin="pydicom", generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = transfer_syntax_uid
    return ds
