"""The cross-reference itself: which identifiers belong to one person, as sources link them (one
PID-3 list) and merge them (A40), on a SQLAlchemy connection inside the caller's transaction.

Every operation reads and checks first and writes last, and raises only before its first write, so a
refused message leaves nothing behind even when it shares a transaction with others (see writer.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, delete, insert, or_, select, tuple_, update

from clearinghouse.errors import PixInvalidField, PixUnknownPatientId
from pix_manager.identifiers import Identifier
from pix_manager.models import ACTIVE, MERGED, PixIdentifier, PixPatient

I = PixIdentifier.__table__  # noqa: E741 - the identifier table, used in every statement below
P = PixPatient.__table__

# Statements built once: on the feed's hot path, building them per message cost more than running them.
_SELECT_ROWS = select(I.c.id, I.c.domain_id, I.c.value, I.c.patient_id, I.c.status, I.c.replaced_by).where(
    tuple_(I.c.domain_id, I.c.value).in_(bindparam("pairs", expanding=True))
)
_SELECT_ONE = select(I.c.id, I.c.domain_id, I.c.value, I.c.patient_id, I.c.status, I.c.replaced_by).where(
    I.c.domain_id == bindparam("domain_id"), I.c.value == bindparam("value")
)
_SELECT_PERSONS = select(I.c.patient_id, I.c.domain_id, I.c.value).where(
    I.c.patient_id.in_(bindparam("patients", expanding=True)), I.c.status == ACTIVE
)
_INSERT_PATIENT = insert(P).values(status=ACTIVE, created_at=bindparam("now"), updated_at=bindparam("now"))
_INSERT_PATIENTS = (
    insert(P)
    .values(status=ACTIVE, created_at=bindparam("now"), updated_at=bindparam("now"))
    .returning(P.c.id, sort_by_parameter_order=True)
)
_INSERT_IDENTIFIER = insert(I)
_TOUCH_PATIENT = update(P).where(P.c.id == bindparam("patient")).values(updated_at=bindparam("now"))


@dataclass
class Change:
    """What an operation did to the person it touched: the identifier sets of the persons involved
    before (only when asked for: notifications need them) and of the resulting person after."""

    patient_id: int
    changed: bool
    added: list[Identifier] = field(default_factory=list)
    before: list[frozenset[Identifier]] = field(default_factory=list)
    after: frozenset[Identifier] = frozenset()


@dataclass(frozen=True)
class _Row:
    id: int
    ident: Identifier
    patient_id: int
    status: str
    replaced_by: int | None


def _rows(conn: Connection, idents: Sequence[Identifier]) -> dict[Identifier, _Row]:
    if not idents:
        return {}
    if len(idents) == 1:
        result = conn.execute(_SELECT_ONE, {"domain_id": idents[0].domain_id, "value": idents[0].value})
    else:
        result = conn.execute(_SELECT_ROWS, {"pairs": [(i.domain_id, i.value) for i in idents]})
    out = {}
    for r in result:
        ident = Identifier(r.domain_id, r.value)
        out[ident] = _Row(r.id, ident, r.patient_id, r.status, r.replaced_by)
    return out


def existing(conn: Connection, idents: Sequence[Identifier]) -> set[Identifier]:
    """Which of ``idents`` are known (active or retired)."""
    return set(_rows(conn, list(dict.fromkeys(idents))))


def create_patients(conn: Connection, patients: Sequence[Sequence[Identifier]]) -> list[int]:
    """New persons, one per list of identifiers none of which is known yet: two set-based inserts
    (the common feed, a patient seen for the first time, costs no statement of its own)."""
    now = datetime.now(UTC)
    result = conn.execute(_INSERT_PATIENTS, [{"now": now}] * len(patients))
    ids = [int(i) for i in result.scalars()]
    rows = [
        {
            "domain_id": i.domain_id,
            "value": i.value,
            "patient_id": pid,
            "status": ACTIVE,
            "created_at": now,
            "updated_at": now,
        }
        for pid, idents in zip(ids, patients, strict=True)
        for i in idents
    ]
    conn.execute(_INSERT_IDENTIFIER, rows)
    return ids


def person_identifiers(conn: Connection, patient_ids: Iterable[int]) -> dict[int, frozenset[Identifier]]:
    """The active identifiers of each person."""
    ids = list(patient_ids)
    found: dict[int, set[Identifier]] = {p: set() for p in ids}
    if ids:
        for r in conn.execute(_SELECT_PERSONS, {"patients": ids}):
            found[r.patient_id].add(Identifier(r.domain_id, r.value))
    return {p: frozenset(s) for p, s in found.items()}


def _new_patient(conn: Connection, now: datetime) -> int:
    result = conn.execute(_INSERT_PATIENT, {"now": now})
    return int(result.inserted_primary_key[0])


def _absorb(conn: Connection, into: int, others: Sequence[int], now: datetime) -> None:
    """Move every identifier (active or retired) of ``others`` to person ``into``."""
    if others:
        conn.execute(update(I).where(I.c.patient_id.in_(others)).values(patient_id=into, updated_at=now))
        conn.execute(update(P).where(P.c.id.in_(others)).values(status=MERGED, merged_into=into, updated_at=now))


def link(
    conn: Connection, idents: Sequence[Identifier], locations: dict[Identifier, str], *, want_sets: bool
) -> Change:
    """Make ``idents`` (one source's list for one patient) identifiers of one person: new ones are
    added, and persons already holding some of them become one (the oldest survives)."""
    rows = _rows(conn, idents)
    for ident in idents:
        row = rows.get(ident)
        if row is not None and row.status == MERGED:
            raise PixUnknownPatientId(
                f"identifier {ident.value!r} was merged into another (A40) and may no longer be used",
                location=locations.get(ident, ""),
            )
    patients = sorted({r.patient_id for r in rows.values()})
    before = person_identifiers(conn, patients) if want_sets else {}
    missing = [i for i in idents if i not in rows]
    now = datetime.now(UTC)
    if patients:
        target, others = patients[0], patients[1:]
        _absorb(conn, target, others, now)
    else:
        target, others = _new_patient(conn, now), []
    if missing:
        conn.execute(
            _INSERT_IDENTIFIER,
            [
                {
                    "domain_id": i.domain_id,
                    "value": i.value,
                    "patient_id": target,
                    "status": ACTIVE,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in missing
            ],
        )
    changed = bool(missing or others)
    if changed and patients:
        conn.execute(_TOUCH_PATIENT, {"patient": target, "now": now})
    after = frozenset().union(*before.values(), missing) if want_sets else frozenset()
    return Change(target, changed, missing, list(before.values()), after)


@dataclass(frozen=True)
class MergePlan:
    surviving: Identifier
    prior: Identifier
    prior_row: _Row
    surviving_row: _Row | None


def prepare_merge(
    conn: Connection, surviving: Identifier, prior: Identifier, *, surviving_location: str, prior_location: str
) -> MergePlan | None:
    """Check a merge (ITI TF-2a 3.8.4.2.3) without writing; None when it was already done.

    Refused, as the registry refuses them (3.8.4.2.4): different domains, the same identifier
    twice, an unknown prior, a prior or surviving identifier already retired by an earlier merge.
    """
    if surviving.domain_id != prior.domain_id:
        raise PixInvalidField(
            "the prior identifier (MRG-1) must have the assigning authority of the surviving one (PID-3)",
            location=prior_location,
        )
    if surviving == prior:
        raise PixInvalidField("MRG-1 (prior) and PID-3 (surviving) are the same identifier", location=prior_location)
    rows = _rows(conn, [surviving, prior])
    p, s = rows.get(prior), rows.get(surviving)
    if p is None:
        raise PixUnknownPatientId(
            f"the prior identifier {prior.value!r} (MRG-1) is not known to the PIX Manager", location=prior_location
        )
    if s is not None and s.status == MERGED:
        raise PixUnknownPatientId(
            f"the surviving identifier {surviving.value!r} (PID-3) was itself merged into another",
            location=surviving_location,
        )
    if p.status == MERGED:
        if s is not None and p.replaced_by == s.id:
            return None  # the same merge again
        raise PixUnknownPatientId(
            f"the prior identifier {prior.value!r} (MRG-1) was already merged into another", location=prior_location
        )
    return MergePlan(surviving, prior, p, s)


def apply_merge(conn: Connection, plan: MergePlan, *, want_sets: bool) -> Change:
    """Replace every reference to the prior identifier by the surviving one: the prior is retired
    (kept, pointing at the surviving one, so that it is refused from now on) and its person's other
    identifiers move to the surviving person. Identifiers earlier merged into the prior follow it."""
    p, s = plan.prior_row, plan.surviving_row
    involved = sorted({p.patient_id} | ({s.patient_id} if s is not None else set()))
    before = person_identifiers(conn, involved) if want_sets else {}
    now = datetime.now(UTC)
    added = []
    if s is None:
        target = p.patient_id
        result = conn.execute(
            insert(I).values(
                domain_id=plan.surviving.domain_id,
                value=plan.surviving.value,
                patient_id=target,
                status=ACTIVE,
                created_at=now,
                updated_at=now,
            )
        )
        surviving_row_id = int(result.inserted_primary_key[0])
        added.append(plan.surviving)
    else:
        target, surviving_row_id = s.patient_id, s.id
        if p.patient_id != target:
            _absorb(conn, target, [p.patient_id], now)
    conn.execute(
        update(I)
        .where(or_(I.c.id == p.id, I.c.replaced_by == p.id))
        .values(status=MERGED, replaced_by=surviving_row_id, patient_id=target, updated_at=now)
    )
    conn.execute(update(P).where(P.c.id == target).values(updated_at=now))
    after = person_identifiers(conn, [target])[target] if want_sets else frozenset()
    return Change(target, True, added, list(before.values()), after)


def unlink(
    conn: Connection, first: dict[Identifier, str], second: dict[Identifier, str], *, want_sets: bool
) -> list[Change]:
    """A37 Unlink (HL7 v2.5 3.3.37): the identifiers of ``second`` (with the identifiers earlier merged
    into them) leave the person they share with ``first`` for a new person; every other identifier
    stays. Both maps give each identifier's location for errors. Lists already on different persons
    are accepted and change nothing (the same unlink again)."""
    rows = _rows(conn, [*first, *second])
    for ident, location in [*first.items(), *second.items()]:
        row = rows.get(ident)
        if row is None or row.status != ACTIVE:
            raise PixUnknownPatientId(
                f"identifier {ident.value!r} is not known to the PIX Manager (or was merged into another)",
                location=location,
            )
    for ident, location in second.items():
        if ident in first:
            raise PixInvalidField(f"identifier {ident.value!r} is in both patient identifier lists", location=location)
    persons = []
    for group in (first, second):
        ids = {rows[i].patient_id for i in group}
        if len(ids) != 1:
            raise PixInvalidField(
                "the identifiers of one PID-3 belong to different patients", location=next(iter(group.values()))
            )
        persons.append(ids.pop())
    if persons[0] != persons[1]:
        return [Change(persons[0], False), Change(persons[1], False)]
    person = persons[0]
    before = person_identifiers(conn, [person])[person] if want_sets else frozenset()
    now = datetime.now(UTC)
    split = _new_patient(conn, now)
    moving = [rows[i].id for i in second]
    conn.execute(
        update(I).where(or_(I.c.id.in_(moving), I.c.replaced_by.in_(moving))).values(patient_id=split, updated_at=now)
    )
    conn.execute(_TOUCH_PATIENT, {"patient": person, "now": now})
    after = person_identifiers(conn, [person, split]) if want_sets else {}
    return [
        Change(person, True, [], [before], after.get(person, frozenset())),
        Change(split, True, [], [before], after.get(split, frozenset())),
    ]


def remove(conn: Connection, ident: Identifier, *, want_sets: bool) -> Change | None:
    """Remove Patient (ITI-104, PIXm 2:3.104.4.3.3): every reference to ``ident`` goes, the identifier
    itself and the identifiers earlier merged into it (merges point straight at the surviving one, so
    one level is all there is); its person keeps its other identifiers. None when it is not known."""
    row = _rows(conn, [ident]).get(ident)
    if row is None:
        return None
    before = person_identifiers(conn, [row.patient_id])[row.patient_id] if want_sets else frozenset()
    now = datetime.now(UTC)
    conn.execute(delete(I).where(or_(I.c.id == row.id, I.c.replaced_by == row.id)))
    conn.execute(_TOUCH_PATIENT, {"patient": row.patient_id, "now": now})
    after = person_identifiers(conn, [row.patient_id])[row.patient_id] if want_sets else frozenset()
    return Change(row.patient_id, True, [], [before], after)


def corresponding(conn: Connection, ident: Identifier, *, location: str) -> frozenset[Identifier]:
    """The identifiers cross-referenced with ``ident`` (itself excluded); an unknown or retired
    identifier is PixUnknownPatientId (ITI-9 case 3: the old identifier is not referenced again)."""
    row = _rows(conn, [ident]).get(ident)
    if row is None or row.status != ACTIVE:
        raise PixUnknownPatientId(f"identifier {ident.value!r} is not known to the PIX Manager", location=location)
    return person_identifiers(conn, [row.patient_id])[row.patient_id] - {ident}
