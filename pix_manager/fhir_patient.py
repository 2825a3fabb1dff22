"""The Patient resource of an ITI-104 request (PIXm 2:3.104.4.1.2, 2:3.104.4.2.2), read from FHIR R4 JSON
or XML into the few elements the cross-reference uses: the logical id, the identifiers, ``active`` and
the ``replaced-by`` links (Patient.link, patient.html#dup-records). Every other element (names, birth
date, addresses...) is accepted as the PIXm Patient profile requires and not kept: the PIX Manager
cross-references on what sources say, never on demographics.

Pure functions: bytes in, a PatientBody out, or PixMalformedResource (HTTP 400) naming the element.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from clearinghouse.errors import PixMalformedResource
from clearinghouse.xmlsafe import XmlRejected, parse_xml

FHIR_NS = "http://hl7.org/fhir"
JSON_MEDIA = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
XML_MEDIA = frozenset({"application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir"})
MAX_DEPTH = 32
# FHIR R4 id datatype; a reference to one of our Patient resources, relative or absolute, maybe versioned.
ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")
PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


@dataclass(frozen=True)
class LinkTarget:
    """Patient.link.other: a reference to a Patient resource, or the surviving identifier itself."""

    reference: str = ""
    system: str = ""
    value: str = ""


@dataclass(frozen=True)
class PatientBody:
    id: str | None = None
    identifiers: list[tuple[str, str]] = field(default_factory=list)  # (system, value), both present
    active: bool | None = None
    replaced_by: list[LinkTarget] = field(default_factory=list)


def media_kind(content_type: str) -> str | None:
    media = content_type.split(";")[0].strip().lower()
    return "json" if media in JSON_MEDIA else "xml" if media in XML_MEDIA else None


def parse_patient(body: bytes, kind: str) -> PatientBody:
    if not body.strip():
        raise PixMalformedResource("the request has no Patient resource", location="Patient")
    return _from_xml(body) if kind == "xml" else _from_json(body)


def referenced_id(reference: str) -> str | None:
    """The logical id a Patient reference names (``Patient/{id}``, absolute or versioned), else None."""
    match = PATIENT_REFERENCE.search(reference.strip())
    return match.group(1) if match else None


# --- JSON (json.html) ---


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise PixMalformedResource(f"{where} must be a JSON {_json_name(names)}", location=where)
    return value


def _json_name(python: str) -> str:
    return {"dict": "object", "list": "array", "str": "string", "bool": "boolean"}.get(python, python)


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    return _expect(value, str, f"{where}.{key}")


def _from_json(body: bytes) -> PatientBody:
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PixMalformedResource(f"the body is not valid FHIR JSON: {exc}", location="Patient") from exc
    _expect(doc, dict, "Patient")
    if doc.get("resourceType") != "Patient":
        raise PixMalformedResource(
            f"the resource must be a Patient, not {doc.get('resourceType')!r}", location="resourceType"
        )
    rid = doc.get("id")
    if rid is not None and not (isinstance(rid, str) and ID_PATTERN.fullmatch(rid)):
        raise PixMalformedResource("Patient.id is not a FHIR id", location="Patient.id")
    identifiers = []
    for n, ident in enumerate(_expect(doc.get("identifier", []), list, "Patient.identifier")):
        where = f"Patient.identifier[{n}]"
        _expect(ident, dict, where)
        system, value = _string(ident, "system", where), _string(ident, "value", where)
        if system and value:
            identifiers.append((system, value))
    active = doc.get("active")
    if active is not None:
        _expect(active, bool, "Patient.active")
    links = []
    for n, link in enumerate(_expect(doc.get("link", []), list, "Patient.link")):
        where = f"Patient.link[{n}]"
        _expect(link, dict, where)
        kind = _string(link, "type", where)
        other = _expect(link.get("other"), dict, f"{where}.other")
        if not kind:
            raise PixMalformedResource(f"{where}.type is required", location=f"{where}.type")
        if kind != "replaced-by":
            continue  # seealso, refer, replaces: nothing the cross-reference acts on
        target_ident = other.get("identifier") or {}
        _expect(target_ident, dict, f"{where}.other.identifier")
        links.append(
            LinkTarget(
                _string(other, "reference", f"{where}.other"),
                _string(target_ident, "system", f"{where}.other.identifier"),
                _string(target_ident, "value", f"{where}.other.identifier"),
            )
        )
    return PatientBody(rid, identifiers, active, links)


# --- XML (xml.html): every primitive is an element with a value attribute ---


def _q(local: str) -> str:
    return f"{{{FHIR_NS}}}{local}"


def _value(parent: etree._Element, local: str) -> str:
    el = parent.find(_q(local))
    return (el.get("value") or "") if el is not None else ""


def _from_xml(body: bytes) -> PatientBody:
    try:
        root = parse_xml(body, max_bytes=len(body), max_depth=MAX_DEPTH)
    except XmlRejected as exc:
        raise PixMalformedResource(f"the body is not valid FHIR XML: {exc}", location="Patient") from exc
    if root.tag != _q("Patient"):
        raise PixMalformedResource(
            f"the resource must be a Patient in the FHIR namespace, not {root.tag}", location="Patient"
        )
    rid = _value(root, "id") or None
    if rid is not None and not ID_PATTERN.fullmatch(rid):
        raise PixMalformedResource("Patient.id is not a FHIR id", location="Patient.id")
    identifiers = []
    for ident in root.findall(_q("identifier")):
        system, value = _value(ident, "system"), _value(ident, "value")
        if system and value:
            identifiers.append((system, value))
    active = None
    active_el = root.find(_q("active"))
    if active_el is not None:
        text = active_el.get("value")
        if text not in ("true", "false"):
            raise PixMalformedResource("Patient.active must be true or false", location="Patient.active")
        active = text == "true"
    links = []
    for n, link in enumerate(root.findall(_q("link"))):
        where = f"Patient.link[{n}]"
        kind, other = _value(link, "type"), link.find(_q("other"))
        if not kind or other is None:
            raise PixMalformedResource(f"{where} needs other and type", location=where)
        if kind != "replaced-by":
            continue
        target = other.find(_q("identifier"))
        links.append(
            LinkTarget(
                _value(other, "reference"),
                _value(target, "system") if target is not None else "",
                _value(target, "value") if target is not None else "",
            )
        )
    return PatientBody(rid, identifiers, active, links)
