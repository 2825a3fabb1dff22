"""Streaming MTOM/XOP codec: round trips, chunk-edge robustness, peer dialects, malformed input, memory."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import io
import os
import random
import stat
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from clearinghouse.errors import SoapFaultError
from clearinghouse.soap.mtom import (
    MtomError,
    MtomPart,
    MtomWriter,
    cid_href,
    content_id_for,
    find_xop_includes,
    is_xop_include,
    make_xop_include,
    parse_content_type,
    parse_multipart_related,
    xop_href,
)
from clearinghouse.xmlsafe import parse_xml

MB = 1 << 20
BOUNDARY = "MIMEBoundary_test"

# Content that tries hard to confuse a boundary scanner without being a delimiter.
TRICKY = (
    b"\r\n--MIMEBoundary_tes"
    + b"\r\n--\r\n"
    + b"--MIMEBoundary_tesT"
    + b"\r\n\r\n--"
    + bytes(range(256))
    + b"\r\n--MIMEBoundary_te\r\n--MIMEBoundary_tesX\r"
)


def envelope(*hrefs: str) -> bytes:
    docs = "".join(f'<xdsb:Document id="Doc{i}"><xop:Include href="{h}"/></xdsb:Document>' for i, h in enumerate(hrefs))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:xdsb="urn:ihe:iti:xds-b:2007" xmlns:xop="http://www.w3.org/2004/08/xop/include">'
        f"<s:Header/><s:Body><xdsb:ProvideAndRegisterDocumentSetRequest>{docs}"
        "</xdsb:ProvideAndRegisterDocumentSetRequest></s:Body></s:Envelope>"
    ).encode()


def parse(body: bytes, content_type: str, spool: Path, chunk_size: int = 64 * 1024, **kw):
    kw.setdefault("max_root_bytes", MB)
    kw.setdefault("max_total_bytes", 64 * MB)
    return parse_multipart_related(io.BytesIO(body), content_type, spool, chunk_size=chunk_size, **kw)


def spool_files(spool: Path) -> list[Path]:
    return sorted(spool.iterdir()) if spool.exists() else []


class PiecewiseStream:
    """A stream whose read() returns the given pieces one by one, whatever size is asked for."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    def read(self, n: int = -1) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


PARTS = [
    ("a@test", "application/dicom", TRICKY),
    ("b@test", "application/octet-stream", b""),  # empty attachment
    ("c@test", "text/plain", b"ends with CR\r"),
    ("d@test", "text/plain", b"ends with CRLF\r\n"),
    ("e@test", "application/octet-stream", b"--"),
]


@pytest.fixture(scope="module")
def sample() -> tuple[bytes, str, bytes]:
    root = envelope(*(cid_href(cid) for cid, _, _ in PARTS))
    writer = MtomWriter(root, PARTS, boundary=BOUNDARY, root_content_id="root@test")
    return b"".join(writer), writer.content_type, root


def check_sample(msg, root: bytes) -> None:
    assert msg.root == root
    assert msg.root_content_id == "root@test"
    assert msg.root_content_type == 'application/xop+xml; charset=UTF-8; type="application/soap+xml"'
    assert list(msg.attachments) == [cid for cid, _, _ in PARTS]
    for cid, ctype, data in PARTS:
        att = msg.attachments[cid]
        assert att.content_type == ctype
        assert att.size == len(data)
        assert att.sha1 == hashlib.sha1(data).hexdigest()
        assert att.path.read_bytes() == data
        with att.open() as fh:
            assert fh.read() == data


# --------------------------------------------------------------------------- round trip


def test_round_trip_several_parts(tmp_path, sample):
    body, ctype, root = sample
    spool = tmp_path / "spool"  # created on demand
    with parse(body, ctype, spool) as msg:
        check_sample(msg, root)
        for include in find_xop_includes(parse_xml(msg.root, max_bytes=MB, max_depth=64)):
            assert msg.resolve_cid(xop_href(include)).path.exists()
        files = spool_files(spool)
        assert len(files) == len(PARTS)
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert spool_files(spool) == []


