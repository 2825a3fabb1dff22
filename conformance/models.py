"""Conformance tables (Alembic branch ``conformance``; migration conformance_0001).

``conformance_session``: one participant put under test in one role (edge or PHR), with the test data
it was given (JSON) and until when it records. ``conformance_transaction``: what that participant sent
while its session was open, one row per transaction (ITI-8, ITI-41, ITI-18, ITI-43, ITI-20): the facts
the validators need (JSON) and the message itself (the SOAP envelope without inline document content,
the HL7 message, the syslog message).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from clearinghouse.db import Base


class ConformanceSession(Base):
    __tablename__ = "conformance_session"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    role: Mapped[str] = mapped_column(String(8), nullable=False)
    participant: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    test_data: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (Index("ix_conformance_session_participant", "participant"),)


class ConformanceTransaction(Base):
    __tablename__ = "conformance_transaction"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        String(16), ForeignKey("conformance_session.id", ondelete="CASCADE"), nullable=False
    )
    transaction: Mapped[str] = mapped_column(String(16), nullable=False)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    facts: Mapped[str] = mapped_column(Text, nullable=False)
    payload: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (Index("ix_conformance_transaction_session", "session_id", "id"),)
