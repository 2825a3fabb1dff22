"""Conformance sessions, the Python API (used by ``clearinghouse conformance session``, the scenarios,
and the web console).

A session puts one participant (by its registered certificate) under test in one role for a while:

- ``open_session(db, settings, role="edge"|"phr", participant=NAME, timeout=S, preload=...)`` makes the
  test data (test patients with access code, date of birth, password and their RSNA-IDs) and starts
  recording what that participant sends (``conformance.recorder``). A PHR session preloads a study for
  its first test patient through ``preload`` (the CLI submits it over the real ITI-41 path as an
  internal edge) and keeps the uniqueIds of its documents.
- ``list_sessions``, ``get_session``, ``close_session``: sessions end when closed or when their timeout
  passes; what they recorded stays readable.
- ``transactions(db, session_id, since_id=0)``: what the participant sent, oldest first, each with the
  findings of the validators (``conformance.validators``) that judge that transaction alone.
- ``render_test_data(view)``: the sheet to give the system under test. For edge sessions it leaves the
  RSNA-IDs out: computing them is part of what is tested.

``db`` is a SQLAlchemy sessionmaker on the clearinghouse database. Errors are ``SessionError``
(a ValueError) with a message meant for the user.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse import hl7
from clearinghouse.config import Settings
from clearinghouse.db import transaction
from clearinghouse.participants import Participant
from clearinghouse.rsna_id import compute_rsna_id, patient_cx
from conformance.edge import new_access_code
from conformance.findings import Finding
from conformance.models import ConformanceSession, ConformanceTransaction
from conformance.validators import audit, feed, query, rsna, submission

ROLES = {"edge": "source", "phr": "consumer"}  # session role -> participant role it needs
DEFAULT_TIMEOUT_S = 3600
TEST_PATIENTS = 2


class SessionError(ValueError):
    """A session operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class TestPatient:
    access_code: str
    dob: str  # YYYYMMDD
    password: str | None
    rsna_id: str
    patient_id: str  # CX in the affinity domain: RSNA-ID^^^&OID&ISO


@dataclass(frozen=True)
class TestData:
    affinity_domain_oid: str
    repository_unique_id: str
    patients: list[TestPatient]
    study: list[str] = field(default_factory=list)  # PHR sessions: uniqueIds of the preloaded documents

    @property
    def patient_ids(self) -> set[str]:
        return {p.patient_id for p in self.patients}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TestData:
        raw = json.loads(text)
        raw["patients"] = [TestPatient(**p) for p in raw["patients"]]
        return cls(**raw)


@dataclass(frozen=True)
class SessionView:
    id: str
    role: str
    participant: str
    created_at: dt.datetime
    expires_at: dt.datetime
    closed_at: dt.datetime | None
    test_data: TestData

    def is_open(self, now: dt.datetime | None = None) -> bool:
        return self.closed_at is None and _aware(self.expires_at) > (now or dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class Recorded:
    id: int
    transaction: str  # ITI-8, ITI-41, ITI-18, ITI-43, ITI-20, ...
    received_at: dt.datetime
    facts: dict[str, Any]
    payload: str
    findings: list[Finding]

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.findings)


# Submits a study for a test patient as an internal edge; returns the uniqueIds of its documents.
Preloader = Callable[[TestPatient], list[str]]


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)  # SQLite returns naive UTC


def _view(row: ConformanceSession) -> SessionView:
    return SessionView(
        row.id,
        row.role,
        row.participant,
        _aware(row.created_at),
        _aware(row.expires_at),
        _aware(row.closed_at) if row.closed_at else None,
        TestData.from_json(row.test_data),
    )


def new_test_patient(settings: Settings, rng: secrets.SystemRandom | None = None) -> TestPatient:
    rng = rng or secrets.SystemRandom()
    day = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(0, 365 * 60))
    code, dob, password = new_access_code(), day.strftime("%Y%m%d"), secrets.token_urlsafe(8)
    rsna_id = compute_rsna_id(code, dob, password, algorithm=settings.rsna_id_algorithm)
    return TestPatient(code, dob, password, rsna_id, patient_cx(rsna_id, settings.affinity_domain_oid))


