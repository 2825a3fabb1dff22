"""ITI-8 Patient Identity Feed content (ITI TF-2a 3.8.4.1, HL7 v2.3.1 / v2.5 chapter 2 and 3)."""

from __future__ import annotations

from clearinghouse import hl7
from conformance.findings import Finding, check

REF = "ITI TF-2a 3.8.4.1.2"
EVENTS = {"A01": "ADT_A01", "A04": "ADT_A01", "A05": "ADT_A01", "A08": "ADT_A01", "A40": "ADT_A39"}
VERSIONS = ("2.3.1", "2.5")


def affinity_ids(msg: hl7.Message, oid: str) -> list[str]:
    """The PID-3 repetitions assigned by the affinity domain, as CX ID^^^&OID&ISO."""
    pid = msg.segment("PID")
    if pid is None:
        return []
    out = []
    for rep in range(1, pid.repetition_count(3) + 1):
        if pid.get(3, 4, rep, 2) == oid and pid.get(3, 4, rep, 3).upper() == "ISO":
            out.append(f"{pid.get(3, 1, rep)}^^^&{oid}&ISO")
    return out


def check_feed(message: bytes, oid: str) -> list[Finding]:
    try:
        msg = hl7.parse_message(message)
    except hl7.MalformedMessage as exc:
        return [check("ITI8-PARSE", False, expected="a parseable HL7 v2 message", actual=exc.text, ref="HL7 v2.5 2.6")]
    event = msg.trigger_event
    out = [
        check(
            "ITI8-MSH-9",
            msg.message_type == "ADT" and event in EVENTS,
            expected=f"MSH-9 ADT^{'|'.join(EVENTS)}",
            actual=f"{msg.message_type}^{event}",
            ref=f"{REF} (ITI TF-2a 3.8.4.1.1 trigger events)",
        ),
        check(
            "ITI8-MSH-12",
            msg.version in VERSIONS,
            expected=f"MSH-12 version {' or '.join(VERSIONS)}",
            actual=msg.version,
            ref=REF,
        ),
        check(
            "ITI8-MSH-10",
            bool(msg.control_id) and len(msg.control_id) <= 20,
            expected="MSH-10 message control id of 1 to 20 characters",
            actual=repr(msg.control_id),
            ref="HL7 v2.5 2.15.9.10",
        ),
        check(
            "ITI8-MSH-11",
            msg.processing_id in ("P", "T", "D"),
            expected="MSH-11 processing id P, T or D",
            actual=repr(msg.processing_id),
            ref="HL7 v2.5 2.15.9.11",
        ),
        check("ITI8-EVN", msg.segment("EVN") is not None, expected="an EVN segment", actual=_names(msg), ref=REF),
        check("ITI8-PID", msg.segment("PID") is not None, expected="a PID segment", actual=_names(msg), ref=REF),
    ]
    if msg.version == "2.5" and event in EVENTS:
        out.append(
            check(
                "ITI8-MSH-9.3",
                msg.message_structure == EVENTS[event],
                expected=f"MSH-9.3 message structure {EVENTS[event]} for {event} in v2.5",
                actual=repr(msg.message_structure),
                ref=f"{REF}; HL7 v2.5 2.15.9.9",
            )
        )
    if event != "A40":
        out.append(
            check("ITI8-PV1", msg.segment("PV1") is not None, expected="a PV1 segment", actual=_names(msg), ref=REF)
        )
    ids = affinity_ids(msg, oid)
    out.append(
        check(
            "ITI8-PID-3",
            bool(ids),
            expected=f"a PID-3 identifier assigned by the affinity domain (^^^&{oid}&ISO)",
            actual=msg.segment("PID").raw(3) if msg.segment("PID") is not None else "no PID",
            ref=f"{REF}; ITI TF-2a 3.8.4.1.2.3",
        )
    )
    return out


def _names(msg: hl7.Message) -> str:
    return " ".join(s.name for s in msg.segments())