def test_round_trip_random_binary(tmp_path):
    rng = random.Random(7)
    parts = [(content_id_for(i), "application/dicom", rng.randbytes(rng.randrange(1, 300_000))) for i in range(4)]
    writer = MtomWriter(envelope(*(cid_href(c) for c, _, _ in parts)), parts)
    body = b"".join(writer)
    assert writer.content_length == len(body)
    with parse(body, writer.content_type, tmp_path, chunk_size=4093) as msg:
        for cid, _, data in parts:
            assert msg.resolve_cid(cid_href(cid)).read_bytes() == data


@pytest.mark.parametrize("chunk_size", list(range(1, 41)) + [63, 64, 65, 127, 509])
def test_every_chunk_size(tmp_path, sample, chunk_size):
    body, ctype, root = sample
    with parse(body, ctype, tmp_path, chunk_size=chunk_size) as msg:
        check_sample(msg, root)


def test_split_at_every_position(tmp_path, sample):
    body, ctype, root = sample
    for k in range(1, len(body)):
        stream = PiecewiseStream([body[:k], body[k:]])
        with parse_multipart_related(stream, ctype, tmp_path, max_root_bytes=MB, max_total_bytes=MB) as msg:
            check_sample(msg, root)
    assert spool_files(tmp_path) == []


def test_boundary_in_the_middle_of_a_line_is_data(tmp_path):
    # RFC 2046 only forbids the boundary at the start of a line; our writer avoids it
    # anywhere, but a peer may legally send this.
    data = b"abc--bb--\r\nx--bb\r\n--b\r--bb"
    body = b"--bb\r\n\r\n<r/>\r\n--bb\r\nContent-ID: <x>\r\n\r\n" + data + b"\r\n--bb--\r\n"
    for chunk_size in range(1, 12):
        with parse(body, "multipart/related; boundary=bb", tmp_path, chunk_size=chunk_size) as msg:
            assert msg.resolve_cid("cid:x").read_bytes() == data


def test_claimed_file_survives_close(tmp_path, sample):
    body, ctype, _ = sample
    msg = parse(body, ctype, tmp_path)
    kept = msg.attachments["a@test"].claim()
    other = msg.attachments["c@test"].path
    msg.close()
    msg.close()  # idempotent
    assert kept.read_bytes() == TRICKY
    assert not other.exists()
    with pytest.raises(MtomError, match="already discarded"):
        msg.attachments["c@test"].claim()


def test_spool_files_removed_when_message_is_garbage_collected(tmp_path, sample):
    body, ctype, _ = sample
    parse(body, ctype, tmp_path)  # dropped without close()
    assert spool_files(tmp_path) == []


# --------------------------------------------------------------------------- encodings and ids


def test_base64_part_decoded_incrementally(tmp_path):
    data = random.Random(1).randbytes(10_000)
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")  # 76-column lines, as MIME does
    body = (
        b"--bb\r\nContent-Type: application/xop+xml\r\nContent-ID: <root>\r\n\r\n<r/>"
        b"\r\n--bb\r\nContent-Type: application/dicom\r\nContent-Transfer-Encoding: BASE64\r\n"
        b"Content-ID: <img>\r\n\r\n" + encoded + b"\r\n--bb--\r\n"
    )
    for chunk_size in (1, 3, 77, 4096):
        with parse(body, "multipart/related; boundary=bb", tmp_path, chunk_size=chunk_size) as msg:
            att = msg.resolve_cid("cid:img")
            assert att.read_bytes() == data
            assert att.size == len(data)
            assert att.sha1 == hashlib.sha1(data).hexdigest()


@pytest.mark.parametrize(
    "payload, reason",
    [(b"QU*D", "invalid base64"), (b"QUJDR", "truncated"), (b"QQ==QUJD", "padding")],
)
def test_bad_base64(tmp_path, payload, reason):
    body = (
        b"--bb\r\n\r\n<r/>\r\n--bb\r\nContent-ID: <x>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + payload
        + b"\r\n--bb--"
    )
    with pytest.raises(MtomError, match=reason):
        parse(body, "multipart/related; boundary=bb", tmp_path)
    assert spool_files(tmp_path) == []


def test_base64_data_after_padding_in_a_later_read(tmp_path):
    head = b"--bb\r\n\r\n<r/>\r\n--bb\r\nContent-ID: <x>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    head += b"QQ==" + b" " * 9  # long enough to be decoded before the next read arrives
    stream = PiecewiseStream([head, b"\r\nQUJD\r\n--bb--"])
    with pytest.raises(MtomError, match="continues after the final padding"):
        parse_multipart_related(
            stream, "multipart/related; boundary=bb", tmp_path, max_root_bytes=MB, max_total_bytes=MB
        )
    assert spool_files(tmp_path) == []


