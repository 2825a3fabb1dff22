"""No document plaintext at rest in the spool: ITI-41 attachments and inline documents in flight, and
RAD-69's re-encoded copies, are sealed under a key made for each file and held only in memory
(clearinghouse/soap/spool.py, docs/storage.md)."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from pathlib import Path

import edge
import pytest
import xds_samples as xs
from lxml import etree
from pydicom.data import get_testdata_file

from clearinghouse.segmented_aead import SEGMENT, sealed_size
from clearinghouse.soap.mtom import MtomPart, cid_href
from clearinghouse.soap.spool import SpoolReader, SpoolTampered, SpoolWriter
from clearinghouse.xmlsafe import NS, qname
from repository import crypto, dicom
from repository.imaging import _sealed_reencoded
from repository.provide import _spool_inline
from repository.store import FilesystemStore
from repository.store_sealed import SealedStore

MARKER = b"PLAINTEXT-MARKER"


def _report(size: int) -> bytes:
    lines = b"".join(MARKER + b" line %08d of a radiology report\n" % i for i in range(size // 40 + 1))
    return lines[:size]


def _write(directory: Path, data: bytes, piece: int = 65537, segment: int = SEGMENT):  # noqa: ANN202
    with SpoolWriter(directory, segment=segment) as w:
        for i in range(0, len(data), piece):
            w.write(data[i : i + piece])
    assert w.spool is not None
    return w.spool


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5])
def test_spool_round_trip_at_segment_boundaries(tmp_path, size):
    data = _report(size)
    spool = _write(tmp_path, data, piece=1000, segment=4096)
    raw = spool.path.read_bytes()
    assert len(raw) == sealed_size(size, 4096)
    if size >= len(MARKER):
        assert MARKER not in raw
    with spool.open() as r:
        assert r.read() == data
        for offset in (0, size // 3, size - 1, size):
            r.seek(max(0, offset))
            assert r.read(5000) == data[max(0, offset) : max(0, offset) + 5000]


def test_spool_is_the_stored_documents_sealed_format(tmp_path):
    # The same layout as repository/crypto.py, so a spool file reads as a stored object would.
    data = _report(3 * SEGMENT + 123)
    spool = _write(tmp_path, data)
    raw = spool.path.read_bytes()
    assert len(raw) == crypto.sealed_size(len(data))
    chunks = (raw[i : i + 100_000] for i in range(0, len(raw), 100_000))
    assert b"".join(crypto.open_stream(chunks, spool.key, len(data))) == data
    assert MARKER not in raw and os.stat(spool.path).st_mode & 0o077 == 0


def test_each_spool_file_has_its_own_key_and_tampering_shows(tmp_path):
    data = _report(2 * SEGMENT + 7)
    a, b = _write(tmp_path, data), _write(tmp_path, data)
    assert a.key != b.key and a.path.read_bytes() != b.path.read_bytes()
    with pytest.raises(SpoolTampered), SpoolReader(a.path, b.key, a.size) as wrong:
        wrong.read()
    raw = bytearray(a.path.read_bytes())
    raw[40] ^= 1
    a.path.write_bytes(bytes(raw))
    with pytest.raises(SpoolTampered), a.open() as r:
        r.read()
    b.path.write_bytes(b.path.read_bytes()[:-10])  # truncated
    with pytest.raises(SpoolTampered), b.open() as r:
        r.seek(2 * SEGMENT)
        r.read()


def test_discarded_spool_is_gone(tmp_path):
    w = SpoolWriter(tmp_path)
    w.write(b"x" * 10)
    w.discard()
    assert not w.path.exists() and list(tmp_path.iterdir()) == []


def test_inline_documents_are_spooled_sealed(tmp_path):
    data = _report(SEGMENT + 999)
    path, size, sha1, spool = _spool_inline(base64.b64encode(data).decode(), tmp_path, 10 * SEGMENT)
    assert (size, sha1) == (len(data), hashlib.sha1(data).hexdigest())
    assert MARKER not in path.read_bytes()
    with spool.open() as r:
        assert r.read() == data


def test_rad69_reencoded_copy_is_sealed(tmp_path):
    """The re-encoding reads a sealed copy of the stored instance and writes a sealed result: the bytes
    on disk are never the instance's, and the result is what re-encoding the plaintext gives."""
    source = Path(get_testdata_file("CT_small.dcm"))
    plain = source.read_bytes()
    store = SealedStore(FilesystemStore(tmp_path / "docs"), None, encrypt=False)
    staged = tmp_path / "staged.dcm"
    staged.write_bytes(plain)
    at_rest = store.put(staged, len(plain))
    row = _Row(at_rest.key, len(plain), hashlib.sha1(plain).hexdigest())
    spool_dir = tmp_path / "spool"
    copy = _sealed_reencoded(store, row, dicom.IMPLICIT_VR_LITTLE_ENDIAN, spool_dir)  # type: ignore[arg-type]
    expected = dicom.transcode(source, dicom.IMPLICIT_VR_LITTLE_ENDIAN, tmp_path / "plain").read_bytes()
    assert list(spool_dir.iterdir()) == [copy.path]  # the sealed source copy is already deleted
    raw = copy.path.read_bytes()
    with copy.open() as r:
        assert r.read() == expected
    pixels = dicom.read_dataset(source, pixels=True).PixelData[1000:1512]  # unchanged by a native re-encoding
    assert pixels in plain and pixels in expected
    assert pixels not in raw and b"DICM" not in raw


