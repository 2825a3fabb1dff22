"""Rendering ebRS responses (RegistryResponse, AdhocQueryResponse) from typed errors (ITI TF-3 4.2.4)."""

from __future__ import annotations

from lxml import etree

from clearinghouse.errors import XdsError
from clearinghouse.xmlsafe import NS, qname

STATUS_SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
STATUS_FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"


def success_response() -> etree._Element:
    return etree.Element(qname("rs", "RegistryResponse"), nsmap={"rs": NS["rs"]}, status=STATUS_SUCCESS)


def error_response(root_tag: str, error: XdsError) -> etree._Element:
    """A response of type ``root_tag`` (rs:RegistryResponse or query:AdhocQueryResponse) with status
    Failure and one rs:RegistryError per error item."""
    root = etree.Element(
        root_tag, nsmap={"rs": NS["rs"], "query": NS["query"], "rim": NS["rim"]}, status=STATUS_FAILURE
    )
    errors = etree.SubElement(root, qname("rs", "RegistryErrorList"))
    for item in error.items:
        etree.SubElement(
            errors,
            qname("rs", "RegistryError"),
            errorCode=item.code,
            codeContext=item.context,
            location=item.location,
            severity=item.severity,
        )
    if root_tag == qname("query", "AdhocQueryResponse"):
        etree.SubElement(root, qname("rim", "RegistryObjectList"))
    return root
