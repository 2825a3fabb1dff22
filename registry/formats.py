"""Value formats of XDS metadata (ITI TF-3 4.2.3.1.7, Table 4.2.3.1.7-2): pure predicates.

Each ``is_*`` answers whether one slot or attribute value has the shape XDS prescribes for it. The
HL7 v2 types (CX, XCN, XON, XTN) are the XDS profiles of them: components separated by ``^``,
sub-components by ``&``, an assigning authority always ``&OID&ISO``.
"""

from __future__ import annotations

import re
import uuid

from clearinghouse.rsna_id import parse_cx

_DTM = re.compile(r"[0-9]{4}(?:[0-9]{2}){0,5}")
_OID = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")
_OID_MAX = 64
_EXTENSION_MAX = 16
_SHA1 = re.compile(r"[0-9a-fA-F]{40}")
_SIZE = re.compile(r"[0-9]{1,19}")
_LANGUAGE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*(?:\s*;.*)?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
# Upper bounds of each DTM component after the year: month, day, hour, minute, second.
_DTM_LIMITS = ((1, 12), (1, 31), (0, 23), (0, 59), (0, 59))
# ebRIM 3.0 rim:Value is a LongName (rim.xsd): at most 256 characters.
MAX_SLOT_VALUE = 256
URN_UUID = "urn:uuid:"
URN_OID = "urn:oid:"


def is_dtm(value: str) -> bool:
    """HL7 DTM as XDS restricts it: YYYY[MM[DD[hh[mm[ss]]]]] in UTC, each component in range."""
    if not _DTM.fullmatch(value):
        return False
    parts = [int(value[i : i + 2]) for i in range(4, len(value), 2)]
    return all(low <= part <= high for part, (low, high) in zip(parts, _DTM_LIMITS, strict=False))


def is_oid(value: str) -> bool:
    return len(value) <= _OID_MAX and bool(_OID.fullmatch(value))


def is_document_unique_id(value: str) -> bool:
    """DocumentEntry.uniqueId: an OID, or OID^extension (ITI TF-3 4.2.3.2.26)."""
    root, sep, extension = value.partition("^")
    if not is_oid(root):
        return False
    return not sep or (0 < len(extension) <= _EXTENSION_MAX and "^" not in extension)


def is_uuid_urn(value: str) -> bool:
    """``urn:uuid:`` followed by a UUID in its canonical 8-4-4-4-12 form."""
    if not value.startswith(URN_UUID) or len(value) != len(URN_UUID) + 36:
        return False
    try:
        uuid.UUID(value[len(URN_UUID) :])
    except ValueError:
        return False
    return True


def is_home_community_id(value: str) -> bool:
    """homeCommunityId: ``urn:oid:`` + OID (ITI TF-3 4.2.3.1.8)."""
    return value.startswith(URN_OID) and is_oid(value[len(URN_OID) :])


def is_patient_cx(value: str) -> bool:
    """CX with only CX.1 and CX.4 (``ID^^^&OID&ISO``), ITI TF-3 4.2.3.1.7."""
    try:
        parse_cx(value)
    except ValueError:
        return False
    return True


def is_sha1(value: str) -> bool:
    return bool(_SHA1.fullmatch(value))


def is_size(value: str) -> bool:
    return bool(_SIZE.fullmatch(value))


def is_language(value: str) -> bool:
    return bool(_LANGUAGE.fullmatch(value))


def is_mime_type(value: str) -> bool:
    return bool(_MIME.fullmatch(value))


def is_assigning_authority(value: str) -> bool:
    """An HD used as assigning authority: ``[namespace]&OID&ISO``."""
    parts = value.split("&")
    return len(parts) == 3 and is_oid(parts[1]) and parts[2] == "ISO"


def _components(value: str, maximum: int) -> list[str] | None:
    if not value or len(value) > MAX_SLOT_VALUE:
        return None
    parts = value.split("^")
    return parts if len(parts) <= maximum else None


def _component(parts: list[str], n: int) -> str:
    return parts[n - 1] if len(parts) >= n else ""


def is_xcn(value: str) -> bool:
    """XCN (a person): an identifier (XCN.1) or a family name (XCN.2) is present, and an assigning
    authority (XCN.9), when given, is ``&OID&ISO`` (Table 4.2.3.1.7-2)."""
    parts = _components(value, 23)
    if parts is None:
        return False
    if not (_component(parts, 1) or _component(parts, 2)):
        return False
    authority = _component(parts, 9)
    return not authority or is_assigning_authority(authority)


def is_xon(value: str) -> bool:
    """XON (an organisation): the name (XON.1) is present; XON.10, the organisation identifier, is
    an OID unless XON.6 names its assigning authority (``&OID&ISO``)."""
    parts = _components(value, 10)
    if parts is None or not _component(parts, 1):
        return False
    authority, identifier = _component(parts, 6), _component(parts, 10)
    if authority:
        return is_assigning_authority(authority) and bool(identifier)
    return not identifier or is_oid(identifier)


def is_xtn(value: str) -> bool:
    """XTN (a telecom address): an e-mail address in XTN.4 when XTN.3 is ``Internet``, otherwise a
    telephone number in XTN.1 or XTN.7 (or XTN.12, the unformatted number)."""
    parts = _components(value, 18)
    if parts is None:
        return False
    if _component(parts, 3) == "Internet":
        return bool(_EMAIL.fullmatch(_component(parts, 4)))
    return any(_component(parts, n) for n in (1, 7, 12))


def is_intended_recipient(value: str) -> bool:
    """SubmissionSet.intendedRecipient: ``XON|XCN|XTN``, any part empty but not all of them."""
    parts = value.split("|")
    if len(parts) > 3 or len(value) > MAX_SLOT_VALUE or not any(parts):
        return False
    checks = (is_xon, is_xcn, is_xtn)
    return all(not part or check(part) for part, check in zip(parts, checks, strict=False))


def is_source_patient_info(value: str) -> bool:
    """One sourcePatientInfo line: ``PID-n|value``."""
    field, sep, rest = value.partition("|")
    return bool(sep) and bool(re.fullmatch(r"PID-[0-9]{1,2}", field.strip())) and bool(rest)


def is_short_text(value: str) -> bool:
    """Free text that fits an ebRIM slot value."""
    return 0 < len(value) <= MAX_SLOT_VALUE
