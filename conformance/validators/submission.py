"""ITI-41 Provide and Register Document Set-b as a Document Source sends it: metadata rule by rule,
declared hash and size against the documents, and the MTOM/XOP framing.

The metadata rules are the registry's own (``registry.rules.validate_submission`` over
``registry.metadata.parse_submission``): pure functions of the message, which this package uses as the
registry's published validation API (docs/decisions.md), so the suite's verdict and the
clearinghouse's acceptance can never disagree. What ITI-41 lets a source leave out (hash, size,
repositoryUniqueId: the repository fills them in, ITI TF-2b 3.41.4.1.3) is filled in the same way
before the rules run; whether the declared values are right is the separate hash/size rule.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from clearinghouse.errors import XdsError
from clearinghouse.soap import envelope as soapenv
from clearinghouse.soap.mtom import normalize_content_id, parse_content_type
from clearinghouse.xmlsafe import NS, parse_xml, qname
from conformance.findings import Finding, check
from registry import metadata as md
from registry import rules

METADATA_REF = "ITI TF-3 4.2.3 (ITI-42 column); ITI TF-2b 3.41.4.1.3"
MTOM_REF = "ITI TF-2x Appendix V (MTOM/XOP); W3C SOAP 1.2 MTOM; W3C XOP 1.0; RFC 2387"


def submit_objects_request(envelope_text: str) -> etree._Element | None:
    env = parse_xml(envelope_text.encode("utf-8"), max_bytes=1 << 26, max_depth=200)
    body = soapenv.body_child(env)
    return body.find("lcm:SubmitObjectsRequest", NS) if body is not None else None


def _slots(eo: etree._Element, name: str) -> list[str]:
    return [v.text or "" for v in eo.findall(f"rim:Slot[@name='{name}']/rim:ValueList/rim:Value", NS)]


def patient_ids(envelope_text: str) -> list[tuple[str, str]]:
    """(object label, patientId) of the SubmissionSet and every DocumentEntry and Folder."""
    sor = submit_objects_request(envelope_text)
    if sor is None:
        return []
    try:
        sub = md.parse_submission(sor)
    except XdsError:
        return []
    return [(o.label(), o.patient_id or "") for o in [*sub.submission_sets, *sub.document_entries, *sub.folders]]


def check_metadata(envelope_text: str, facts: dict[str, Any], oid: str, repository_unique_id: str) -> list[Finding]:
    sor = submit_objects_request(envelope_text)
    if sor is None:
        return [
            check(
                "ITI41-METADATA",
                False,
                expected="a ProvideAndRegisterDocumentSetRequest with an lcm:SubmitObjectsRequest",
                actual="none",
                ref=METADATA_REF,
            )
        ]
    content = {d["id"]: d for d in facts.get("documents", [])}
    for eo in sor.iterfind("rim:RegistryObjectList/rim:ExtrinsicObject", NS):
        arrived = content.get(eo.get("id", ""), {})
        for name, value in (
            ("hash", arrived.get("sha1")),
            ("size", arrived.get("size")),
            ("repositoryUniqueId", repository_unique_id),
        ):
            if not _slots(eo, name) and value is not None:
                md.set_slot(eo, name, [str(value)])
    try:
        errors = rules.validate_submission(md.parse_submission(sor), oid)
    except XdsError as exc:
        errors = exc.items
    if not errors:
        return [
            check(
                "ITI41-METADATA",
                True,
                expected="metadata valid by every ITI-42 rule",
                actual="no error",
                ref=METADATA_REF,
            )
        ]
    return [
        check(
            f"ITI41-METADATA/{e.code}",
            False,
            expected="metadata valid by every ITI-42 rule",
            actual=e.context,
            ref=METADATA_REF,
        )
        for e in errors
    ]


def check_content(envelope_text: str, facts: dict[str, Any]) -> list[Finding]:
    """A hash or size the source declares must be those of the document it sends (ITI TF-3 4.2.3.2.11,
    4.2.3.2.19; the repository answers XDSRepositoryMetadataError otherwise, ITI TF-2b 3.41.4.1.3)."""
    sor = submit_objects_request(envelope_text)
    content = {d["id"]: d for d in facts.get("documents", [])}
    out: list[Finding] = []
    for eo in sor.iterfind("rim:RegistryObjectList/rim:ExtrinsicObject", NS) if sor is not None else []:
        eid = eo.get("id", "")
        arrived = content.get(eid)
        if arrived is None:
            out.append(
                check(
                    "ITI41-DOCUMENT",
                    False,
                    expected=f"a Document for DocumentEntry {eid}",
                    actual="none",
                    ref="ITI TF-2b 3.41.4.1.2",
                )
            )
            continue
        for name, actual, rule, ref in (
            ("hash", arrived.get("sha1"), "ITI41-HASH", "ITI TF-3 4.2.3.2.11; ITI TF-2b 3.41.4.1.3"),
            ("size", arrived.get("size"), "ITI41-SIZE", "ITI TF-3 4.2.3.2.19; ITI TF-2b 3.41.4.1.3"),
        ):
            for declared in _slots(eo, name):
                same = str(actual).lower() == declared.strip().lower()
                out.append(
                    check(
                        rule,
                        same,
                        expected=f"DocumentEntry {eid} {name} {declared} to be the document's",
                        actual=f"document {name} {actual}",
                        ref=ref,
                    )
                )
    return out


def check_mtom(envelope_text: str, facts: dict[str, Any]) -> list[Finding]:
    """ITI-41 travels as an MTOM/XOP package: multipart/related of type application/xop+xml whose start
    names the root part, start-info application/soap+xml, a root part of application/xop+xml with
    type application/soap+xml, and every xop:Include naming a part (and every part named once)."""
    ctype = facts.get("content_type", "")
    media, params = parse_content_type(ctype)
    framing = facts.get("mtom")
    out = [
        check(
            "MTOM-PACKAGE",
            media == "multipart/related" and framing is not None,
            expected="Content-Type multipart/related (an MTOM/XOP package)",
            actual=ctype or "no Content-Type",
            ref=f"ITI TF-2b 3.41.4.1.2; {MTOM_REF}",
        )
    ]
    if framing is None:
        return out
    out.append(
        check(
            "MTOM-TYPE",
            params.get("type", "").lower() == "application/xop+xml",
            expected='multipart/related parameter type="application/xop+xml"',
            actual=repr(params.get("type")),
            ref=MTOM_REF,
        )
    )
    start = params.get("start")
    out.append(
        check(
            "MTOM-START",
            start is not None and normalize_content_id(start) == framing["root_content_id"],
            expected=f"parameter start naming the root part <{framing['root_content_id']}>",
            actual=repr(start),
            ref=f"{MTOM_REF} (RFC 2387 3.2)",
        )
    )
    out.append(
        check(
            "MTOM-START-INFO",
            params.get("start-info", "").lower() == "application/soap+xml",
            expected='parameter start-info="application/soap+xml"',
            actual=repr(params.get("start-info")),
            ref=MTOM_REF,
        )
    )
    root_media, root_params = parse_content_type(framing["root_content_type"])
    out.append(
        check(
            "MTOM-ROOT-TYPE",
            root_media == "application/xop+xml" and root_params.get("type", "").lower() == "application/soap+xml",
            expected='root part Content-Type application/xop+xml; type="application/soap+xml"',
            actual=framing["root_content_type"],
            ref=MTOM_REF,
        )
    )
    parts = {p["content_id"] for p in framing["parts"]}
    hrefs = [d["href"] for d in facts.get("documents", []) if d.get("href") is not None]
    named = [normalize_content_id(h[4:]) if h[:4].lower() == "cid:" else h for h in hrefs]
    unresolved = [h for h, n in zip(hrefs, named, strict=True) if n not in parts]
    out.append(
        check(
            "MTOM-INCLUDE",
            not unresolved,
            expected="every xop:Include href a cid: URL naming a MIME part",
            actual=f"unresolved {unresolved}" if unresolved else "all resolved",
            ref=f"{MTOM_REF} (XOP 1.0 3.1; RFC 2392)",
        )
    )
    unused = sorted(parts - set(named))
    out.append(
        check(
            "MTOM-PARTS",
            not unused,
            expected="every MIME part referenced by an xop:Include",
            actual=f"unreferenced parts {unused}" if unused else "all referenced",
            ref=MTOM_REF,
        )
    )
    return out


def document_unique_ids(envelope_text: str) -> list[str]:
    sor = submit_objects_request(envelope_text)
    out = []
    for eo in sor.iter(qname("rim", "ExtrinsicObject")) if sor is not None else []:
        for ei in eo.findall("rim:ExternalIdentifier", NS):
            if ei.get("identificationScheme") == md.DE_UNIQUE_ID:
                out.append(ei.get("value", ""))
    return out


def submission_set_unique_id(envelope_text: str) -> str:
    sor = submit_objects_request(envelope_text)
    for rp in sor.iter(qname("rim", "RegistryPackage")) if sor is not None else []:
        for ei in rp.findall("rim:ExternalIdentifier", NS):
            if ei.get("identificationScheme") == md.SS_UNIQUE_ID:
                return ei.get("value", "")
    return ""
