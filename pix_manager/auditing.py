"""Audit events of the PIX Manager transactions that the transport hooks cannot see, built with the
core audit interface (clearinghouse.audit) and emitted to the configured sink.

ITI-8 and ITI-9 over MLLP are audited by the MLLP listener's hook like every HL7 v2 exchange; here are
ITI-10 (this node sends), ITI-44/ITI-45 (HL7 v3 over SOAP) and ITI-83 (PIXm), following the ITI TF-2
audit tables: the feed as a Patient Record event (Create for an add, Update for a revise or merge),
the queries as Query events with the query itself and the patients found.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from clearinghouse import audit, hl7
from clearinghouse.audit import AuditMessage, AuditNode, AuditSink, Code, ParticipantObject, Party
from clearinghouse.peer import Peer
from pix_manager.identifiers import audit_cx

log = logging.getLogger("pix_manager.audit")

TRANSACTIONS = {
    "ITI-44": "Patient Identity Feed HL7 V3",
    "ITI-45": "PIXV3 Query",
    "ITI-83": "Mobile Patient Identifier Cross-reference Query",
    "ITI-104": "Patient Identity Feed FHIR",
}
# The v3 interactions of ITI-44 and the HL7 v2 event each one corresponds to (for EventActionCode).
V3_EVENTS = {"PRPA_IN201301UV02": "A01", "PRPA_IN201302UV02": "A08", "PRPA_IN201304UV02": "A40"}
# ParticipantObjectTypeCodeRole 4 (Resource) for the Patient resource an ITI-104 request wrote, and the
# data life cycle a removed one went through (DICOM PS3.15 A.5.2: 14, Logical deletion).
ROLE_RESOURCE = "4"
LIFECYCLE_LOGICAL_DELETION = "14"


def transaction_code(transaction: str) -> Code:
    return Code(transaction, audit.IHE_TRANSACTIONS, TRANSACTIONS.get(transaction) or transaction)


def party(peer: Peer | None, address: str = "") -> Party:
    if peer is None:
        return Party("unknown", address)
    return Party(peer.participant or peer.subject, address, peer.subject)


class PixAuditor:
    """Emits PIX Manager audit messages to ``sink``; never raises into the transaction it records."""

    def __init__(self, sink: AuditSink, node: AuditNode) -> None:
        self.sink = sink
        self.node = node

    def _emit(self, build: Callable[[], AuditMessage]) -> None:
        try:
            self.sink.emit(build())
        except Exception:  # noqa: BLE001 - auditing must never break what it records
            log.exception("could not build or emit a PIX audit event")

    def me(self, endpoint: str) -> Party:
        return Party(endpoint, self.node.hostname, alt_user_id=self.node.process_id)

    def v3_feed(
        self,
        *,
        interaction: str,
        peer: Peer,
        address: str,
        endpoint: str,
        patient_ids: Sequence[str],
        message_id: str,
        outcome: int,
        description: str,
    ) -> None:
        self._emit(
            lambda: audit.patient_identity_feed(
                node=self.node,
                source=party(peer, address),
                destination=self.me(endpoint),
                trigger_event=V3_EVENTS.get(interaction, "A08"),
                patient_ids=patient_ids,
                message_control_id=message_id,
                outcome=outcome,
                outcome_description=description,
                transaction="ITI-44",
            )
        )

    def fhir_feed(
        self,
        *,
        action: str,
        peer: Peer | None,
        address: str,
        endpoint: str,
        patient_id: str,
        resource: str,
        outcome: int,
        description: str,
        transaction: str | None = "ITI-104",
    ) -> None:
        """ITI-104 as the manager records it (PIXm 2:3.104.5.1.2, the BALP PatientCreate, PatientUpdate
        and PatientDelete patterns): Patient Record with action C, U or D as the manager decided, ITI-104
        as the event type, the source as requestor, the patient named by the request's ``identifier``
        parameter (``patient_id``, a CX) and the Patient resource written (``resource``, Patient/{id}).
        A read of a Patient resource (action R, ``transaction`` None) is recorded the same way, as BALP's
        PatientRead: no IHE transaction defines it."""

        def build() -> AuditMessage:
            objects = [audit.patient_object(patient_id)] if patient_id else []
            if resource:
                objects.append(
                    ParticipantObject(
                        resource,
                        audit.OBJ_SYSTEM,
                        ROLE_RESOURCE,
                        audit.ID_URI,
                        lifecycle=LIFECYCLE_LOGICAL_DELETION if action == "D" else "",
                    )
                )
            return AuditMessage(
                audit.EV_PATIENT_RECORD,
                action,
                outcome,
                datetime.now(UTC),
                self.node.source,
                (
                    party(peer, address).participant(audit.ROLE_SOURCE, requestor=True),
                    self.me(endpoint).participant(audit.ROLE_DESTINATION, requestor=False),
                ),
                (transaction_code(transaction),) if transaction else (),
                tuple(objects),
                description,
            )

        self._emit(build)

    def refused(self, *, peer: Peer | None, address: str, endpoint: str, transaction: str, reason: str) -> None:
        """A peer without the role a transaction needs: Use of Restricted Function (as the SOAP endpoints
        record it)."""
        self._emit(
            lambda: audit.restricted_function(
                node=self.node, endpoint=endpoint, peer=party(peer, address), transaction=transaction, reason=reason
            )
        )

    def query(
        self,
        *,
        transaction: str,
        peer: Peer,
        address: str,
        endpoint: str,
        query: bytes,
        query_id: str,
        patient_ids: Sequence[str],
        outcome: int,
        description: str,
    ) -> None:
        """ITI-45 / ITI-83 as ITI-9 is audited: a Query event, the consumer as requestor, the query
        object (the QueryByParameter, or the request's query string) and the patients concerned."""

        def build() -> AuditMessage:
            objects = [audit.patient_object(i) for i in dict.fromkeys(p for p in patient_ids if p)]
            objects.append(
                ParticipantObject(
                    query_id or "-", audit.OBJ_SYSTEM, audit.ROLE_QUERY, transaction_code(transaction), query=query
                )
            )
            return AuditMessage(
                audit.EV_QUERY,
                "E",
                outcome,
                datetime.now(UTC),
                self.node.source,
                (
                    party(peer, address).participant(audit.ROLE_SOURCE, requestor=True),
                    self.me(endpoint).participant(audit.ROLE_DESTINATION, requestor=False),
                ),
                (transaction_code(transaction),),
                tuple(objects),
                description,
            )

        self._emit(build)

    def notification(self, *, consumer: str, url: str, message: bytes, outcome: int, description: str) -> None:
        """ITI-10 as sent by this node (one event per delivery attempt)."""

        def build() -> AuditMessage:
            msg = hl7.parse_message(message)
            ids = []
            pid = msg.segment("PID")
            for rep in range(1, (pid.repetition_count(3) if pid else 0) + 1):
                assert pid is not None
                ids.append(audit_cx(pid.get(3, 1, rep), pid.get(3, 4, rep, 2)))
            return audit.pix_update_notification(
                node=self.node,
                manager=self.me(f"{self.node.app_name}@{self.node.hostname}/pix"),
                consumer=Party(consumer, url),
                patient_ids=ids,
                message_control_id=msg.control_id,
                outcome=outcome,
                outcome_description=description,
            )

        self._emit(build)