def open_session(
    db: sessionmaker[Session],
    settings: Settings,
    *,
    role: str,
    participant: str,
    timeout: float = DEFAULT_TIMEOUT_S,
    preload: Preloader | None = None,
    patients: int = TEST_PATIENTS,
) -> SessionView:
    if role not in ROLES:
        raise SessionError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if timeout <= 0:
        raise SessionError("the timeout must be a positive number of seconds")
    if role == "phr" and preload is None:
        raise SessionError("a PHR session needs a study to preload")
    now = dt.datetime.now(dt.UTC)
    with transaction(db) as session:
        p = session.scalar(select(Participant).where(Participant.name == participant))
        if p is None or p.revoked_at is not None:
            raise SessionError(f"no active participant named {participant!r}")
        if ROLES[role] not in p.role_set:
            raise SessionError(f"participant {participant!r} lacks the role {ROLES[role]!r} a {role} session tests")
        for other in session.scalars(
            select(ConformanceSession).where(
                ConformanceSession.participant == participant, ConformanceSession.closed_at.is_(None)
            )
        ):
            if _view(other).is_open(now):
                raise SessionError(f"participant {participant!r} already has the open session {other.id}")
    test = [new_test_patient(settings) for _ in range(max(1, patients))]
    study = preload(test[0]) if preload is not None else []
    data = TestData(settings.affinity_domain_oid, settings.repository_unique_id, test, study)
    row = ConformanceSession(
        id=secrets.token_hex(6),
        role=role,
        participant=participant,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=timeout),
        closed_at=None,
        test_data=data.to_json(),
    )
    with transaction(db) as session:
        session.add(row)
    return _view(row)


def list_sessions(db: sessionmaker[Session], *, open_only: bool = False) -> list[SessionView]:
    with db() as session:
        views = [_view(r) for r in session.scalars(select(ConformanceSession).order_by(ConformanceSession.created_at))]
    return [v for v in views if v.is_open()] if open_only else views


def get_session(db: sessionmaker[Session], session_id: str) -> SessionView:
    with db() as session:
        row = session.get(ConformanceSession, session_id)
        if row is None:
            raise SessionError(f"no conformance session {session_id!r}")
        return _view(row)


def close_session(db: sessionmaker[Session], session_id: str) -> SessionView:
    with transaction(db) as session:
        row = session.get(ConformanceSession, session_id)
        if row is None:
            raise SessionError(f"no conformance session {session_id!r}")
        if row.closed_at is None:
            row.closed_at = dt.datetime.now(dt.UTC)
        return _view(row)


def transactions(db: sessionmaker[Session], session_id: str, since_id: int = 0) -> list[Recorded]:
    view = get_session(db, session_id)
    with db() as session:
        rows = session.scalars(
            select(ConformanceTransaction)
            .where(ConformanceTransaction.session_id == session_id, ConformanceTransaction.id > since_id)
            .order_by(ConformanceTransaction.id)
        ).all()
    out = []
    for r in rows:
        facts = json.loads(r.facts)
        out.append(
            Recorded(
                r.id,
                r.transaction,
                _aware(r.received_at),
                facts,
                r.payload,
                findings_of(view, r.transaction, facts, r.payload),
            )
        )
    return out


def findings_of(view: SessionView, transaction_name: str, facts: dict[str, Any], payload: str) -> list[Finding]:
    """The findings on one transaction alone (rules across transactions are in ``conformance.judge``)."""
    data = view.test_data
    oid = data.affinity_domain_oid
    if transaction_name == "ITI-8":
        message = payload.encode("latin-1")
        found = feed.check_feed(message, oid)
        ids = _feed_ids(message, oid)
        return found + rsna.check_patients([("ITI-8 PID-3", i) for i in ids], data.patient_ids)
    if transaction_name == "ITI-41":
        return (
            submission.check_metadata(payload, facts, oid, data.repository_unique_id)
            + submission.check_content(payload, facts)
            + submission.check_mtom(payload, facts)
            + rsna.check_patients(
                [(f"ITI-41 {label} patientId", pid) for label, pid in submission.patient_ids(payload)], data.patient_ids
            )
        )
    if transaction_name == "ITI-18":
        found = query.check_query(facts)
        patient = query.check_patient(facts, data.patient_ids)
        return found + ([patient] if patient is not None else [])
    if transaction_name == "ITI-20":
        return audit.check_readable(audit.read_audit(payload))
    return []


def _feed_ids(message: bytes, oid: str) -> list[str]:
    try:
        return feed.affinity_ids(hl7.parse_message(message), oid)
    except hl7.MalformedMessage:
        return []


def render_test_data(view: SessionView) -> str:
    """The test data sheet for the system under test (edge sessions: without the RSNA-IDs)."""
    data = view.test_data
    lines = [
        f"Conformance session {view.id}: role {view.role}, participant {view.participant}",
        f"  recording until {view.expires_at:%Y-%m-%d %H:%M:%S}Z",
        f"  affinity domain (assigning authority of RSNA-IDs): {data.affinity_domain_oid}",
        "",
        "Test patients:",
    ]
    for n, p in enumerate(data.patients, 1):
        lines.append(f"  {n}. access code {p.access_code}   date of birth {p.dob}   password {p.password or '(none)'}")
        if view.role == "phr":
            lines.append(f"     RSNA-ID {p.rsna_id}")
    if view.role == "phr":
        lines += [
            "",
            f"A study of {len(data.study)} document(s) is waiting for test patient 1: find it with the access code",
            "and date of birth above, retrieve every document and audit the import.",
        ]
    else:
        lines += [
            "",
            "Feed one test patient (ITI-8), submit a study for them (ITI-41) and audit the export (ITI-20).",
        ]
    return "\n".join(lines)
