"""ITI-8 Patient Identity Feed, received by the Document Registry (ITI TF-2a 3.8), over MLLP.

A01/A04/A05/A08 make the patient's affinity-domain identifier known; A40 merges one into another.
Identifiers of other assigning authorities are ignored (the registry only files documents under
the affinity domain's), and nothing but identifiers is read: names and birth dates in the PID are
neither stored nor logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session, sessionmaker

from clearinghouse import hl7
from clearinghouse.config import Settings
from clearinghouse.db import transaction
from clearinghouse.errors import AccessDenied, HL7Error
from clearinghouse.peer import Peer
from registry.patients import MAX_ID_LENGTH, merge_patients, register_patient, register_patients

log = logging.getLogger("registry.feed")

SUPPORTED = {"ADT": frozenset({"A01", "A04", "A05", "A08", "A40"})}
NEEDED_ROLE = "source"
# Characters that would make the CX form ID^^^&OID&ISO ambiguous once the ID is decoded.
_FORBIDDEN_IN_ID = set("^&~\\|")


class PatientIdentityFeed:
    """The MLLP handler: ``handle(peer, message) -> ACK``; one database transaction per message."""

    # Called with (transaction, peer, reason) when a peer without the role is refused; set by the
    # composition to audit the refusal (clearinghouse.audit_events.Auditor.hl7_refused).
    audit_refused: Callable[[str, Peer, str], None] | None = None

    def __init__(self, session_factory: sessionmaker[Session], settings: Settings) -> None:
        self._sessions = session_factory
        self._oid = settings.affinity_domain_oid

    def handle(self, peer: Peer, data: bytes) -> bytes:
        if not peer.has_role(NEEDED_ROLE):
            denied = AccessDenied(peer.subject, "ITI-8 Patient Identity Feed", NEEDED_ROLE)
            log.warning(
                "ITI-8 refused: peer %r (participant %r) lacks role %r", peer.subject, peer.participant, NEEDED_ROLE
            )
            error = HL7Error(str(denied), ack_code="AR", error_code="207")
            if self.audit_refused is not None:
                self.audit_refused("ITI-8", peer, str(denied))
            return hl7.build_ack(hl7.header_of(data), "AR", error=error)
        msg: hl7.Message | None = None
        try:
            msg = hl7.parse_message(data)
            hl7.check_event(msg, SUPPORTED)
            with transaction(self._sessions) as session:
                outcome = self._apply(session, msg)
        except hl7.MalformedMessage as exc:
            return self._refuse(peer, exc.partial, exc)
        except HL7Error as exc:
            return self._refuse(peer, msg, exc)
        except Exception:
            log.exception("ITI-8 %s from %r failed", _describe(msg), peer.subject)
            error = HL7Error("internal error while processing the message", ack_code="AE", error_code="207")
            return hl7.build_ack(msg, "AE", error=error)
        log.info("ITI-8 %s from %r: AA, %s", _describe(msg), peer.subject, outcome)
        return hl7.build_ack(msg, "AA")

    def handle_registrations(self, peer: Peer, messages: Sequence[bytes]) -> int:
        """Store the longest leading run of ``messages`` that are valid registrations (A01/A04/A05/A08) in
        one transaction and return its length: each of them would have been answered AA. The message
        that ends the run is not handled (send it through ``handle``, which answers it). Lets the
        in-process PIX Manager pass on a backlog of new patients at one commit per run instead of one
        per message, without building and reading back an ACK for each."""
        if not peer.has_role(NEEDED_ROLE):
            return 0
        run: list[tuple[hl7.Message, list[str]]] = []
        for data in messages:
            try:
                msg = hl7.parse_message(data)
                hl7.check_event(msg, SUPPORTED)
                pid = msg.segment("PID")
                if msg.trigger_event == "A40" or pid is None:
                    break
                run.append((msg, self._domain_ids(pid, 3, "PID^1^3")))
            except HL7Error:  # MalformedMessage included: ``handle`` gives it its answer
                break
        if run:
            with transaction(self._sessions) as session:
                register_patients(session, [patient_id for _msg, ids in run for patient_id in ids])
            log.info("ITI-8 from %r: %d registration(s) in one transaction: AA", peer.subject, len(run))
        return len(run)

    def _refuse(self, peer: Peer, msg: hl7.Message | None, exc: HL7Error) -> bytes:
        log.info(
            "ITI-8 %s from %r: %s %s at %s: %s",
            _describe(msg),
            peer.subject,
            exc.ack_code,
            exc.error_code,
            exc.location or "-",
            exc.text,
        )
        return hl7.build_ack(msg, exc.ack_code, error=exc)

    def _apply(self, session: Session, msg: hl7.Message) -> str:
        if msg.trigger_event == "A40":
            return self._merge(session, msg)
        pid = msg.segment("PID")
        if pid is None:
            raise HL7Error("the PID segment is missing", ack_code="AE", error_code="100", location="PID")
        ids = self._domain_ids(pid, 3, "PID^1^3")
        created = sum(register_patient(session, patient_id) for patient_id in ids)
        return f"{len(ids)} affinity-domain identifier(s), {created} new"

    def _merge(self, session: Session, msg: hl7.Message) -> str:
        # ADT_A39 structure: one PID and one MRG per patient group, in order.
        pids, mrgs = msg.segments("PID"), msg.segments("MRG")
        if not pids or len(pids) != len(mrgs):
            raise HL7Error(
                "A40 needs one PID and one MRG segment per merged patient",
                ack_code="AE",
                error_code="100",
                location="MRG" if pids else "PID",
            )
        for n, (pid, mrg) in enumerate(zip(pids, mrgs, strict=True), 1):
            surviving = self._domain_ids(pid, 3, f"PID^{n}^3")[0]
            prior = self._domain_ids(mrg, 1, f"MRG^{n}^1")[0]
            merge_patients(session, surviving, prior, surviving_location=f"PID^{n}^3", prior_location=f"MRG^{n}^1")
        return f"{len(pids)} merge(s)"

    def _domain_ids(self, seg: hl7.Segment, field: int, location: str) -> list[str]:
        """The affinity-domain identifiers among the CX repetitions of ``field``, as ID^^^&OID&ISO."""
        count = seg.repetition_count(field)
        if count == 0:
            raise HL7Error(
                f"{location} (patient identifier) is empty", ack_code="AE", error_code="101", location=location
            )
        ids = []
        for rep in range(1, count + 1):
            oid, kind = seg.get(field, 4, rep, 2), seg.get(field, 4, rep, 3)
            if oid != self._oid or kind.upper() != "ISO":
                continue
            value = seg.get(field, 1, rep)
            cx = f"{value}^^^&{oid}&ISO"
            bad = not value or len(cx) > MAX_ID_LENGTH or any(c in _FORBIDDEN_IN_ID or ord(c) < 0x20 for c in value)
            if bad:
                raise HL7Error(
                    f"{location} repetition {rep} holds an empty or invalid identifier",
                    ack_code="AE",
                    error_code="102",
                    location=location,
                )
            ids.append(cx)
        if not ids:
            raise HL7Error(
                f"no identifier in {location} is assigned by the affinity domain {self._oid}",
                ack_code="AE",
                error_code="204",
                location=location,
            )
        return ids


def _describe(msg: hl7.Message | None) -> str:
    """Message type and control id for the log (repr: both come from the peer)."""
    if msg is None:
        return "(unreadable message)"
    return f"{msg.message_type + '^' + msg.trigger_event!r} control id {msg.control_id!r}"
