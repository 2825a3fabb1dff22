"""Hardened XML parsing for everything that arrives from a peer.

No DTDs at all (so no external entities, no entity expansion), no network access,
bounded size and nesting depth. Any violation raises XmlRejected with a reason a
SOAP fault can carry.
"""

from __future__ import annotations

import re
import threading

from lxml import etree

NS = {
    "soap": "http://www.w3.org/2003/05/soap-envelope",
    "soap11": "http://schemas.xmlsoap.org/soap/envelope/",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "xop": "http://www.w3.org/2004/08/xop/include",
    "xdsb": "urn:ihe:iti:xds-b:2007",
    "rim": "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0",
    "rs": "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0",
    "lcm": "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0",
    "query": "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0",
}

_DTD_MARKERS = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)", re.IGNORECASE)


class XmlRejected(ValueError):
    """The XML was refused before or while parsing; the message says why."""


_local = threading.local()


def _parser() -> etree.XMLParser:
    # A parser may not be shared between threads (lxml), but building one per document costs as much as
    # parsing a small audit record: keep one per thread.
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = _new_parser()
    return parser


def _new_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
        collect_ids=False,
    )


def parse_xml(data: bytes, *, max_bytes: int, max_depth: int) -> etree._Element:
    """Parse ``data`` as a single XML document under the hardening rules."""
    if len(data) > max_bytes:
        raise XmlRejected(f"XML document of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    # Every marker starts with "<!": a plain substring test spares most documents the regular expression.
    if b"<!" in data and _DTD_MARKERS.search(data):
        raise XmlRejected("XML document type declarations (DTDs, entities) are not accepted")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise XmlRejected(f"XML is not well-formed: {exc}") from exc
    if root is None:
        raise XmlRejected("empty XML document")
    if _deeper_than(root, max_depth):
        depth = max_nesting_depth(root)
        raise XmlRejected(f"XML nesting depth {depth} exceeds the limit of {max_depth}")
    return root


def _deeper_than(root: etree._Element, max_depth: int) -> bool:
    """Whether any element lies deeper than ``max_depth``: one XPath step per level, evaluated in
    libxml2, instead of walking every node in Python (the exact depth is computed only to report it)."""
    return bool(_depth_probe(max_depth)(root))


def _depth_probe(max_depth: int) -> etree.XPath:
    # Compiled once per thread and limit, for the same reason as the parser.
    probes = getattr(_local, "probes", None)
    if probes is None:
        probes = _local.probes = {}
    probe = probes.get(max_depth)
    if probe is None:
        probe = probes[max_depth] = etree.XPath("boolean(/" + "*/" * max_depth + "*)")
    return probe


def max_nesting_depth(root: etree._Element) -> int:
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node)
    return deepest


def qname(prefix: str, local: str) -> str:
    return f"{{{NS[prefix]}}}{local}"
