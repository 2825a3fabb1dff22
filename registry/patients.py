"""Patient identifiers known to the registry, as fed by ITI-8, and their merges.

Only the affinity-domain identifier (CX ``ID^^^&OID&ISO``) is stored, never demographics: the
network files patients under a one-way hash of their identity, and keeping names here would undo it.

Merge semantics (ITI TF-2a 3.8.4.2.3, A40): the prior (subsumed, MRG-1) identifier becomes
``merged`` with ``merged_into`` the surviving (PID-3) one. New submissions must use the surviving
identifier (``is_known_patient`` is False for a merged one); queries and existing entries follow
merges with ``resolve_patient`` / ``merged_aliases``. Merges are kept one hop deep: whatever was
merged into the prior is re-pointed at the surviving identifier, and an A40 for a prior that was
already merged elsewhere re-points it (the latest merge from the source wins).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import CheckConstraint, ColumnElement, DateTime, Index, Integer, Select, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from clearinghouse.db import Base
from clearinghouse.errors import HL7Error

ACTIVE = "active"
MERGED = "merged"
MAX_ID_LENGTH = 256
# Merges are flattened, so a longer chain can only come from data written by something else.
_MAX_HOPS = 16


class RegistryPatient(Base):
    __tablename__ = "registry_patient"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'merged')", name="ck_registry_patient_status"),
        # Every patient-keyed stored query asks which identifiers were merged into its patient.
        Index("ix_registry_patient_merged_into", "merged_into"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), nullable=False, unique=True, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    merged_into: Mapped[str | None] = mapped_column(String(MAX_ID_LENGTH), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


def _find(session: Session, patient_id: str) -> RegistryPatient | None:
    return session.scalars(select(RegistryPatient).where(RegistryPatient.patient_id == patient_id)).first()


def register_patient(session: Session, patient_id: str) -> bool:
    """Make ``patient_id`` known; True if it was new. A known (even merged) patient is left as is."""
    if _find(session, patient_id) is not None:
        return False
    now = datetime.now(UTC)
    values = {"patient_id": patient_id, "status": ACTIVE, "created_at": now, "updated_at": now}
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        # Two feeds may announce the same patient at once: let the unique index decide, quietly.
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(RegistryPatient).values(**values).on_conflict_do_nothing(index_elements=["patient_id"])
        return session.execute(stmt).rowcount == 1
    session.add(RegistryPatient(**values))
    session.flush()
    return True


def register_patients(session: Session, patient_ids: list[str]) -> None:
    """``register_patient`` for many identifiers in one statement (a backlog fed by the PIX Manager)."""
    dialect = session.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        for patient_id in patient_ids:
            register_patient(session, patient_id)
        return
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    now = datetime.now(UTC)
    rows = [
        {"patient_id": p, "status": ACTIVE, "created_at": now, "updated_at": now} for p in dict.fromkeys(patient_ids)
    ]
    if rows:
        stmt = insert(RegistryPatient.__table__).on_conflict_do_nothing(index_elements=["patient_id"])
        session.execute(stmt, rows)


def merge_patients(
    session: Session,
    surviving_id: str,
    prior_id: str,
    *,
    surviving_location: str = "PID^1^3",
    prior_location: str = "MRG^1^1",
) -> None:
    """Merge ``prior_id`` into ``surviving_id`` (A40). The surviving patient is created if unknown.

    Raises HL7Error AE 204 when the prior identifier was never fed (there is nothing to merge, and
    the source should learn that its view differs from ours) or when the surviving identifier was
    itself merged away (merging into it would make a cycle or a chain); AE 102 when both are equal.
    """
    if surviving_id == prior_id:
        raise HL7Error(
            "the prior (MRG-1) and surviving (PID-3) identifiers are the same",
            ack_code="AE",
            error_code="102",
            location=prior_location,
        )
    prior = _find(session, prior_id)
    if prior is None:
        raise HL7Error(
            "the prior patient identifier (MRG-1) is not known to the registry",
            ack_code="AE",
            error_code="204",
            location=prior_location,
        )
    surviving = _find(session, surviving_id)
    if surviving is not None and surviving.status != ACTIVE:
        raise HL7Error(
            "the surviving patient identifier (PID-3) was itself merged into another patient",
            ack_code="AE",
            error_code="204",
            location=surviving_location,
        )
    if surviving is None:
        register_patient(session, surviving_id)
    if prior.status == MERGED and prior.merged_into == surviving_id:
        return  # a repeated A40: nothing changes
    now = datetime.now(UTC)
    prior.status, prior.merged_into, prior.updated_at = MERGED, surviving_id, now
    session.execute(
        update(RegistryPatient)
        .where(RegistryPatient.merged_into == prior_id)
        .values(merged_into=surviving_id, updated_at=now)
    )
    session.flush()


def is_known_patient(session: Session, patient_id: str) -> bool:
    """True only for an active patient: documents may be registered for it (XDSUnknownPatientId otherwise)."""
    patient = _find(session, patient_id)
    return patient is not None and patient.status == ACTIVE


def resolve_patient(session: Session, patient_id: str) -> str | None:
    """The identifier ``patient_id`` now stands for (itself if active), or None if never fed."""
    current = patient_id
    for _ in range(_MAX_HOPS):
        patient = _find(session, current)
        if patient is None:
            return None if current == patient_id else current
        if patient.status == ACTIVE or not patient.merged_into:
            return current
        current = patient.merged_into
    return None  # a cycle: treat as unknown rather than guess


def merged_aliases_query(surviving_id: str | ColumnElement[str]) -> Select:
    """SELECT of the identifiers merged into ``surviving_id`` (a value or a bound parameter), to
    use as a subquery."""
    return select(RegistryPatient.patient_id).where(RegistryPatient.merged_into == surviving_id)


def merged_aliases(session: Session, surviving_id: str) -> list[str]:
    """Identifiers merged into ``surviving_id``: a query for it also covers their documents."""
    return sorted(session.scalars(merged_aliases_query(surviving_id)))
