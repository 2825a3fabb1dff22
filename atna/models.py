"""Audit Record Repository tables (Alembic branch ``atna``; migration atna_0001).

``audit_record``: one row per received message, with the raw bytes, what was read from them, the
validation findings and the hash chain (``prev_hash``, ``hash``). ``audit_index``: the multi-valued
search keys (event types, entities, patients, agents, addresses). ``audit_chain``: the single row
holding the chain's head, locked by each writer so that concurrent writers (server, CLI) chain in
one order. ``audit_spool_checkpoint``: how far each spool has been drained, committed with the rows.
Times are fixed-width UTC strings (``atna.record.iso``) so string order is time order everywhere.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from atna.record import W_ADDRESS, W_CODE, W_SOURCE, W_SUBJECT, W_SYSTEM, W_VALUE
from clearinghouse.db import Base


class AuditRecord(Base):
    __tablename__ = "audit_record"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    received_at: Mapped[str] = mapped_column(String(32), nullable=False)
    transport: Mapped[str] = mapped_column(String(8), nullable=False)
    peer_address: Mapped[str] = mapped_column(String(W_ADDRESS), nullable=False)
    peer_subject: Mapped[str] = mapped_column(String(W_SUBJECT), nullable=False)
    declared_length: Mapped[int] = mapped_column(BigInteger, nullable=False)
    syslog_pri: Mapped[int | None] = mapped_column(Integer)
    syslog_timestamp: Mapped[str] = mapped_column(String(64), nullable=False)
    syslog_hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    syslog_app_name: Mapped[str] = mapped_column(String(48), nullable=False)
    syslog_procid: Mapped[str] = mapped_column(String(128), nullable=False)
    syslog_msgid: Mapped[str] = mapped_column(String(32), nullable=False)
    msg_offset: Mapped[int] = mapped_column(Integer, nullable=False)
    form: Mapped[str] = mapped_column(String(8), nullable=False)
    valid: Mapped[bool] = mapped_column(Boolean, nullable=False)
    findings: Mapped[str] = mapped_column(Text, nullable=False)
    event_id: Mapped[str] = mapped_column(String(W_CODE), nullable=False)
    event_id_system: Mapped[str] = mapped_column(String(W_SYSTEM), nullable=False)
    event_action: Mapped[str] = mapped_column(String(1), nullable=False)
    event_outcome: Mapped[int | None] = mapped_column(Integer)
    # When the event happened (EventDateTime), or when it was received if the message does not say.
    event_time: Mapped[str] = mapped_column(String(32), nullable=False)
    audit_source_id: Mapped[str] = mapped_column(String(W_SOURCE), nullable=False)
    audit_site_id: Mapped[str] = mapped_column(String(W_SOURCE), nullable=False)
    raw: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    raw_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)

    __table_args__ = (
        Index("ix_audit_record_event_time", "event_time"),
        Index("ix_audit_record_event_id", "event_id"),
        Index("ix_audit_record_source", "audit_source_id"),
    )


class AuditIndex(Base):
    __tablename__ = "audit_index"

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    value: Mapped[str] = mapped_column(String(W_VALUE), primary_key=True)
    record_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    system: Mapped[str] = mapped_column(String(W_SYSTEM), primary_key=True)

    __table_args__ = ({"sqlite_with_rowid": False},)


class AuditChain(Base):
    __tablename__ = "audit_chain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditSpoolCheckpoint(Base):
    __tablename__ = "audit_spool_checkpoint"

    spool_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    segment: Mapped[int] = mapped_column(BigInteger, nullable=False)
    offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
