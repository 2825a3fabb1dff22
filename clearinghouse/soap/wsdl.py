"""WSDL 1.1 (SOAP 1.2 binding) of an endpoint, rendered from its operation table.

The messages are the IHE ones (ITI TF-2b 3.18/3.41/3.42/3.43 WSDLs): each input and output part
is the ebRS or XDS.b element the transaction carries, soapAction and wsaw:Action are the IHE
actions, and MTOM is declared where the transaction uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from lxml import etree

WSDL = "http://schemas.xmlsoap.org/wsdl/"
SOAP12 = "http://schemas.xmlsoap.org/wsdl/soap12/"
WSAW = "http://www.w3.org/2006/05/addressing/wsdl"
WSP = "http://www.w3.org/ns/ws-policy"
MTOM_POLICY = "http://www.w3.org/2007/08/soap12-mtom-policy"
XS = "http://www.w3.org/2001/XMLSchema"


class OperationLike(Protocol):
    name: str
    action: str
    response_action: str
    body_tag: str
    response_tag: str
    mtom: bool


def _qname(tag: str, prefixes: dict[str, str]) -> str:
    ns, local = tag[1:].split("}")
    return f"{prefixes[ns]}:{local}"


def render_wsdl(service: str, tns: str, location: str, operations: Sequence[OperationLike]) -> bytes:
    namespaces = sorted(
        {op.body_tag[1:].split("}")[0] for op in operations} | {op.response_tag[1:].split("}")[0] for op in operations}
    )
    prefixes = {ns: f"m{i}" for i, ns in enumerate(namespaces)}
    nsmap = {"wsdl": WSDL, "soap12": SOAP12, "wsaw": WSAW, "wsp": WSP, "xs": XS, "tns": tns}
    nsmap.update({p: ns for ns, p in prefixes.items()})
    root = etree.Element(f"{{{WSDL}}}definitions", nsmap=nsmap, name=service, targetNamespace=tns)

    if any(op.mtom for op in operations):
        policy = etree.SubElement(root, f"{{{WSP}}}Policy")
        policy.set(
            "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd}Id", f"{service}_Mtom"
        )
        etree.SubElement(policy, f"{{{MTOM_POLICY}}}OptimizedMimeSerialization", nsmap={"wsoma": MTOM_POLICY})

    types = etree.SubElement(root, f"{{{WSDL}}}types")
    schema = etree.SubElement(types, f"{{{XS}}}schema", elementFormDefault="qualified", targetNamespace=tns)
    for ns in namespaces:
        etree.SubElement(schema, f"{{{XS}}}import", namespace=ns)

    for op in operations:
        for suffix, tag in (("_Message", op.body_tag), ("_Response_Message", op.response_tag)):
            msg = etree.SubElement(root, f"{{{WSDL}}}message", name=op.name + suffix)
            etree.SubElement(msg, f"{{{WSDL}}}part", name="body", element=_qname(tag, prefixes))

    port_type = etree.SubElement(root, f"{{{WSDL}}}portType", name=f"{service}_PortType")
    for op in operations:
        o = etree.SubElement(port_type, f"{{{WSDL}}}operation", name=op.name)
        i = etree.SubElement(o, f"{{{WSDL}}}input", message=f"tns:{op.name}_Message")
        i.set(f"{{{WSAW}}}Action", op.action)
        out = etree.SubElement(o, f"{{{WSDL}}}output", message=f"tns:{op.name}_Response_Message")
        out.set(f"{{{WSAW}}}Action", op.response_action)

    binding = etree.SubElement(
        root, f"{{{WSDL}}}binding", name=f"{service}_Binding_Soap12", type=f"tns:{service}_PortType"
    )
    if any(op.mtom for op in operations):
        etree.SubElement(binding, f"{{{WSP}}}PolicyReference", URI=f"#{service}_Mtom")
    etree.SubElement(
        binding, f"{{{SOAP12}}}binding", style="document", transport="http://schemas.xmlsoap.org/soap/http"
    )
    etree.SubElement(binding, f"{{{WSAW}}}UsingAddressing")
    for op in operations:
        o = etree.SubElement(binding, f"{{{WSDL}}}operation", name=op.name)
        etree.SubElement(o, f"{{{SOAP12}}}operation", soapAction=op.action)
        for direction in ("input", "output"):
            d = etree.SubElement(o, f"{{{WSDL}}}{direction}")
            etree.SubElement(d, f"{{{SOAP12}}}body", use="literal")

    svc = etree.SubElement(root, f"{{{WSDL}}}service", name=service)
    port = etree.SubElement(
        svc, f"{{{WSDL}}}port", name=f"{service}_Port_Soap12", binding=f"tns:{service}_Binding_Soap12"
    )
    etree.SubElement(port, f"{{{SOAP12}}}address", location=location)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