def test_percent_encoded_cid_hrefs(tmp_path):
    cid = "1.urn:uuid:D5B2A1F0-93E1-11E3-A5E2-0800200C9A66@apache.org"
    assert cid_href(cid) == "cid:1.urn%3Auuid%3AD5B2A1F0-93E1-11E3-A5E2-0800200C9A66@apache.org"
    assert cid_href(f"<{cid}>") == cid_href(cid)
    writer = MtomWriter(envelope(cid_href(cid)), [(cid, "text/xml", b"<doc/>")])
    with parse(b"".join(writer), writer.content_type, tmp_path) as msg:
        assert list(msg.attachments) == [cid]
        for href in (
            cid_href(cid),
            f"cid:{cid}",  # unencoded, as some stacks send it
            "CID:1.urn%3auuid%3AD5B2A1F0-93E1-11E3-A5E2-0800200C9A66%40apache.org",
            f" cid:<{cid}> ",
        ):
            assert msg.resolve_cid(href).read_bytes() == b"<doc/>"
        with pytest.raises(MtomError, match="names no MIME part"):
            msg.resolve_cid("cid:2.urn%3Auuid%3Aother@apache.org")
        with pytest.raises(MtomError, match="not a cid: URL"):
            msg.resolve_cid("http://example.org/doc")
        with pytest.raises(MtomError, match="names no MIME part"):
            msg.resolve_cid(f"cid:{msg.root_content_id}")  # the root is not an attachment


def test_content_id_for_is_unique():
    ids = {content_id_for(1) for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("doc1.") and i.endswith("@clearinghouse.invalid") for i in ids)
    assert content_id_for(3, "example.org").endswith("@example.org")


def test_parse_content_type_robust():
    media, params = parse_content_type(
        ' Multipart/Related ;BOUNDARY = "a;b\\"c" ; Type=application/xop+xml;'
        ' start="<0.root@x>";start-info="application/soap+xml"; ; junk'
    )
    assert media == "multipart/related"
    assert params == {
        "boundary": 'a;b"c',
        "type": "application/xop+xml",
        "start": "<0.root@x>",
        "start-info": "application/soap+xml",
    }


# --------------------------------------------------------------------------- peer dialects

AXIS2_ENVELOPE = (
    b"<?xml version='1.0' encoding='UTF-8'?><soapenv:Envelope xmlns:soapenv=\"http://www.w3.org/2003/05/soap-envelope\">"
    b'<soapenv:Body><xdsb:ProvideAndRegisterDocumentSetRequest xmlns:xdsb="urn:ihe:iti:xds-b:2007">'
    b'<xdsb:Document id="Document01"><xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" '
    b'href="cid:1.urn:uuid:6A2B1E0C9C1E4F39A31445071016373@apache.org"/></xdsb:Document>'
    b"</xdsb:ProvideAndRegisterDocumentSetRequest></soapenv:Body></soapenv:Envelope>"
)


def test_axis2_style_message(tmp_path):
    # Axis2 1.x: unquoted boundary, a preamble, start with angle brackets, action on the outer type.
    ctype = (
        "multipart/related; boundary=MIMEBoundary_6a2b1e0c9c1e4f39a31445071016373; "
        'type="application/xop+xml"; start="<0.urn:uuid:6A2B1E0C9C1E4F39A31445071016372@apache.org>"; '
        'start-info="application/soap+xml"; action="urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"'
    )
    body = (
        b"This is a multi-part message in MIME format.\r\n"
        b"\r\n--MIMEBoundary_6a2b1e0c9c1e4f39a31445071016373\r\n"
        b'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"\r\n'
        b"Content-Transfer-Encoding: binary\r\n"
        b"Content-ID: <0.urn:uuid:6A2B1E0C9C1E4F39A31445071016372@apache.org>\r\n\r\n"
        + AXIS2_ENVELOPE
        + b"\r\n--MIMEBoundary_6a2b1e0c9c1e4f39a31445071016373\r\n"
        b"Content-Type: text/xml\r\n"
        b"Content-Transfer-Encoding: binary\r\n"
        b"Content-ID: <1.urn:uuid:6A2B1E0C9C1E4F39A31445071016373@apache.org>\r\n\r\n"
        b"<ClinicalDocument/>"
        b"\r\n--MIMEBoundary_6a2b1e0c9c1e4f39a31445071016373--\r\n"
    )
    with parse(body, ctype, tmp_path, chunk_size=16) as msg:
        assert msg.root == AXIS2_ENVELOPE
        includes = find_xop_includes(parse_xml(msg.root, max_bytes=MB, max_depth=64))
        assert len(includes) == 1 and is_xop_include(includes[0])
        att = msg.resolve_cid(xop_href(includes[0]))
        assert (att.read_bytes(), att.content_type) == (b"<ClinicalDocument/>", "text/xml")


