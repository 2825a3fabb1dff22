"""When each registered submission is due for purging (docs/retention.md).

One row per SubmissionSet in ``registry_retention`` (migration registry_0004), written in the
transaction that registers the submission (ITI-42, and ITI-57, whose SubmissionSet is a
registration too). The expiry is fixed at registration: changing a participant's retention later
applies to its later submissions. The rule itself is ``clearinghouse.retention_policy``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from clearinghouse.db import Base
from clearinghouse.errors import RegistryErrorItem, XDSRegistryMetadataError
from clearinghouse.retention_policy import (
    RETENTION_SLOT,
    RetentionRuleError,
    effective_days,
    expires_at,
    requested_days,
)
from registry import metadata as md
from registry.models import PARTICIPANT_LEN, UNIQUE_ID_LEN, UUID_LEN, RegistryObjectRow


class RegistryRetentionRow(Base):
    """A registered SubmissionSet and when it expires; purgers lock these rows (FOR UPDATE SKIP LOCKED)."""

    __tablename__ = "registry_retention"

    submission_set_uuid: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    submission_set_unique_id: Mapped[str | None] = mapped_column(String(UNIQUE_ID_LEN))
    patient_id: Mapped[str | None] = mapped_column(String(256))
    submitted_by: Mapped[str | None] = mapped_column(String(PARTICIPANT_LEN))
    retention_days: Mapped[int] = mapped_column(Integer, nullable=False)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (Index("ix_registry_retention_expires_at", "expires_at"),)


def submission_days(
    sub: md.Submission, default_days: int, participant_days: int | None
) -> tuple[int, list[RegistryErrorItem]]:
    """The retention of a submission and, if its retention slot breaks the rule, the error
    (XDSRegistryMetadataError naming the SubmissionSet, the slot and the rule)."""
    ss = sub.submission_set
    values = ss.slot(RETENTION_SLOT) if ss is not None else []
    try:
        return effective_days(default_days, participant_days, requested_days(values)), []
    except RetentionRuleError as exc:
        assert ss is not None  # without the slot there is no rule to break
        return default_days, [
            RegistryErrorItem(
                XDSRegistryMetadataError.code,
                f"SubmissionSet {ss.id} (uniqueId {ss.unique_id or '?'}): {exc}",
                ss.id,
            )
        ]


def record(
    session: Session, ss_unique_id: str, *, days: int, registered_at: datetime, submitted_by: str | None
) -> None:
    """Record the expiry of the SubmissionSet just stored in ``session`` under ``ss_unique_id``."""
    found = session.execute(
        select(RegistryObjectRow.entry_uuid, RegistryObjectRow.patient_id).where(
            RegistryObjectRow.unique_id == ss_unique_id, RegistryObjectRow.object_type == "SubmissionSet"
        )
    ).first()
    if found is None:  # nothing was stored (an empty ITI-57 has no SubmissionSet row either)
        return
    entry_uuid, patient_id = found
    session.add(
        RegistryRetentionRow(
            submission_set_uuid=entry_uuid,
            submission_set_unique_id=ss_unique_id,
            patient_id=patient_id,
            submitted_by=submitted_by,
            retention_days=days,
            registered_at=registered_at,
            expires_at=expires_at(registered_at, days),
        )
    )
    session.flush()
