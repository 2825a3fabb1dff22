"""The sealed format (repository/crypto.py) and the KEK ring (repository/keys.py), as pure functions:
every kind of alteration of a sealed object is detected, and keys are checked as configured."""

from __future__ import annotations

import base64
import io
import os
import stat

import pytest

from clearinghouse.config import Settings
from repository import crypto
from repository.keys import DekUnwrapFailed, KeyConfigError, UnknownKek, generate_key, keys_dir, load_key_ring

SEG = 4096  # small segments so that multi-segment cases stay small


def _seal(data: bytes, dek: bytes, segment: int = SEG) -> bytes:
    return b"".join(crypto.seal(io.BytesIO(data), len(data), dek, segment))


def _open(sealed: bytes, dek: bytes, size: int, step: int = 1000) -> bytes:
    return b"".join(crypto.open_stream((sealed[i : i + step] for i in range(0, len(sealed), step)), dek, size))


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 17])
def test_round_trip_and_exact_sealed_length(size):
    dek = crypto.new_dek()
    data = os.urandom(size)
    sealed = _seal(data, dek)
    assert len(sealed) == crypto.sealed_size(size, SEG)
    assert _open(sealed, dek, size) == data
    if size >= 16:
        assert data[:16] not in sealed  # nothing of the plaintext is stored as it is


def test_default_segment_is_one_mebibyte():
    assert crypto.SEGMENT == 1 << 20
    assert crypto.sealed_size(2 * crypto.SEGMENT + 1) == crypto.HEADER.size + 2 * crypto.SEGMENT + 1 + 3 * crypto.TAG


def _expect_tampered(sealed: bytes, dek: bytes, size: int) -> list[bytes]:
    """Opens ``sealed`` and returns the segments released before the failure (there must be one)."""
    released: list[bytes] = []
    with pytest.raises(crypto.TamperedDocument):
        for block in crypto.open_stream([sealed], dek, size):
            released.append(block)
    return released