def test_cxf_style_message_root_not_first_and_start_without_brackets(tmp_path):
    # CXF: boundary "uuid:..." (needs quoting), leading CRLF, attachments before the root
    # is unusual but legal: 'start' decides, not the order.
    ctype = (
        'multipart/related; type="application/xop+xml"; '
        'boundary="uuid:0b7a4c38-2c0d-4a57-8d23-8f7c8b4f1d11"; '
        'start=root.message@cxf.apache.org; start-info="application/soap+xml"'
    )
    b = b"--uuid:0b7a4c38-2c0d-4a57-8d23-8f7c8b4f1d11"
    body = (
        b"\r\n" + b + b"\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
        b"Content-ID: <5aeaa450-17f0-4484-b845-a8480c363444-1@cxf.apache.org>\r\n\r\n\x00\x01\r\n\x02"
        b"\r\n" + b + b"\r\nContent-Type: application/xop+xml; charset=UTF-8; "
        b'type="application/soap+xml"\r\n'
        b"Content-Transfer-Encoding: binary\r\nContent-ID: <root.message@cxf.apache.org>\r\n\r\n<root/>"
        b"\r\n" + b + b"--"
    )
    with parse(body, ctype, tmp_path, chunk_size=5) as msg:
        assert msg.root == b"<root/>"
        att = msg.resolve_cid("cid:5aeaa450-17f0-4484-b845-a8480c363444-1%40cxf.apache.org")
        assert att.read_bytes() == b"\x00\x01\r\n\x02"


def test_lf_only_line_endings_are_tolerated(tmp_path):
    body = (
        b"preamble\n--bb \t\nContent-ID: <r>\n"
        b'Content-Type: application/xop+xml;\n type="application/soap+xml"\n\n'
        b"<r/>\n--bb\nContent-ID: <x>\n\nline1\nline2\n--bb--\nepilogue\n"
    )
    with parse(body, 'multipart/related; boundary="bb"; start="r"', tmp_path, chunk_size=3) as msg:
        assert msg.root == b"<r/>"
        assert msg.root_content_type == 'application/xop+xml; type="application/soap+xml"'  # folded header
        assert msg.resolve_cid("cid:x").read_bytes() == b"line1\nline2"
        assert msg.attachments["x"].content_type == "application/octet-stream"


def test_first_part_is_root_without_start(tmp_path):
    body = b"--bb\r\n\r\n<r/>\r\n--bb\r\nContent-ID: <x>\r\n\r\nX\r\n--bb--"
    with parse(body, 'multipart/related; boundary=bb; type="application/xop+xml"', tmp_path) as msg:
        assert (msg.root, msg.root_content_type, msg.root_content_id) == (b"<r/>", "application/xop+xml", "")


# --------------------------------------------------------------------------- malformed input

GOOD_HEAD = b"--bb\r\nContent-ID: <root>\r\n\r\n<r/>\r\n--bb\r\nContent-ID: <x>\r\n\r\n" + b"x" * 5000
CT = "multipart/related; boundary=bb"