class _Row:
    """The columns of a repository_document row that reading a plaintext document uses."""

    def __init__(self, key: str, size: int, sha1: str) -> None:
        self.store_key, self.size, self.sha1 = key, size, sha1
        self.unique_id, self.encryption, self.kek_id, self.wrapped_dek = "1.2.3", crypto.PLAINTEXT, None, None


def test_upload_spool_holds_no_plaintext_while_the_upload_is_in_flight(clearinghouse):
    """A real ITI-41 over HTTPS/MTOM whose attachment stops half way: while the server holds the part
    received so far on disk, no spool file contains the document's bytes; then it completes and
    ITI-43 returns exactly the document."""
    running = clearinghouse
    patient = edge.patient_for(edge.new_access_code(), "19700412")
    client = running.feed_client("edge")
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()
    data = _report(4 * SEGMENT + 321)
    half = 5 * SEGMENT // 2
    uid = xs.new_oid()
    spec = xs.DocSpec(
        unique_id=uid,
        mime_type="text/plain",
        content=data,
        title="Streamed report",
        class_code=xs.CLASS_REPORTS,
        format_code=edge.FORMAT_TEXT_REPORT,
    )
    request = xs.provide_and_register(patient, [spec])
    [document] = request.findall("xdsb:Document", NS)
    document.text = None
    cid = "streamed-1@edge.test"
    etree.SubElement(document, qname("xop", "Include"), nsmap={"xop": NS["xop"]}, href=cid_href(cid))
    resume, done = threading.Event(), {}

    def chunks():  # noqa: ANN202
        for i in range(0, half, 65536):
            yield data[i : min(i + 65536, half)]
        assert resume.wait(60), "the test never resumed the upload"
        for i in range(half, len(data), 65536):
            yield data[i : i + 65536]

    def upload() -> None:
        try:
            done["reply"] = running.soap("edge", "/xds/repository").call(
                edge.ITI41, request, attachments=[MtomPart(cid, "text/plain", chunks, len(data))], mtom=True
            )
        except BaseException as exc:  # noqa: BLE001 - asserted below
            done["error"] = exc

    spool_dir = running.settings.spool_dir
    before = set(spool_dir.iterdir())
    thread = threading.Thread(target=upload)
    thread.start()
    try:
        # Wait until the server has sealed at least one segment of the part to its spool file (the
        # client sends in 1 MiB pieces and the writer holds back the segment that may be the last).
        deadline = time.monotonic() + 30
        in_flight: list[Path] = []
        while time.monotonic() < deadline:
            in_flight = [p for p in set(spool_dir.iterdir()) - before if p.stat().st_size > SEGMENT]
            if in_flight:
                break
            time.sleep(0.05)
        assert in_flight, f"no spool file grew during the upload: {sorted(spool_dir.iterdir())}"
        for path in spool_dir.iterdir():
            raw = path.read_bytes()
            assert MARKER not in raw, f"{path.name} holds document plaintext"
            assert data[:64] not in raw and data[SEGMENT : SEGMENT + 64] not in raw
    finally:
        resume.set()
        thread.join(60)
    assert "error" not in done, done.get("error")
    assert done["reply"].body.get("status") == edge.SUCCESS, edge.errors_of(done["reply"].body)
    assert set(spool_dir.iterdir()) - before == set()  # the spool file went into the store
    got = edge.retrieve(running.soap("phr", "/xds/repository"), [uid])
    try:
        assert edge.retrieved_documents(got) == {uid: data}
    finally:
        got.close()
