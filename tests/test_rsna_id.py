"""RSNA-ID: published test vectors, normalisation, the algorithm registry and the CX form.

The expected IDs are literals copied into docs/rsna-id.md; each is also recomputed here with
hashlib straight from the documented recipe, so a drift in the implementation, the recipe or
the docs fails a test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from clearinghouse import rsna_id
from clearinghouse.rsna_id import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    available_algorithms,
    compute_rsna_id,
    get_algorithm,
    normalize_access_code,
    normalize_dob,
    parse_cx,
    patient_cx,
)

RSNA_OID = "1.3.6.1.4.1.19376.3.840.1.1.1"
SALT = "example-network-salt-2026"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "rsna-id.md"

# (access code as typed, DOB as typed, password, canonical code, canonical DOB, expected ID)
SHA256_V1_VECTORS = [
    (
        "ybndrfg8",
        "19700101",
        "secret",
        "ybndrfg8",
        "19700101",
        "7f8c06cbfa858427a9417e6ddd9c4f4a8127f2916d29bddf84a700e5226d5de0",
    ),
    (
        "YBNDRFG8",
        "1970-01-01",
        "secret",
        "ybndrfg8",
        "19700101",
        "7f8c06cbfa858427a9417e6ddd9c4f4a8127f2916d29bddf84a700e5226d5de0",
    ),
    (
        "ybndrfg8",
        "19700101",
        "Secret",
        "ybndrfg8",
        "19700101",
        "7bacfcc0a9b14ea70fdfb842a88c4050cb8f06cb3b31dba5c5214e422d20d65e",
    ),
    (
        "k3hz8w1q",
        "1985-07-04",
        None,
        "k3hz8w1q",
        "19850704",
        "f33ba7e5adbc68e430979043919891e0a2773e073e3362b9bb9b5c64681aa595",
    ),
    (
        "xde3c-31brs-tm7j8-bkhzc",
        "2001-02-28",
        "Blue-Horse 7",
        "xde3c31brstm7j8bkhzc",
        "20010228",
        "d10eac0b5c2e88edbe475da44867939250fb3929083ab832786f5174eb588d07",
    ),
    (
        "XDE3C-31BRS-TM7J8-BKHZC",
        "20010228",
        "Blue-Horse 7",
        "xde3c31brstm7j8bkhzc",
        "20010228",
        "d10eac0b5c2e88edbe475da44867939250fb3929083ab832786f5174eb588d07",
    ),
    (
        "xde3c31brstm7j8bkhzc",
        "2000-02-29",
        None,
        "xde3c31brstm7j8bkhzc",
        "20000229",
        "b90292f686fd71279d99df0df4b9ef844741b3088a56cfc9d6e0d5a8edc6c2d6",
    ),
]

S2S_VECTOR = (
    "xde3c-31brs-tm7j8-bkhzc",
    "2000-02-29",
    "xde3c31brstm7j8bkhzc",
    "20000229",
    "59af6e8b0060f40f637c28f02fc4be4e7378da01864818669daeee3d4d14b628",
)

PBKDF2_VECTORS = [
    (
        "ybndrfg8",
        "19700101",
        "secret",
        "ybndrfg8",
        "19700101",
        "89d89084fb34b64521a0d11e1ec3b0c0dab832fb0ab6efab465d3094e5e36970",
    ),
    (
        "xde3c-31brs-tm7j8-bkhzc",
        "2000-02-29",
        None,
        "xde3c31brstm7j8bkhzc",
        "20000229",
        "ab3ad201ca7296a94e5be2e9916d2950eb92cb956a6a0edb3c093a57163eb957",
    ),
]


# --- published vectors ------------------------------------------------------------------------


@pytest.mark.parametrize("code, dob, password, canon_code, canon_dob, expected", SHA256_V1_VECTORS)
def test_rsna_sha256_v1_vectors(code, dob, password, canon_code, canon_dob, expected):
    recipe = hashlib.sha256((canon_code + canon_dob + (password or "")).encode("utf-8")).hexdigest()
    assert recipe == expected
    assert compute_rsna_id(code, dob, password) == expected
    assert compute_rsna_id(code, dob, password, algorithm="rsna-sha256-v1") == expected


def test_rsna_sha256_s2s_v1_vector():
    code, dob, canon_code, canon_dob, expected = S2S_VECTOR
    assert hashlib.sha256((canon_dob + canon_code).encode("utf-8")).hexdigest() == expected
    assert compute_rsna_id(code, dob, algorithm="rsna-sha256-s2s-v1") == expected


@pytest.mark.parametrize("code, dob, password, canon_code, canon_dob, expected", PBKDF2_VECTORS)
def test_pbkdf2_sha256_v1_vectors(code, dob, password, canon_code, canon_dob, expected):
    secret = f"{canon_code}\x00{canon_dob}\x00{password or ''}".encode()
    recipe = hashlib.pbkdf2_hmac("sha256", secret, SALT.encode("utf-8"), 600_000, dklen=32).hex()
    assert recipe == expected
    assert compute_rsna_id(code, dob, password, algorithm="pbkdf2-sha256-v1", salt=SALT) == expected


def test_docs_publish_every_vector():
    text = DOCS.read_text(encoding="utf-8")
    expected = {v[-1] for v in SHA256_V1_VECTORS} | {S2S_VECTOR[-1]} | {v[-1] for v in PBKDF2_VECTORS}
    for rsna in expected:
        assert rsna in text, f"{rsna} missing from {DOCS.name}"
        assert patient_cx(rsna, RSNA_OID) in text, f"CX of {rsna} missing from {DOCS.name}"


# --- the RSNA recipe's properties ------------------------------------------------------------


def test_id_is_lowercase_hex_sha256():
    value = compute_rsna_id("ybndrfg8", "19700101", "secret")
    assert len(value) == 64
    assert value == value.lower()
    int(value, 16)


def test_absent_password_is_the_empty_password():
    assert compute_rsna_id("k3hz8w1q", "19850704") == compute_rsna_id("k3hz8w1q", "19850704", "")
    assert compute_rsna_id("k3hz8w1q", "19850704", None) == compute_rsna_id("k3hz8w1q", "19850704", "")


def test_password_is_case_and_blank_sensitive():
    base = compute_rsna_id("ybndrfg8", "19700101", "secret")
    assert compute_rsna_id("ybndrfg8", "19700101", "SECRET") != base
    assert compute_rsna_id("ybndrfg8", "19700101", " secret") != base
    assert compute_rsna_id("ybndrfg8", "19700101", "secret ") != base


def test_every_input_changes_the_id():
    base = compute_rsna_id("ybndrfg8", "19700101", "secret")
    assert compute_rsna_id("ybndrfg9", "19700101", "secret") != base
    assert compute_rsna_id("ybndrfg8", "19700102", "secret") != base
    assert compute_rsna_id("ybndrfg8", "19700101", "secres") != base


def test_non_ascii_password_is_hashed_as_utf8():
    expected = hashlib.sha256("ybndrfg819700101Grüße".encode()).hexdigest()
    assert compute_rsna_id("ybndrfg8", "19700101", "Grüße") == expected


# --- normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        "xde3c-31brs-tm7j8-bkhzc",
        "XDE3C-31BRS-TM7J8-BKHZC",
        "Xde3C-31bRs-TM7j8-bkHZc",
        "xde3c31brstm7j8bkhzc",
        "  xde3c 31brs tm7j8 bkhzc\n",
        "xde3c--31brs-tm7j8-bkhzc",
    ],
)
def test_access_code_normalisation(typed):
    assert normalize_access_code(typed) == "xde3c31brstm7j8bkhzc"


def test_token_normalisation():
    assert normalize_access_code("YBNDRFG8") == "ybndrfg8"
    assert normalize_access_code(" ybnd-rfg8 ") == "ybndrfg8"


@pytest.mark.parametrize("typed", ["", "   ", "---", " - - "])
def test_empty_access_code_rejected(typed):
    with pytest.raises(ValueError, match="empty"):
        normalize_access_code(typed)


@pytest.mark.parametrize("typed", ["xde3c_31brs", "xde3c.31brs", "xdé3c31brs", "ybnd/rfg8", "ybnd\x00rfg8"])
def test_access_code_with_foreign_characters_rejected(typed):
    with pytest.raises(ValueError, match="letters, digits, dashes and blanks"):
        normalize_access_code(typed)


def test_access_code_error_does_not_echo_the_code():
    with pytest.raises(ValueError) as info:
        normalize_access_code("secretcode_x")
    assert "secretcode" not in str(info.value)


@pytest.mark.parametrize(
    "typed, canonical",
    [
        ("19700101", "19700101"),
        ("1970-01-01", "19700101"),
        (" 2000-02-29 ", "20000229"),
        ("19991231", "19991231"),
        ("0001-01-01", "00010101"),
    ],
)
def test_dob_normalisation(typed, canonical):
    assert normalize_dob(typed) == canonical


@pytest.mark.parametrize(
    "typed, reason",
    [
        ("19701301", "month 13"),
        ("1970-00-10", "month 00"),
        ("19700230", "day 30, but February 1970 has days 01 to 28"),
        ("1900-02-29", "day 29, but February 1900 has days 01 to 28"),
        ("20230431", "day 31, but April 2023 has days 01 to 30"),
        ("1970-01-00", "day 00"),
        ("00000101", "year 0000"),
    ],
)
def test_impossible_dob_rejected_with_reason(typed, reason):
    with pytest.raises(ValueError, match=reason):
        normalize_dob(typed)


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "1970",
        "1970-1-1",
        "1970/01/01",
        "01/01/1970",
        "1970-0101",
        "197001-01",
        "19700101T00",
        "١٩٧٠٠١٠١",
        "1970-01-01-",
    ],
)
def test_malformed_dob_rejected(typed):
    with pytest.raises(ValueError, match="YYYYMMDD or YYYY-MM-DD"):
        normalize_dob(typed)


def test_non_string_inputs_rejected():
    with pytest.raises(TypeError):
        normalize_dob(19700101)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        normalize_access_code(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        compute_rsna_id("ybndrfg8", "19700101", 1234)  # type: ignore[arg-type]


def test_invalid_inputs_rejected_by_compute():
    with pytest.raises(ValueError, match="day 30"):
        compute_rsna_id("ybndrfg8", "1970-02-30", "secret")
    with pytest.raises(ValueError, match="empty"):
        compute_rsna_id("--", "19700101", "secret")


# --- the registry ------------------------------------------------------------------------------


def test_registry_names():
    assert DEFAULT_ALGORITHM == "rsna-sha256-v1"
    assert available_algorithms() == ("pbkdf2-sha256-v1", "rsna-sha256-s2s-v1", "rsna-sha256-v1")
    assert set(available_algorithms()) == set(ALGORITHMS)
    for name, algo in ALGORITHMS.items():
        assert algo.name == name
        assert get_algorithm(name) is algo


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        ALGORITHMS["mine"] = ALGORITHMS[DEFAULT_ALGORITHM]  # type: ignore[index]


def test_unknown_algorithm_names_the_known_ones():
    with pytest.raises(ValueError) as info:
        compute_rsna_id("ybndrfg8", "19700101", algorithm="md5-v0")
    message = str(info.value)
    assert "md5-v0" in message
    for name in available_algorithms():
        assert name in message
    with pytest.raises(ValueError, match="rsna-sha256-v1"):
        get_algorithm("")


def test_parameters_the_algorithm_does_not_take_are_rejected():
    with pytest.raises(ValueError, match="does not take parameter"):
        compute_rsna_id("ybndrfg8", "19700101", "secret", salt=SALT)
    with pytest.raises(ValueError, match="does not take parameter.*pepper"):
        compute_rsna_id("ybndrfg8", "19700101", algorithm="pbkdf2-sha256-v1", salt=SALT, pepper="x")


def test_s2s_refuses_a_password():
    with pytest.raises(ValueError, match="does not use a password"):
        compute_rsna_id("ybndrfg8", "19700101", "secret", algorithm="rsna-sha256-s2s-v1")
    assert compute_rsna_id("ybndrfg8", "19700101", "", algorithm="rsna-sha256-s2s-v1") == compute_rsna_id(
        "ybndrfg8", "19700101", algorithm="rsna-sha256-s2s-v1"
    )


# --- the stronger algorithm --------------------------------------------------------------------


FAST = rsna_id.PBKDF2_MIN_ITERATIONS


def test_pbkdf2_differs_from_the_rsna_hash_and_is_deterministic():
    kwargs = {"algorithm": "pbkdf2-sha256-v1", "salt": SALT, "iterations": FAST}
    first = compute_rsna_id("ybndrfg8", "19700101", "secret", **kwargs)
    assert first == compute_rsna_id("YBND-RFG8", "1970-01-01", "secret", **kwargs)
    assert first != compute_rsna_id("ybndrfg8", "19700101", "secret")
    assert len(first) == 64 and first == first.lower()


def test_pbkdf2_depends_on_salt_and_iterations():
    base = compute_rsna_id("ybndrfg8", "19700101", algorithm="pbkdf2-sha256-v1", salt=SALT, iterations=FAST)
    other_salt = compute_rsna_id("ybndrfg8", "19700101", algorithm="pbkdf2-sha256-v1", salt=SALT + "!", iterations=FAST)
    more_rounds = compute_rsna_id("ybndrfg8", "19700101", algorithm="pbkdf2-sha256-v1", salt=SALT, iterations=FAST + 1)
    assert len({base, other_salt, more_rounds}) == 3


def test_pbkdf2_field_boundaries_are_unambiguous():
    # Without a separator "ab" + "" and "a" + "b" would collide; the NUL keeps them apart.
    kwargs = {"algorithm": "pbkdf2-sha256-v1", "salt": SALT, "iterations": FAST}
    assert compute_rsna_id("ybndrfg8", "19700101", "1", **kwargs) != compute_rsna_id("ybndrfg81", "19700101", **kwargs)


def test_pbkdf2_needs_a_proper_salt_and_enough_iterations():
    with pytest.raises(ValueError, match="needs parameter.*salt"):
        compute_rsna_id("ybndrfg8", "19700101", algorithm="pbkdf2-sha256-v1")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        compute_rsna_id("ybndrfg8", "19700101", algorithm="pbkdf2-sha256-v1", salt="short")
    with pytest.raises(TypeError):
        compute_rsna_id("ybndrfg8", "19700101", algorithm="pbkdf2-sha256-v1", salt=SALT.encode())
    with pytest.raises(ValueError, match="iterations must be at least"):
        compute_rsna_id("ybndrfg8", "19700101", algorithm="pbkdf2-sha256-v1", salt=SALT, iterations=1000)
    with pytest.raises(TypeError):
        compute_rsna_id("ybndrfg8", "19700101", algorithm="pbkdf2-sha256-v1", salt=SALT, iterations=True)


# --- CX ----------------------------------------------------------------------------------------


def test_patient_cx_form():
    value = compute_rsna_id("ybndrfg8", "19700101", "secret")
    assert patient_cx(value, RSNA_OID) == f"{value}^^^&{RSNA_OID}&ISO"


@pytest.mark.parametrize("vector", SHA256_V1_VECTORS)
def test_cx_round_trip(vector):
    value = vector[-1]
    for oid in (RSNA_OID, "1.3.6.1.4.1.21367.13.20.3000", "2.16.840.1.113883.3.72.5.9.1"):
        assert parse_cx(patient_cx(value, oid)) == (value, oid)


@pytest.mark.parametrize(
    "cx",
    [
        "",
        "abc",
        "abc^^^",
        f"abc^^&{RSNA_OID}&ISO",
        f"abc^^^^&{RSNA_OID}&ISO",
        f"abc^1^^&{RSNA_OID}&ISO",
        f"abc^^M10^&{RSNA_OID}&ISO",
        f"^^^&{RSNA_OID}&ISO",
        f"abc^^^{RSNA_OID}&ISO",
        f"abc^^^&{RSNA_OID}",
        f"abc^^^&{RSNA_OID}&iso",
        f"abc^^^&{RSNA_OID}&DNS",
        f"abc^^^RSNA&{RSNA_OID}&ISO",
        f"abc^^^&{RSNA_OID}&ISO&x",
        "abc^^^&&ISO",
        "abc^^^&1.3.6.1.4.01&ISO",
        "abc^^^&3.1.2&ISO",
        "abc^^^&1.3.6.&ISO",
        "abc^^^&rsna&ISO",
        f"abc^^^&1.{'2' * 70}&ISO",
        f"a b^^^&{RSNA_OID}&ISO",
        f"a~b^^^&{RSNA_OID}&ISO",
        f"{'a' * 65}^^^&{RSNA_OID}&ISO",
        f" abc^^^&{RSNA_OID}&ISO",
        f"abc^^^&{RSNA_OID}&ISO\n",
    ],
)
def test_malformed_cx_rejected(cx):
    with pytest.raises(ValueError):
        parse_cx(cx)


@pytest.mark.parametrize("bad_id", ["", "a^b", "a&b", "a|b", "a\\b", "a~b", "a b", "é", "a" * 65])
def test_patient_cx_rejects_ids_that_would_not_parse_back(bad_id):
    with pytest.raises(ValueError):
        patient_cx(bad_id, RSNA_OID)


@pytest.mark.parametrize("bad_oid", ["", "rsna", "1", "1.", ".1", "1..2", "1.02", "3.1", "1.2.3 ", "1." + "9" * 64])
def test_patient_cx_rejects_non_oids(bad_oid):
    with pytest.raises(ValueError, match="not an ISO OID"):
        patient_cx("abc", bad_oid)
