"""ITI-8 Patient Identity Feed and ITI-9 PIX Query over MLLP/TLS (HL7 v2.3.1 and v2.5), answered by
the HL7 acknowledgement rules in original and enhanced mode (HL7 v2.5 section 2.9).

Original mode (MSH-15 and MSH-16 empty): one answer, ACK (AA/AE/AR) or RSP^K23.
Enhanced mode: an accept acknowledgement (CA/CE/CR) when MSH-15 asks for it, then, when MSH-16 asks
for it, the application acknowledgement on the same connection (its own MSH-15/16 are NE, so the
sender owes no answer; an ACK the sender sends anyway is read and not answered). Messages that do not
get past the header (malformed, unsupported, not allowed) are not accepted: CE/CR, nothing more.
A resent message (same sender, same MSH-10, same content) gets the answer it got the first time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from clearinghouse import hl7
from clearinghouse.errors import AccessDenied, HL7Error, PixMissingField, PixTableValueNotFound
from clearinghouse.peer import Peer
from pix_manager import messages
from pix_manager.identifiers import Authority, RawIdentifier, cx_repetitions, format_cx
from pix_manager.manager import LinkRequest, MergeRequest, MessageKey, PixManager, UnlinkRequest, digest

log = logging.getLogger("pix_manager.v2")

SUPPORTED = {"ADT": frozenset({"A01", "A04", "A05", "A08", "A37", "A40"}), "QBP": frozenset({"Q23"})}
PROCESSING_IDS = frozenset({"P", "D", "T"})  # HL7 table 0103
ROLES = {"ADT": ("source", "ITI-8 Patient Identity Feed"), "QBP": ("consumer", "ITI-9 PIX Query")}
QUERY_NAME = "IHE PIX Query"
_STORED_SEPARATOR = b"\x1c"  # between stored answer messages: FS never occurs inside an HL7 message
_REPLY = {"sending_app": messages.SENDING_APPLICATION, "sending_facility": messages.SENDING_FACILITY}


@dataclass(frozen=True)
class AckMode:
    """MSH-15 (accept) and MSH-16 (application) acknowledgement types; both empty: original mode."""

    enhanced: bool = False
    accept: str = ""
    application: str = ""

    @classmethod
    def of(cls, msg: hl7.Message | None) -> AckMode:
        if msg is None:
            return cls()
        accept, application = msg.header.get(15).strip().upper(), msg.header.get(16).strip().upper()
        if not accept and not application:
            return cls()
        return cls(True, accept or "NE", application or "NE")


def _wanted(kind: str, success: bool) -> bool:
    """HL7 table 0155: AL always, NE never, ER on error or reject only, SU on success only."""
    return kind == "AL" or (kind == "ER" and not success) or (kind == "SU" and success)


def _accept(msg: hl7.Message | None, code: str, errors: list[HL7Error]) -> bytes:
    return hl7.build_reply(msg, code, errors=errors, **_REPLY)


def _application(msg: hl7.Message | None, mode: AckMode, code: str, errors: list[HL7Error], **kw: object) -> bytes:
    extra = {"accept_ack_type": "NE", "application_ack_type": "NE"} if mode.enhanced else {}
    return hl7.build_reply(msg, code, errors=errors, **_REPLY, **extra, **kw)  # type: ignore[arg-type]


def not_accepted(msg: hl7.Message | None, exc: HL7Error) -> list[bytes]:
    """A message refused before processing (malformed header, unsupported event, not allowed)."""
    mode = AckMode.of(msg)
    if not mode.enhanced:
        return [_accept(msg, exc.ack_code, [exc])]
    code = "CR" if exc.ack_code == "AR" else "CE"
    return [_accept(msg, code, [exc])] if _wanted(mode.accept, False) else []


def processed(msg: hl7.Message, code: str, errors: list[HL7Error], **kw: object) -> list[bytes]:
    """The answer to a message that was accepted and processed: ``code`` AA, AE or AR."""
    mode = AckMode.of(msg)
    if not mode.enhanced:
        return [_application(msg, mode, code, errors, **kw)]
    ok = code == "AA"
    out = [_accept(msg, "CA", [])] if _wanted(mode.accept, True) else []
    # A query's response is its answer and is always sent; other messages follow MSH-16.
    if kw.get("message_type") or _wanted(mode.application, ok):
        out.append(_application(msg, mode, code, errors, **kw))
    return out


def feed_key(peer: Peer, msg: hl7.Message, data: bytes, transaction: str = "ITI-8") -> MessageKey:
    """Duplicate control: the sender is the participant and MSH-3/MSH-4; the content is the message
    without MSH-7, so a resend stamped with a new time is still the same message."""
    head, _, rest = data.partition(b"\r")
    fields = head.split(msg.separators.field.encode("latin-1"))
    if len(fields) > 6:
        fields[6] = b""
    sender = "|".join((peer.participant, msg.sending_application, msg.sending_facility))
    return MessageKey(sender, msg.control_id, digest(b"|".join(fields), rest), transaction)


class PixV2Handler:
    """The MLLP handler of the PIX port: ``handle(peer, message) -> answers``."""

    # Called with (transaction, peer, reason) when a peer lacks the role for a transaction; set by the
    # composition (the audit service records it as a use of a restricted function).
    audit_refused: Callable[[str, Peer, str], None] | None = None

    def __init__(self, manager: PixManager) -> None:
        self.manager = manager

    def handle(self, peer: Peer, data: bytes) -> list[bytes]:
        try:
            msg = hl7.parse_message(data)
        except hl7.MalformedMessage as exc:
            log.info("PIX: malformed message from %r: %s %s: %s", peer.subject, exc.ack_code, exc.error_code, exc.text)
            return not_accepted(exc.partial, exc)
        if msg.message_type == "ACK":
            return []  # e.g. the sender's accept acknowledgement of our application acknowledgement
        try:
            hl7.check_event(msg, SUPPORTED)
            if msg.processing_id not in PROCESSING_IDS:
                raise HL7Error(
                    f"processing id {msg.processing_id!r} is not supported (P, D or T)",
                    ack_code="AR",
                    error_code="202",
                    location="MSH^1^11",
                )
            role, transaction = ROLES[msg.message_type]
            if not peer.has_role(role):
                denied = AccessDenied(peer.subject, transaction, role)
                if self.audit_refused is not None:
                    self.audit_refused(transaction.split()[0], peer, str(denied))
                raise HL7Error(str(denied), ack_code="AR", error_code="207")
        except HL7Error as exc:
            log.info(
                "PIX: %s from %r refused: %s %s: %s", _describe(msg), peer.subject, exc.ack_code, exc.error_code, exc
            )
            return not_accepted(msg, exc)
        if msg.message_type == "QBP":
            return self._query(peer, msg)
        return self._feed(peer, msg, data)

    def _feed(self, peer: Peer, msg: hl7.Message, data: bytes) -> list[bytes]:
        try:
            request = feed_request(msg)
            applied = self.manager.apply(
                peer,
                request,
                key=feed_key(peer, msg, data),
                response=_STORED_SEPARATOR.join(processed(msg, "AA", [])),
            )
        except HL7Error as exc:
            log.info(
                "PIX ITI-8 %s from %r: %s %s at %s: %s",
                _describe(msg),
                peer.subject,
                exc.ack_code,
                exc.error_code,
                exc.location or "-",
                exc.text,
            )
            return processed(msg, exc.ack_code, [exc])
        except Exception:
            log.exception("PIX ITI-8 %s from %r failed", _describe(msg), peer.subject)
            error = HL7Error("internal error while storing the message; send it again", ack_code="AE", error_code="207")
            return not_accepted(msg, error)
        log.debug("PIX ITI-8 %s from %r: %s", _describe(msg), peer.subject, "duplicate" if applied.duplicate else "AA")
        return applied.response.split(_STORED_SEPARATOR) if applied.response else []

    def _query(self, peer: Peer, msg: hl7.Message) -> list[bytes]:
        seps = msg.separators
        c = seps.component
        qpd = msg.segment("QPD")
        if qpd is None:
            error = HL7Error("the QPD segment is missing", ack_code="AE", error_code="100", location="QPD")
            return processed(msg, "AE", [error], message_type=f"RSP{c}K23{c}RSP_K23", segments=["QAK||AE"])
        errors: list[HL7Error] = []
        if qpd.get(1, 1) != QUERY_NAME:
            errors.append(
                PixTableValueNotFound(f"QPD-1 must be {QUERY_NAME!r}, not {qpd.get(1, 1)!r}", location="QPD^1^1")
            )
        sources = cx_repetitions(qpd, 3, "QPD^1^3")
        if len(sources) != 1:
            errors.append(PixMissingField("QPD-3 must hold exactly one patient identifier", location="QPD^1^3"))
        identifiers = []
        if not errors:
            answer = self.manager.query(sources[0], query_domains(qpd))
            errors += answer.errors
            config = answer.config
            identifiers = [format_cx(config.by_id[i.domain_id], i.value, seps) for i in answer.identifiers]
        status = "AE" if errors else ("OK" if identifiers else "NF")
        segments = [seps.field.join(["QAK", qpd.raw(2), status]), seps.field.join(qpd.fields)]
        if status == "OK":
            pseudo_name = f"{seps.repetition}{c * 6}S"
            segments.append(seps.field.join(["PID", "", "", seps.repetition.join(identifiers), "", pseudo_name]))
        return processed(msg, "AE" if errors else "AA", errors, message_type=f"RSP{c}K23{c}RSP_K23", segments=segments)


def feed_request(msg: hl7.Message) -> LinkRequest | MergeRequest | UnlinkRequest:
    pids = msg.segments("PID")
    if msg.trigger_event == "A37":
        return unlink_request(pids)
    if len(pids) != 1:
        raise HL7Error(
            "exactly one PID segment is required" if pids else "the PID segment is missing",
            ack_code="AE",
            error_code="100",
            location="PID",
        )
    surviving = cx_repetitions(pids[0], 3, "PID^1^3")
    if not surviving:
        raise PixMissingField("PID-3 (patient identifier list) is empty", location="PID^1^3")
    if msg.trigger_event != "A40":
        return LinkRequest(surviving, event=msg.trigger_event)
    mrgs = msg.segments("MRG")
    if len(mrgs) != 1:  # ITI TF-2a 3.8.4.2.2: one merge message per pair of patient records
        raise HL7Error(
            "an A40 carries exactly one PID and one MRG segment" if mrgs else "the MRG segment is missing",
            ack_code="AE",
            error_code="100",
            location="MRG",
        )
    prior = cx_repetitions(mrgs[0], 1, "MRG^1^1")
    if not prior:
        raise PixMissingField("MRG-1 (prior patient identifier list) is empty", location="MRG^1^1")
    return MergeRequest(surviving, prior)


def unlink_request(pids: list[hl7.Segment]) -> UnlinkRequest:
    """ADT^A37^ADT_A37: MSH EVN PID [PD1] [PV1] [DB1] PID [PD1] [PV1] [DB1]; the two PID-3 lists are
    the patients to unlink (HL7 v2.5 3.3.37, v2.3.1 3.3.37)."""
    if len(pids) != 2:
        raise HL7Error(
            "an A37 carries exactly two PID segments, one per patient to unlink",
            ack_code="AE",
            error_code="100",
            location="PID",
        )
    lists = []
    for n, pid in enumerate(pids, 1):
        ids = cx_repetitions(pid, 3, f"PID^{n}^3")
        if not ids:
            raise PixMissingField(f"PID-3 of patient {n} (patient identifier list) is empty", location=f"PID^{n}^3")
        lists.append(ids)
    return UnlinkRequest(lists[0], lists[1])


def query_domains(qpd: hl7.Segment) -> list[RawIdentifier]:
    """QPD-4 What Domains Returned: repetitions with only the assigning authority; an error is
    located at the repetition (ITI-9 case 5: ERR-2.4 is its ordinal, no component)."""
    out = []
    for rep in range(1, qpd.repetition_count(4) + 1):
        authority = Authority(qpd.get(4, 4, rep, 1), qpd.get(4, 4, rep, 2), qpd.get(4, 4, rep, 3))
        value = qpd.get(4, 1, rep)
        if authority or value:
            out.append(RawIdentifier(value, authority, f"QPD^1^4^{rep}"))
    return out


def _describe(msg: hl7.Message | None) -> str:
    if msg is None:
        return "(unreadable message)"
    return f"{msg.message_type + '^' + msg.trigger_event!r} control id {msg.control_id!r}"
