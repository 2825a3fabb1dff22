"""SOAP 1.2 envelopes with WS-Addressing 1.0 headers, and SOAP 1.2 faults (W3C SOAP 1.2 part 1, 5.4)."""

from __future__ import annotations

import uuid

from lxml import etree

from clearinghouse.xmlsafe import NS

SOAP = NS["soap"]
WSA = NS["wsa"]
WSA_ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"
WSA_FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"
SOAP12_CONTENT_TYPE = "application/soap+xml; charset=UTF-8"


def new_message_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def envelope(
    body: etree._Element | None,
    *,
    action: str,
    message_id: str | None = None,
    relates_to: str | None = None,
    to: str | None = None,
) -> etree._Element:
    """A SOAP 1.2 envelope whose header carries the WS-Addressing properties of the message."""
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"s": SOAP, "a": WSA})
    header = etree.SubElement(env, f"{{{SOAP}}}Header")
    act = etree.SubElement(header, f"{{{WSA}}}Action")
    act.set(f"{{{SOAP}}}mustUnderstand", "true")
    act.text = action
    etree.SubElement(header, f"{{{WSA}}}MessageID").text = message_id or new_message_id()
    if relates_to:
        etree.SubElement(header, f"{{{WSA}}}RelatesTo").text = relates_to
    if to:
        t = etree.SubElement(header, f"{{{WSA}}}To")
        t.set(f"{{{SOAP}}}mustUnderstand", "true")
        t.text = to
    else:
        reply = etree.SubElement(header, f"{{{WSA}}}ReplyTo")
        etree.SubElement(reply, f"{{{WSA}}}Address").text = WSA_ANONYMOUS
    b = etree.SubElement(env, f"{{{SOAP}}}Body")
    if body is not None:
        b.append(body)
    return env


def fault(
    code: str, reason: str, *, subcode: str = "", subcode_ns: str = "", relates_to: str | None = None
) -> etree._Element:
    """A SOAP 1.2 Fault envelope; ``code`` is Sender, Receiver, VersionMismatch or MustUnderstand."""
    env = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"s": SOAP, "a": WSA})
    header = etree.SubElement(env, f"{{{SOAP}}}Header")
    etree.SubElement(header, f"{{{WSA}}}Action").text = WSA_FAULT_ACTION
    etree.SubElement(header, f"{{{WSA}}}MessageID").text = new_message_id()
    if relates_to:
        etree.SubElement(header, f"{{{WSA}}}RelatesTo").text = relates_to
    body = etree.SubElement(env, f"{{{SOAP}}}Body")
    f = etree.SubElement(body, f"{{{SOAP}}}Fault")
    c = etree.SubElement(f, f"{{{SOAP}}}Code")
    etree.SubElement(c, f"{{{SOAP}}}Value").text = f"s:{code}"
    if subcode:
        sc = etree.SubElement(c, f"{{{SOAP}}}Subcode")
        value = etree.SubElement(sc, f"{{{SOAP}}}Value", nsmap={"sc": subcode_ns or WSA})
        value.text = f"sc:{subcode}"
    r = etree.SubElement(f, f"{{{SOAP}}}Reason")
    text = etree.SubElement(r, f"{{{SOAP}}}Text")
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    text.text = reason
    return env


def to_bytes(element: etree._Element) -> bytes:
    return etree.tostring(element, xml_declaration=True, encoding="UTF-8")


def _xml_text(value: str) -> bytes:
    # What libxml2 escapes in character data; a CR stays a reference so that it survives parsing.
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;").encode()


def _reply_template() -> tuple[bytes, bytes, bytes, bytes, bytes]:
    # Cut from lxml's own serialisation of a reply envelope, so the layout is exactly envelope() + to_bytes().
    marks = ("ACTION-0b7c1e", "MESSAGEID-0b7c1e", "RELATESTO-0b7c1e")
    text = to_bytes(envelope(None, action=marks[0], message_id=marks[1], relates_to=marks[2]))
    parts = []
    for mark in marks:
        head, _, text = text.partition(mark.encode())
        parts.append(head)
    head, empty, tail = text.partition(b"<s:Body/>")
    assert empty, "a reply envelope ends with an empty Body"
    return parts[0], parts[1], parts[2], head + b"<s:Body>", b"</s:Body>" + tail


_REPLY = _reply_template()


def reply_bytes(body_xml: bytes, *, action: str, relates_to: str) -> bytes:
    """``to_bytes(envelope(body, action=action, relates_to=relates_to))`` for a body already serialised
    (UTF-8, no XML declaration): written around those bytes rather than building the header as elements
    (a third of the SOAP endpoint's own cost of an ITI-18 answer)."""
    if not relates_to:
        raise ValueError("a reply relates to the request's MessageID")
    p0, p1, p2, p3, p4 = _REPLY
    return b"".join((p0, _xml_text(action), p1, new_message_id().encode(), p2, _xml_text(relates_to), p3, body_xml, p4))


def header_value(env: etree._Element, local: str) -> str | None:
    el = env.find(f"{{{SOAP}}}Header/{{{WSA}}}{local}")
    if el is None or el.text is None:
        return None
    return el.text.strip()


def body_child(env: etree._Element) -> etree._Element | None:
    body = env.find(f"{{{SOAP}}}Body")
    if body is None:
        return None
    children = [c for c in body if isinstance(c.tag, str)]
    return children[0] if len(children) == 1 else None
