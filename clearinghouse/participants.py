"""Participants: the sites, PHRs and people whose certificates the clearinghouse accepts, with their roles.

A certificate is accepted only if it is registered here and not revoked; the roles decide which
transactions it may use (source: ITI-41/42 and the feed; consumer: ITI-18/43; auditor; admin).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import DateTime, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from clearinghouse.db import Base
from clearinghouse.peer import ROLES
from clearinghouse.pki import fingerprint, subject_of


class ParticipantError(ValueError):
    """A participant operation that cannot be done; the message says why."""


class Participant(Base):
    __tablename__ = "participant"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    roles: Mapped[str] = mapped_column(String(128), nullable=False)
    origin: Mapped[str] = mapped_column(String(16), nullable=False)  # issued | imported
    cert_pem: Mapped[str] = mapped_column(Text, nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    subject: Mapped[str] = mapped_column(String(1024), nullable=False)
    issuer: Mapped[str] = mapped_column(String(1024), nullable=False)
    not_after: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # How many days this participant's submissions are kept (None: CLEARINGHOUSE_RETENTION_DAYS);
    # see clearinghouse.retention_policy. Migration core_0002.
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)

    @property
    def role_set(self) -> frozenset[str]:
        return frozenset(r for r in self.roles.split(",") if r)


@dataclass(frozen=True)
class ParticipantView:
    name: str
    roles: frozenset[str]
    origin: str
    subject: str
    fingerprint: str
    not_after: dt.datetime
    revoked: bool
    retention_days: int | None = None


def _view(p: Participant) -> ParticipantView:
    return ParticipantView(
        p.name, p.role_set, p.origin, p.subject, p.fingerprint, p.not_after, p.revoked_at is not None, p.retention_days
    )


def check_roles(roles: list[str]) -> list[str]:
    unknown = sorted(set(roles) - ROLES)
    if unknown or not roles:
        raise ParticipantError(f"unknown or missing role(s) {unknown}; roles are {sorted(ROLES)}")
    return sorted(set(roles))


def register(session: Session, name: str, roles: list[str], cert: x509.Certificate, origin: str) -> ParticipantView:
    if not name or len(name) > 128 or any(c in name for c in "/\\\0"):
        raise ParticipantError(f"invalid participant name {name!r}")
    roles = check_roles(roles)
    if session.scalar(select(Participant).where(Participant.name == name)):
        raise ParticipantError(f"participant {name!r} already exists")
    fp = fingerprint(cert)
    if session.scalar(select(Participant).where(Participant.fingerprint == fp)):
        raise ParticipantError(f"this certificate (SHA-256 {fp}) is already registered")
    p = Participant(
        name=name,
        roles=",".join(roles),
        origin=origin,
        cert_pem=cert.public_bytes(Encoding.PEM).decode(),
        fingerprint=fp,
        subject=subject_of(cert),
        issuer=cert.issuer.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
        created_at=dt.datetime.now(dt.UTC),
    )
    session.add(p)
    session.flush()
    return _view(p)


def revoke(session: Session, name: str) -> ParticipantView:
    p = session.scalar(select(Participant).where(Participant.name == name))
    if p is None:
        raise ParticipantError(f"no participant named {name!r}")
    if p.revoked_at is None:
        p.revoked_at = dt.datetime.now(dt.UTC)
    return _view(p)


def list_all(session: Session) -> list[ParticipantView]:
    return [_view(p) for p in session.scalars(select(Participant).order_by(Participant.name))]


def find_active_by_fingerprint(session: Session, fp: str) -> ParticipantView | None:
    p = session.scalar(select(Participant).where(Participant.fingerprint == fp, Participant.revoked_at.is_(None)))
    return _view(p) if p else None


def find_by_fingerprint(session: Session, fp: str) -> ParticipantView | None:
    p = session.scalar(select(Participant).where(Participant.fingerprint == fp))
    return _view(p) if p else None


def set_retention(session: Session, name: str, days: int | None) -> ParticipantView:
    """Keep ``name``'s future submissions ``days`` days (None: the configured default)."""
    from clearinghouse.retention_policy import RetentionRuleError, check_days

    p = session.scalar(select(Participant).where(Participant.name == name))
    if p is None:
        raise ParticipantError(f"no participant named {name!r}")
    try:
        p.retention_days = None if days is None else check_days(days)
    except RetentionRuleError as exc:
        raise ParticipantError(str(exc)) from exc
    return _view(p)


def retention_days_of(session: Session, name: str | None) -> int | None:
    """The retention set for participant ``name``, or None (none set, or no such participant)."""
    if not name:
        return None
    return session.scalar(select(Participant.retention_days).where(Participant.name == name))
