"""The PIX Manager's tables: domains, cross-referenced identifiers, accepted messages (for duplicate
control), subscriptions and the notification outbox.

Only identifiers are stored, never demographics: the cross-reference is made on what sources say
(the same PID-3 list, or a merge), not on names or birth dates, so there is nothing to keep.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from clearinghouse.db import Base

MAX_ID_LENGTH = 256  # CX-1 is 15 in HL7 2.3.1 but 250 in the IHE profile; RSNA-IDs are 64
OID_LENGTH = 64  # ISO OIDs as HL7 universal ids (HD-2)
ACTIVE, MERGED = "active", "merged"
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


class PixConfigState(Base):
    """One row whose version is bumped by every configuration change, so that running servers
    reload domains and subscriptions at their next transaction instead of polling both tables."""

    __tablename__ = "pix_config_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)


class PixDomain(Base):
    """A Patient Identification Domain (assigning authority) the manager serves (ITI TF-2a 3.8.4.1.3.1)."""

    __tablename__ = "pix_domain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    oid: Mapped[str] = mapped_column(String(OID_LENGTH), nullable=False, unique=True)
    namespace: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    # The one Patient Identity Source of the domain (a participant name); NULL: any participant
    # with the source role (the affinity domain, whose RSNA-IDs every edge computes).
    source: Mapped[str | None] = mapped_column(String(128), nullable=True)
    description: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class PixPatient(Base):
    """A person: the group of identifiers cross-referenced to one another."""

    __tablename__ = "pix_patient"
    __table_args__ = (CheckConstraint("status IN ('active', 'merged')", name="ck_pix_patient_status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    merged_into: Mapped[int | None] = mapped_column(ForeignKey("pix_patient.id"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class PixIdentifier(Base):
    """One identifier in one domain, linked to a person. A merged (subsumed, A40 MRG-1) identifier
    is kept with ``replaced_by`` so that it is recognised and refused, never reused."""

    __tablename__ = "pix_identifier"
    __table_args__ = (
        UniqueConstraint("domain_id", "value", name="uq_pix_identifier_domain_value"),
        CheckConstraint("status IN ('active', 'merged')", name="ck_pix_identifier_status"),
        Index("ix_pix_identifier_patient", "patient_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("pix_domain.id"), nullable=False)
    value: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), nullable=False)
    patient_id: Mapped[int] = mapped_column(ForeignKey("pix_patient.id"), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    replaced_by: Mapped[int | None] = mapped_column(ForeignKey("pix_identifier.id"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class PixMessage(Base):
    """An accepted message and the exact answer it got, so that a resent message (same sender and
    control id) is answered again without being applied twice."""

    __tablename__ = "pix_message"
    __table_args__ = (
        UniqueConstraint("sender", "control_id", name="uq_pix_message_sender_control"),
        Index("ix_pix_message_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sender: Mapped[str] = mapped_column(String(512), nullable=False)
    control_id: Mapped[str] = mapped_column(String(256), nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)
    transaction: Mapped[str] = mapped_column(String(16), nullable=False)
    response: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class PixSubscription(Base):
    """A Patient Identifier Cross-reference Consumer that receives ITI-10 notifications."""

    __tablename__ = "pix_subscription"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    url: Mapped[str] = mapped_column(String(512), nullable=False)
    # Space-separated OIDs of the domains of interest; empty: every domain.
    domains: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # CA file that issued the consumer's server certificate; empty: the clearinghouse CA.
    ca_file: Mapped[str] = mapped_column(String(1024), nullable=False, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class PixOutbox(Base):
    """A message to deliver (ITI-10 to a subscriber, ITI-8 to the registry), written in the same
    transaction as the change it reports, delivered in order per destination, retried with
    backoff and finally kept as a dead letter."""

    __tablename__ = "pix_outbox"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="ck_pix_outbox_status"),
        Index("ix_pix_outbox_status_destination", "status", "destination", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    destination: Mapped[str] = mapped_column(String(128), nullable=False)
    transaction: Mapped[str] = mapped_column(String(16), nullable=False)
    message: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PixFhirPatient(Base):
    """A Patient resource fed by ITI-104 (PIXm): one Patient Identity Source's record of one patient,
    keyed by that source's identifier in its own domain (the ``identifier`` of the conditional update).
    Only what the cross-reference needs is kept: the identifiers, ``active`` and the replaced-by link,
    never the demographics the resource carried. A removed resource keeps its row (``deleted_at``) so
    that a read of its logical id answers 410 Gone; the same identifier fed again is a new resource."""

    __tablename__ = "pix_fhir_patient"
    __table_args__ = (
        Index(
            "uq_pix_fhir_patient_live_key",
            "domain_id",
            "value",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    logical_id: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("pix_domain.id"), nullable=False)
    value: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False)
    # JSON list of [OID, value]: the key identifier first, then the other identifiers linked with it.
    identifiers: Mapped[str] = mapped_column(Text, nullable=False)
    replaced_by_domain_id: Mapped[int | None] = mapped_column(ForeignKey("pix_domain.id"), nullable=True)
    replaced_by_value: Mapped[str | None] = mapped_column(String(MAX_ID_LENGTH), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