def test_a_flipped_bit_in_any_segment_is_detected_and_that_segment_never_released():
    dek = crypto.new_dek()
    data = os.urandom(3 * SEG + 5)
    sealed = _seal(data, dek)
    for index in range(4):
        offset, length = crypto.segment_span(index, len(data), SEG)
        bad = bytearray(sealed)
        bad[offset + length // 2] ^= 0x01
        released = _expect_tampered(bytes(bad), dek, len(data))
        assert b"".join(released) == data[: index * SEG]


def test_header_alteration_is_detected():
    dek = crypto.new_dek()
    data = os.urandom(2 * SEG)
    sealed = _seal(data, dek)
    for pos in (0, 4, 9, crypto.HEADER.size - 1):  # magic, version, segment size, nonce prefix
        bad = bytearray(sealed)
        bad[pos] ^= 0x01
        assert _expect_tampered(bytes(bad), dek, len(data)) == []


def test_truncation_at_a_segment_boundary_is_detected():
    dek = crypto.new_dek()
    data = os.urandom(3 * SEG)
    sealed = _seal(data, dek)
    offset, length = crypto.segment_span(1, len(data), SEG)
    cut = sealed[: offset + length]  # two whole segments
    # Even if the size recorded were changed to match, segment 1 was not sealed as the last one.
    assert _expect_tampered(cut, dek, 2 * SEG) == [data[:SEG]]
    assert _expect_tampered(cut, dek, len(data)) == [data[:SEG], data[SEG : 2 * SEG]]


def test_extension_and_reordering_are_detected():
    dek = crypto.new_dek()
    data = os.urandom(3 * SEG)
    sealed = _seal(data, dek)
    assert len(_expect_tampered(sealed + b"\0" * 16, dek, len(data))) == 2
    spans = [crypto.segment_span(i, len(data), SEG) for i in range(3)]
    segs = [sealed[o : o + n] for o, n in spans]
    swapped = sealed[: crypto.HEADER.size] + segs[1] + segs[0] + segs[2]
    assert _expect_tampered(swapped, dek, len(data)) == []


def test_another_documents_key_or_segments_do_not_verify():
    dek, other = crypto.new_dek(), crypto.new_dek()
    data = os.urandom(SEG + 1)
    sealed, sealed_other = _seal(data, dek), _seal(data, dek)
    assert sealed != sealed_other  # a fresh nonce prefix per object
    assert _expect_tampered(sealed, other, len(data)) == []
    o, n = crypto.segment_span(0, len(data), SEG)
    spliced = sealed[:o] + sealed_other[o : o + n] + sealed[o + n :]
    assert _expect_tampered(spliced, dek, len(data)) == []


def test_seal_refuses_a_source_of_another_length():
    dek = crypto.new_dek()
    with pytest.raises(ValueError, match="ended"):
        b"".join(crypto.seal(io.BytesIO(b"abc"), 4, dek, SEG))
    with pytest.raises(ValueError, match="more than"):
        b"".join(crypto.seal(io.BytesIO(b"abcde"), 4, dek, SEG))


def test_open_segment_checks_one_segment_alone():
    dek = crypto.new_dek()
    data = os.urandom(2 * SEG + 3)
    sealed = _seal(data, dek)
    header = sealed[: crypto.HEADER.size]
    o, n = crypto.segment_span(2, len(data), SEG)
    assert crypto.open_segment(dek, header, 2, True, sealed[o : o + n]) == data[2 * SEG :]
    with pytest.raises(crypto.TamperedDocument):
        crypto.open_segment(dek, header, 2, False, sealed[o : o + n])  # the last flag is bound


# --- key-encryption keys ---


def _key_b64() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_embedded_kek_is_generated_once_with_mode_0600(tmp_path):
    settings = Settings(home=tmp_path)
    assert load_key_ring(settings, create=False) is None
    ring = load_key_ring(settings)
    assert ring is not None and list(ring.keys) == [ring.current]
    key_file = keys_dir(settings) / f"{ring.current}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir(settings).stat().st_mode) == 0o700
    again = load_key_ring(settings)
    assert again is not None and again.keys == ring.keys and again.current == ring.current


def test_embedded_key_readable_by_others_is_refused(tmp_path):
    settings = Settings(home=tmp_path)
    ring = load_key_ring(settings)
    assert ring is not None
    os.chmod(keys_dir(settings) / f"{ring.current}.key", 0o644)
    with pytest.raises(KeyConfigError, match="chmod 600"):
        load_key_ring(settings)


def test_generated_key_becomes_current_and_old_ones_still_unwrap(tmp_path):
    settings = Settings(home=tmp_path)
    first = load_key_ring(settings)
    assert first is not None
    kid, wrapped = first.wrap(dek := crypto.new_dek())
    second_id = generate_key(keys_dir(settings))
    ring = load_key_ring(settings)
    assert ring is not None and ring.current == second_id and set(ring.keys) == {kid, second_id}
    assert ring.unwrap(kid, wrapped) == dek
    with pytest.raises(DekUnwrapFailed):
        ring.unwrap(second_id, wrapped)
    with pytest.raises(UnknownKek):
        ring.unwrap("gone", wrapped)


def test_configured_keys_from_files_and_environment(tmp_path):
    f = tmp_path / "a.key"
    f.write_text(_key_b64() + "\n")
    os.chmod(f, 0o600)
    settings = Settings(home=tmp_path, kek_files=f"k1={f}", kek_keys=f"k2={_key_b64()}", kek_current="k2")
    ring = load_key_ring(settings)
    assert ring is not None and set(ring.keys) == {"k1", "k2"} and ring.current == "k2"
    assert not keys_dir(settings).exists()  # nothing embedded is generated when keys are configured


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kek_keys": "k1=" + _key_b64() + ",k2=" + _key_b64()}, "set kek_current"),
        ({"kek_keys": "k1=" + _key_b64(), "kek_current": "k9"}, "must name one of"),
        ({"kek_keys": "k1=bm90IDMyIGJ5dGVz"}, "32 random bytes"),
        ({"kek_keys": "k1=***"}, "not base64"),
        ({"kek_keys": "k1"}, "not ID=VALUE"),
        ({"kek_keys": "bad id=" + _key_b64()}, "must be 1-64"),
        ({"kek_files": "k1=/nonexistent/k.key"}, "not found"),
    ],
)
def test_bad_key_configuration_is_refused_clearly(tmp_path, overrides, message):
    with pytest.raises(KeyConfigError, match=message):
        load_key_ring(Settings(home=tmp_path, **overrides))