@pytest.mark.parametrize(
    "content_type, body, reason, kw",
    [
        ("multipart/related; type=application/xop+xml", b"", "no boundary parameter", {}),
        ("multipart/related; boundary=", b"", "no boundary parameter", {}),
        ("application/soap+xml", b"<r/>", "expected Content-Type multipart/related", {}),
        (CT, b"just some bytes\r\n", "no MIME boundary delimiter", {}),
        (CT, b"", "no MIME boundary delimiter", {}),
        (CT, b"--bb--\r\n", "no body parts", {}),
        (CT, GOOD_HEAD, "close delimiter '--bb--' is missing", {}),
        (CT, GOOD_HEAD + b"\r\n--bb", "truncated inside the headers of MIME part #3", {}),
        (CT, GOOD_HEAD + b"\r\n--bb\r\nContent-ID: <y>\r\n", "truncated inside the headers", {}),
        (CT, GOOD_HEAD + b"\r\n--bb\r\nContent-ID: <x>\r\n\r\ny\r\n--bb--", "duplicate Content-ID <x>", {}),
        (CT, GOOD_HEAD + b"\r\n--bb\r\nContent-ID: <y>\r\nContent-ID: <z>\r\n\r\n", "appears twice", {}),
        (CT, GOOD_HEAD + b"\r\n--bb\r\nContent-Type: text/plain\r\n\r\ny\r\n--bb--", "has no Content-ID", {}),
        (CT, GOOD_HEAD + b"\r\n--bb\r\nno colon here\r\n\r\ny\r\n--bb--", "malformed header line", {}),
        (CT, GOOD_HEAD + b"\r\n--bbX\r\n\r\n", "followed by b'X", {}),
        (CT, GOOD_HEAD + b"\r\n--bb\r\nX-Pad: " + b"p" * 20000 + b"\r\n\r\ny\r\n--bb--", "exceeds 16384", {}),
        (
            CT,
            GOOD_HEAD + b"\r\n--bb\r\nContent-ID: <q>\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
            "quoted-printable is not supported",
            {},
        ),
        (
            CT,
            GOOD_HEAD + b"\r\n--bb\r\nContent-ID: <q>\r\nContent-Transfer-Encoding: x-gzip\r\n\r\n",
            "unknown Content-Transfer-Encoding",
            {},
        ),
        (
            'multipart/related; boundary=bb; start="<nope>"',
            GOOD_HEAD + b"\r\n--bb--",
            "root MIME part <nope> named by the 'start' parameter is missing",
            {},
        ),
        (
            CT,
            b"--bb\r\n\r\n" + b"r" * 2000 + b"\r\n--bb--",
            "root MIME part exceeds the limit of 1000",
            {"max_root_bytes": 1000},
        ),
        (
            CT,
            GOOD_HEAD + b"y" * 100_000 + b"\r\n--bb--",
            "exceeds the limit of 50000 bytes",
            {"max_total_bytes": 50_000},
        ),
        (
            CT,
            b"--bb\r\n\r\n<r/>" + b"".join(b"\r\n--bb\r\nContent-ID: <%d>\r\n\r\n" % i for i in range(5)),
            "more than 3 MIME parts",
            {"max_parts": 3},
        ),
    ],
)
def test_malformed(tmp_path, content_type, body, reason, kw):
    for chunk_size in (7, 64 * 1024):
        with pytest.raises(MtomError, match=reason.replace("(", r"\(").replace("[", r"\[")):
            parse(body, content_type, tmp_path, chunk_size=chunk_size, **kw)
        # Every spool file created before the error (e.g. attachment <x>) is gone.
        assert spool_files(tmp_path) == []


def test_size_errors_map_to_413_fault(tmp_path):
    with pytest.raises(MtomError) as info:
        parse(GOOD_HEAD + b"\r\n--bb--", CT, tmp_path, max_total_bytes=100)
    fault = info.value.to_fault()
    assert isinstance(fault, SoapFaultError)
    assert (fault.code, fault.http_status) == ("Sender", 413)
    with pytest.raises(MtomError) as info:
        parse(b"garbage", CT, tmp_path)
    assert info.value.to_fault().http_status == 400


def test_stream_error_cleans_up(tmp_path):
    class Broken:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, n: int) -> bytes:
            self.calls += 1
            if self.calls == 1:
                return GOOD_HEAD
            raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        parse_multipart_related(Broken(), CT, tmp_path, max_root_bytes=MB, max_total_bytes=MB)
    assert spool_files(tmp_path) == []


# --------------------------------------------------------------------------- writer


