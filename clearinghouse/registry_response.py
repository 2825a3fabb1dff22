"""Rendering ebRS responses (RegistryResponse, AdhocQueryResponse) from typed errors (ITI TF-3 4.2.4)."""

from __future__ import annotations

from lxml import etree

from clearinghouse.errors import SEVERITY_ERROR, XdsError
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
        add_registry_error(errors, item.code, item.context, item.location, item.severity)
    if root_tag == qname("query", "AdhocQueryResponse"):
        etree.SubElement(root, qname("rim", "RegistryObjectList"))
    return root


def add_registry_error(
    errors: etree._Element, code: str, context: str, location: str, severity: str = SEVERITY_ERROR
) -> etree._Element:
    """Append one rs:RegistryError to an rs:RegistryErrorList."""
    return etree.SubElement(
        errors,
        qname("rs", "RegistryError"),
        errorCode=code,
        codeContext=context,
        location=location,
        severity=severity,
    )
