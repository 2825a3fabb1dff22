"""The RSNA-ID: the one-way patient identifier every Image Share submission is filed under.

The edge derives it from the exam token or access code handed to the patient, the patient's
date of birth and, in the original scheme, a patient-chosen password; the PHR derives the same
value from what the patient types. Neither side ever sends a readable identity. The recipes,
their sources in RSNA's published edge server and the test vectors are in docs/rsna-id.md.

Everything here is a pure function of its arguments. The only module state is the constant
registry of algorithms, so a network can name its choice in configuration
(``rsna_id_algorithm``) and keep computing IDs for older submissions under the old name.
"""

from __future__ import annotations

import calendar
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

DEFAULT_ALGORITHM = "rsna-sha256-v1"

# HL7 table 0301: the assigning authority in the CX is identified by an ISO OID.
UNIVERSAL_ID_TYPE = "ISO"

# Lowest iteration count accepted for the PBKDF2 scheme: below this it is no longer meaningfully
# slower than the plain hash it is meant to replace.
PBKDF2_MIN_ITERATIONS = 100_000
# OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256; part of what a network fixes once.
PBKDF2_DEFAULT_ITERATIONS = 600_000
# A network-wide salt shorter than this is too easy to have been reused or guessed.
PBKDF2_MIN_SALT_BYTES = 16

_DOB_COMPACT = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})")
_DOB_ISO = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
# Dashes and blanks are only there to make the printed code readable; RSNA hashes the code
# exactly as generated, without them.
_CODE_DECORATION = re.compile(r"[\s\-]+")
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
# XDS and HL7 v2 cap an OID at 64 characters.
_OID_MAX = 64
# CX.1 must not carry HL7 delimiters or the escape character, or the CX cannot be parsed back.
_CX_ID = re.compile(r"[!-~]{1,64}")
_HL7_DELIMITERS = frozenset("^&~\\|")


@dataclass(frozen=True)
class Algorithm:
    """One named, versioned way of turning (access code, date of birth, password) into an ID.

    ``derive`` receives already normalised inputs (code, YYYYMMDD, password with ``None`` as
    ``""``) plus the algorithm's own parameters, so every algorithm sees the same canonical
    values and only differs in the hashing.
    """

    name: str
    summary: str
    derive: Callable[..., str]
    params: frozenset[str] = field(default_factory=frozenset)
    required_params: frozenset[str] = field(default_factory=frozenset)


def _rsna_sha256_v1(code: str, dob: str, password: str) -> str:
    return hashlib.sha256((code + dob + password).encode("utf-8")).hexdigest()


def _rsna_sha256_s2s_v1(code: str, dob: str, password: str) -> str:
    # RSNA's later site-to-site scheme has no password; silently dropping one would hand the
    # patient an ID that their password does not actually protect.
    if password:
        raise ValueError("algorithm 'rsna-sha256-s2s-v1' does not use a password; pass none")
    return hashlib.sha256((dob + code).encode("utf-8")).hexdigest()


def _pbkdf2_sha256_v1(
    code: str, dob: str, password: str, *, salt: str, iterations: int = PBKDF2_DEFAULT_ITERATIONS
) -> str:
    if not isinstance(salt, str):
        raise TypeError("salt must be a str (the network-wide salt from configuration)")
    salt_bytes = salt.encode("utf-8")
    if len(salt_bytes) < PBKDF2_MIN_SALT_BYTES:
        raise ValueError(f"salt must be at least {PBKDF2_MIN_SALT_BYTES} bytes of UTF-8, got {len(salt_bytes)}")
    # bool is an int subclass; True iterations would be a silent misconfiguration.
    if not isinstance(iterations, int) or isinstance(iterations, bool):
        raise TypeError("iterations must be an int")
    if iterations < PBKDF2_MIN_ITERATIONS:
        raise ValueError(f"iterations must be at least {PBKDF2_MIN_ITERATIONS}, got {iterations}")
    # NUL cannot occur in a normalised code or date, so the split between the fields is
    # unambiguous even though the password is free text.
    secret = "\x00".join((code, dob, password)).encode("utf-8")
    return hashlib.pbkdf2_hmac("sha256", secret, salt_bytes, iterations, dklen=32).hex()


ALGORITHMS: Mapping[str, Algorithm] = MappingProxyType(
    {
        "rsna-sha256-v1": Algorithm(
            name="rsna-sha256-v1",
            summary="RSNA edge server: hex SHA-256 of code + YYYYMMDD + password (password may be empty)",
            derive=_rsna_sha256_v1,
        ),
        "rsna-sha256-s2s-v1": Algorithm(
            name="rsna-sha256-s2s-v1",
            summary="RSNA edge server, site-to-site scheme: hex SHA-256 of YYYYMMDD + code, no password",
            derive=_rsna_sha256_s2s_v1,
        ),
        "pbkdf2-sha256-v1": Algorithm(
            name="pbkdf2-sha256-v1",
            summary=(
                "PBKDF2-HMAC-SHA256 of code NUL YYYYMMDD NUL password with a network-wide salt, "
                f"{PBKDF2_DEFAULT_ITERATIONS} iterations by default, 32-byte hex output"
            ),
            derive=_pbkdf2_sha256_v1,
            params=frozenset({"salt", "iterations"}),
            required_params=frozenset({"salt"}),
        ),
    }
)


def available_algorithms() -> tuple[str, ...]:
    """The names a network may put in ``rsna_id_algorithm``, sorted."""
    return tuple(sorted(ALGORITHMS))