def test_writer_sources_and_length(tmp_path):
    on_disk = tmp_path / "doc.bin"
    on_disk.write_bytes(os.urandom(3 * MB + 17))
    big = os.urandom(2 * MB + 5)
    closed = []

    def chunks() -> Iterator[bytes]:
        try:
            yield b"first;"
            yield big  # larger than a write chunk: must be split
            yield b""
        finally:
            closed.append(True)

    parts = [
        ("p@x", "application/dicom", on_disk),
        ("b@x", "text/plain", b"tiny"),
        ("c@x", "image/jpeg", chunks),
    ]
    writer = MtomWriter(b"<r/>", parts)
    assert writer.content_length is None  # the callable has no declared size
    assert writer.http_headers() == [("Content-Type", writer.content_type)]
    sized = MtomWriter(b"<r/>", parts[:2] + [MtomPart("c@x", "image/jpeg", chunks, size=len(big) + 6)])
    out = list(sized)
    assert all(0 < len(c) <= MB for c in out)
    body = b"".join(out)
    assert sized.content_length == len(body)
    assert ("Content-Length", str(len(body))) in sized.http_headers()
    assert closed == [True]
    with parse(body, sized.content_type, tmp_path / "spool") as msg:
        assert msg.root == b"<r/>"
        assert msg.resolve_cid("cid:p@x").read_bytes() == on_disk.read_bytes()
        assert msg.resolve_cid("cid:c@x").read_bytes() == b"first;" + big
    assert b"".join(sized) == body  # re-iterable: Path and bytes re-read, the callable called again


def test_writer_headers_and_action(tmp_path):
    writer = MtomWriter(
        b"<r/>",
        [],
        root_content_type='application/soap+xml;charset=UTF-8;action="urn:ihe:iti:2007:RetrieveDocumentSet"',
    )
    media, params = parse_content_type(writer.content_type)
    assert media == "multipart/related"
    assert params["type"] == "application/xop+xml"
    assert params["start-info"] == "application/soap+xml"
    assert params["action"] == "urn:ihe:iti:2007:RetrieveDocumentSet"
    assert params["start"] == f"<{writer.root_content_id}>"
    assert params["boundary"].startswith("MIMEBoundary_")
    body = b"".join(writer)
    assert b'Content-Type: application/xop+xml; charset=UTF-8; type="application/soap+xml"\r\n' in body
    assert body.endswith(f"\r\n--{params['boundary']}--\r\n".encode())


def test_writer_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="occurs in the message content"):
        MtomWriter(b"<r>--MIMEBoundary_test</r>", [], boundary=BOUNDARY)
    with pytest.raises(ValueError, match="occurs in the message content"):
        MtomWriter(b"<r/>", [("a", "text/plain", b"x MIMEBoundary_test")], boundary=BOUNDARY)
    with pytest.raises(ValueError, match="line breaks"):
        MtomWriter(b"<r/>", [("a", "text/plain\r\nX-Evil: 1", b"")])
    with pytest.raises(ValueError, match="not unique"):
        MtomWriter(b"<r/>", [("a", "text/plain", b""), ("<a>", "text/plain", b"")])
    with pytest.raises(FileNotFoundError):
        MtomWriter(b"<r/>", [("a", "text/plain", tmp_path / "missing")])
    grown = tmp_path / "grows.bin"
    grown.write_bytes(b"abc")
    writer = MtomWriter(b"<r/>", [("a", "text/plain", grown)])
    grown.write_bytes(b"abcdef")
    with pytest.raises(MtomError, match="produced 6 bytes but 3 were announced"):
        b"".join(writer)


def test_writer_boundary_avoids_root_content():
    root = b"".join(b"MIMEBoundary_%032x" % i for i in range(100))
    writer = MtomWriter(root, [])
    assert writer.boundary.encode() not in root


def test_writer_close_releases_sources():
    closed = []

    def chunks() -> Iterator[bytes]:
        try:
            while True:
                yield b"x" * MB
        finally:
            closed.append(True)

    writer = MtomWriter(b"<r/>", [("a", "text/plain", chunks)])
    it = iter(writer)
    for _ in range(3):
        next(it)
    writer.close()
    assert closed == [True]


class LimitedReader:
    def __init__(self, raw, remaining: int) -> None:
        self.raw, self.remaining = raw, remaining

    def read(self, n: int) -> bytes:
        data = self.raw.read(min(n, self.remaining)) if self.remaining else b""
        self.remaining -= len(data)
        return data


