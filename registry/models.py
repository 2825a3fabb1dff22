"""Registry tables (Alembic branch ``registry``; migrations registry_0001 and registry_0003).

One row per registry object in ``registry_objects`` with the verbatim XML returned by LeafClass
queries and the columns the stored queries filter on; multi-valued query attributes in
``registry_values``; association ends in ``registry_associations``. Times are normalised DTM
strings padded to 14 digits (see ``registry.store.dtm_key``) so that string order is time order
on every database; codes are stored as ``code^^codingScheme``, the spelling of query parameters.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from clearinghouse.db import Base

UUID_LEN = 64  # "urn:uuid:" + 36; room for sources that send longer URNs
UNIQUE_ID_LEN = 128  # OID (64) ^ extension (16), with margin
CODE_LEN = 512
VALUE_LEN = 1024
PARTICIPANT_LEN = 128


def _now() -> datetime:
    return datetime.now(UTC)


class RegistryObjectRow(Base):
    """A DocumentEntry, SubmissionSet, Folder, Association or top-level Classification."""

    __tablename__ = "registry_objects"

    entry_uuid: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    # DocumentEntry | SubmissionSet | Folder | Association | Classification
    object_type: Mapped[str] = mapped_column(String(16), nullable=False)
    # DocumentEntry objectType: stable or on-demand ($XDSDocumentEntryType).
    entry_type: Mapped[str | None] = mapped_column(String(UUID_LEN))
    unique_id: Mapped[str | None] = mapped_column(String(UNIQUE_ID_LEN))
    # The uniqueId again, for the first object that registers it; NULL for identical resubmissions
    # of a DocumentEntry. The unique index on it makes concurrent registrations of one uniqueId
    # collide in the database instead of both passing the read-time duplicate check.
    unique_id_claim: Mapped[str | None] = mapped_column(String(UNIQUE_ID_LEN))
    patient_id: Mapped[str | None] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(64), nullable=False)
    # The SubmissionSet the object arrived in (the SubmissionSet itself for its own row).
    submission_set_uuid: Mapped[str | None] = mapped_column(String(UUID_LEN))
    # For a top-level Classification: the object it classifies (returned along with it).
    owner_uuid: Mapped[str | None] = mapped_column(String(UUID_LEN))
    mime_type: Mapped[str | None] = mapped_column(String(128))
    creation_time: Mapped[str | None] = mapped_column(String(14))
    service_start_time: Mapped[str | None] = mapped_column(String(14))
    service_stop_time: Mapped[str | None] = mapped_column(String(14))
    class_code: Mapped[str | None] = mapped_column(String(CODE_LEN))
    type_code: Mapped[str | None] = mapped_column(String(CODE_LEN))
    format_code: Mapped[str | None] = mapped_column(String(CODE_LEN))
    practice_setting_code: Mapped[str | None] = mapped_column(String(CODE_LEN))
    healthcare_facility_type_code: Mapped[str | None] = mapped_column(String(CODE_LEN))
    repository_unique_id: Mapped[str | None] = mapped_column(String(UNIQUE_ID_LEN))
    hash: Mapped[str | None] = mapped_column(String(40))
    size: Mapped[int | None] = mapped_column(BigInteger)
    submission_time: Mapped[str | None] = mapped_column(String(14))
    source_id: Mapped[str | None] = mapped_column(String(UNIQUE_ID_LEN))
    content_type_code: Mapped[str | None] = mapped_column(String(CODE_LEN))
    last_update_time: Mapped[str | None] = mapped_column(String(14))
    # Logical id shared by every version of a DocumentEntry or Folder (ITI-57); the entry UUID of
    # the first version. NULL for rows written before registry_0003: treat as entry_uuid.
    lid: Mapped[str | None] = mapped_column(String(UUID_LEN))
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    # The participant that submitted the object: only it may update (ITI-57) or remove (ITI-62) it.
    submitted_by: Mapped[str | None] = mapped_column(String(PARTICIPANT_LEN))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=_now)
    xml: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (
        # FindDocuments / FindSubmissionSets / GetAll: patient + kind + status is one index range.
        Index("ix_registry_objects_patient", "patient_id", "object_type", "status"),
        Index("ix_registry_objects_unique_id", "unique_id"),
        Index("uq_registry_objects_unique_id_claim", "unique_id_claim", unique=True),
        Index("ix_registry_objects_submission_set", "submission_set_uuid"),
        Index("ix_registry_objects_owner", "owner_uuid"),
        Index("ix_registry_objects_created_at", "created_at"),
        # One row per version of a logical object: two concurrent ITI-57 updates of the same version
        # collide here instead of both creating version n+1.
        Index("uq_registry_objects_lid_version", "lid", "version", unique=True),
    )


class RegistryValueRow(Base):
    """One value of a multi-valued query attribute: eventCode, confidentialityCode, authorPerson,
    referenceId (DocumentEntry), authorPerson (SubmissionSet), folderCode (Folder)."""

    __tablename__ = "registry_values"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry_uuid: Mapped[str] = mapped_column(
        String(UUID_LEN), ForeignKey("registry_objects.entry_uuid", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    value: Mapped[str] = mapped_column(String(VALUE_LEN), nullable=False)

    __table_args__ = (
        Index("ix_registry_values_kind_value", "kind", "value"),
        Index("ix_registry_values_entry_kind", "entry_uuid", "kind"),
    )


class RegistryAssociationRow(Base):
    """The ends of an Association (its XML and status live in registry_objects)."""

    __tablename__ = "registry_associations"

    entry_uuid: Mapped[str] = mapped_column(
        String(UUID_LEN), ForeignKey("registry_objects.entry_uuid", ondelete="CASCADE"), primary_key=True
    )
    source_uuid: Mapped[str] = mapped_column(String(UUID_LEN), nullable=False)
    target_uuid: Mapped[str] = mapped_column(String(UUID_LEN), nullable=False)
    assoc_type: Mapped[str] = mapped_column(String(128), nullable=False)

    __table_args__ = (
        Index("ix_registry_associations_source", "source_uuid", "assoc_type"),
        Index("ix_registry_associations_target", "target_uuid", "assoc_type"),
    )