def get_algorithm(name: str) -> Algorithm:
    """The registered algorithm called ``name``; ValueError naming the known ones otherwise."""
    try:
        return ALGORITHMS[name]
    except (KeyError, TypeError):
        known = ", ".join(available_algorithms())
        raise ValueError(f"unknown RSNA-ID algorithm {name!r}; known algorithms: {known}") from None


def normalize_access_code(code: str) -> str:
    """The exam token or access code as it is hashed: no dashes or blanks, lower case.

    RSNA's 8-character tokens and 20-character access codes are drawn from the lower-case
    z-base-32 alphabet, so folding case lets a patient type them in either case.
    """
    if not isinstance(code, str):
        raise TypeError("access code must be a str")
    compact = _CODE_DECORATION.sub("", code).lower()
    if not compact:
        raise ValueError("access code is empty")
    for position, char in enumerate(compact, start=1):
        if not (char.isascii() and char.isalnum()):
            # The code is a secret; say where the problem is, not what the code is.
            raise ValueError(
                f"access code may contain only letters, digits, dashes and blanks; "
                f"character {position} (after removing dashes) is not one of them"
            )
    return compact


def normalize_dob(dob: str) -> str:
    """The date of birth as it is hashed: YYYYMMDD. Accepts YYYYMMDD or YYYY-MM-DD."""
    if not isinstance(dob, str):
        raise TypeError("date of birth must be a str in the form YYYYMMDD or YYYY-MM-DD")
    text = dob.strip()
    match = _DOB_COMPACT.fullmatch(text) or _DOB_ISO.fullmatch(text)
    if match is None:
        raise ValueError("date of birth must be written YYYYMMDD or YYYY-MM-DD")
    year_s, month_s, day_s = match.groups()
    year, month, day = int(year_s), int(month_s), int(day_s)
    if year == 0:
        raise ValueError("date of birth has year 0000, which does not exist")
    if not 1 <= month <= 12:
        raise ValueError(f"date of birth has month {month_s}; months run from 01 to 12")
    days_in_month = calendar.monthrange(year, month)[1]
    if not 1 <= day <= days_in_month:
        raise ValueError(
            f"date of birth has day {day_s}, but {calendar.month_name[month]} {year_s} "
            f"has days 01 to {days_in_month:02d}"
        )
    return f"{year_s}{month_s}{day_s}"


def compute_rsna_id(
    access_code: str,
    dob: str,
    password: str | None = None,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    **params: Any,
) -> str:
    """The RSNA-ID for one submission, as lower-case hex.

    ``password`` is taken exactly as typed (case and blanks matter); ``None`` and ``""`` are the
    same, an absent password. ``params`` are the algorithm's own settings, e.g. ``salt`` for
    ``pbkdf2-sha256-v1``.
    """
    algo = get_algorithm(algorithm)
    unknown = set(params) - algo.params
    if unknown:
        accepted = ", ".join(sorted(algo.params)) or "none"
        raise ValueError(
            f"algorithm {algo.name!r} does not take parameter(s) {', '.join(sorted(unknown))}; it accepts: {accepted}"
        )
    missing = algo.required_params - set(params)
    if missing:
        raise ValueError(f"algorithm {algo.name!r} needs parameter(s) {', '.join(sorted(missing))}")
    if password is not None and not isinstance(password, str):
        raise TypeError("password must be a str or None")
    return algo.derive(normalize_access_code(access_code), normalize_dob(dob), password or "", **params)


def _check_oid(oid: str) -> None:
    if not isinstance(oid, str) or len(oid) > _OID_MAX or not _OID.fullmatch(oid):
        raise ValueError(
            f"assigning authority {oid!r} is not an ISO OID (dotted digits, first arc 0-2, "
            f"no leading zeros, at most {_OID_MAX} characters)"
        )


def _check_cx_id(rsna_id: str) -> None:
    if not isinstance(rsna_id, str) or not _CX_ID.fullmatch(rsna_id):
        raise ValueError("patient ID must be 1 to 64 printable ASCII characters without blanks")
    if _HL7_DELIMITERS & set(rsna_id):
        raise ValueError("patient ID must not contain the HL7 characters ^ & ~ \\ |")


def patient_cx(rsna_id: str, oid: str) -> str:
    """The XDS/PIX patient identifier ``ID^^^&OID&ISO`` for an RSNA-ID in the affinity domain ``oid``."""
    _check_cx_id(rsna_id)
    _check_oid(oid)
    return f"{rsna_id}^^^&{oid}&{UNIVERSAL_ID_TYPE}"


def parse_cx(cx: str) -> tuple[str, str]:
    """``(id, oid)`` from a CX of the form ``ID^^^&OID&ISO``; ValueError if it is anything else.

    XDS allows only CX.1 and CX.4 (ITI TF-3 4.2.3.1.7), so any other component is rejected
    rather than ignored: two spellings of one patient must not register as two patients.
    """
    if not isinstance(cx, str):
        raise ValueError("patient CX must be a str")
    components = cx.split("^")
    if len(components) != 4 or components[1] or components[2]:
        raise ValueError("patient CX must have the form ID^^^&OID&ISO (only CX.1 and CX.4 filled)")
    rsna_id, authority = components[0], components[3]
    parts = authority.split("&")
    if len(parts) != 3 or parts[0] or parts[2] != UNIVERSAL_ID_TYPE:
        raise ValueError("patient CX assigning authority must have the form &OID&ISO")
    _check_cx_id(rsna_id)
    _check_oid(parts[1])
    return rsna_id, parts[1]