def test_http_client_sends_writer(tmp_path):
    received: dict[str, object] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            received["length"] = int(self.headers["Content-Length"])
            received["chunked"] = self.headers.get("Transfer-Encoding")
            # http.server's rfile does not end with the body (WSGI's wsgi.input does).
            body = LimitedReader(self.rfile, int(self.headers["Content-Length"]))
            received["msg"] = parse_multipart_related(
                body, self.headers["Content-Type"], tmp_path, max_root_bytes=MB, max_total_bytes=4 * MB
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    try:
        data = os.urandom(MB + 3)
        writer = MtomWriter(envelope(cid_href("d@x")), [("d@x", "application/dicom", data)])
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        conn.request("POST", "/", body=writer, headers=dict(writer.http_headers()))
        assert conn.getresponse().status == 204
        conn.close()
    finally:
        thread.join(10)
        server.server_close()
    assert received["length"] == writer.content_length and received["chunked"] is None
    with received["msg"] as msg:  # type: ignore[attr-defined]
        assert msg.resolve_cid("cid:d@x").read_bytes() == data


# --------------------------------------------------------------------------- XOP helpers


def test_xop_helpers():
    root = parse_xml(envelope("cid:a", "cid:b"), max_bytes=MB, max_depth=64)
    includes = find_xop_includes(root)
    assert [xop_href(el) for el in includes] == ["cid:a", "cid:b"]
    assert all(is_xop_include(el) for el in includes)
    assert not is_xop_include(root)
    bare = make_xop_include("1.urn:uuid:x@y")
    assert is_xop_include(bare) and xop_href(bare) == "cid:1.urn%3Auuid%3Ax@y"
    del bare.attrib["href"]
    with pytest.raises(MtomError, match="without an href"):
        xop_href(bare)


# --------------------------------------------------------------------------- memory


class GeneratedStream:
    """A file-like object that produces an MTOM message with one large attachment on the fly."""

    def __init__(self, boundary: bytes, n_blocks: int) -> None:
        self.boundary = boundary
        self.block = random.Random(42).randbytes(MB)
        self.sha1 = hashlib.sha1()
        self.size = 0
        self.pieces = self._generate(boundary, n_blocks)
        self.current = b""
        self.pos = 0

    def _generate(self, boundary: bytes, n_blocks: int) -> Iterator[bytes]:
        yield b"--" + boundary + b"\r\nContent-ID: <root>\r\n\r\n<r/>\r\n--" + boundary
        yield b"\r\nContent-Type: application/dicom\r\nContent-ID: <big>\r\n\r\n"
        for i in range(n_blocks):
            block = i.to_bytes(8, "big") + self.block[8:]  # every block differs
            self.sha1.update(block)
            self.size += len(block)
            yield block
        yield b"\r\n--" + boundary + b"--\r\n"

    def read(self, n: int) -> bytes:
        while self.pos >= len(self.current):
            self.current = next(self.pieces, b"")
            self.pos = 0
            if not self.current:
                return b""
        if self.pos == 0 and len(self.current) <= n:
            self.pos = len(self.current)
            return self.current
        out = self.current[self.pos : self.pos + n]
        self.pos += len(out)
        return out


def test_memory_300mb_attachment(tmp_path):
    stream = GeneratedStream(b"MIMEBoundary_" + os.urandom(16).hex().encode(), n_blocks=300)
    ctype = f'multipart/related; boundary="{stream.boundary.decode()}"'
    tracemalloc.start()
    try:
        msg = parse_multipart_related(stream, ctype, tmp_path, max_root_bytes=MB, max_total_bytes=1 << 40)
        _, parse_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        # The writer streams the spooled file back out without loading it either.
        att = msg.attachments["big"]
        out_sha1, out_size = hashlib.sha1(), 0
        for chunk in MtomWriter(b"<r/>", [("big", att.content_type, att.path)]):
            out_size += len(chunk)
            out_sha1.update(chunk)
        _, write_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with msg:
        assert att.size == stream.size == 300 * MB
        assert att.sha1 == stream.sha1.hexdigest()
        assert att.path.stat().st_size == att.size
        assert out_size > att.size
    assert parse_peak < 16 * MB, f"parser peak {parse_peak / MB:.1f} MiB"
    assert write_peak < 16 * MB, f"writer peak {write_peak / MB:.1f} MiB"
    assert spool_files(tmp_path) == []
