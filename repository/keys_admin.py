"""Key rotation and status: data keys are re-wrapped in the repository database, documents are not touched.

Rotation walks the sealed documents whose DEK is not wrapped under the current KEK, in batches of
one transaction each (rows locked against a concurrent rotation on PostgreSQL), unwraps each DEK
with the KEK its row names and wraps it under the current one. A DEK that cannot be unwrapped (its
KEK is not configured, or the row does not unwrap) is left as it is and reported; rotation never
makes a readable document unreadable, so it can be re-run until it reports nothing left.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.db import transaction
from repository import crypto
from repository.keys import DekUnwrapFailed, KeyRing, UnknownKek
from repository.models import StoredDocument

BATCH = 500


@dataclass
class RotationReport:
    current: str
    rewrapped: int = 0
    under_current: int = 0  # sealed documents whose DEK is wrapped under the current KEK afterwards
    plaintext: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (document uniqueId, reason)


@dataclass
class KeyStatus:
    current: str
    source: str
    configured: list[str]
    by_kek: dict[str, int]  # sealed documents per KEK id
    plaintext: int

    @property
    def missing(self) -> list[str]:
        """KEKs that documents need but configuration lacks: those documents cannot be served."""
        return sorted(k for k in self.by_kek if k not in self.configured)

    @property
    def removable(self) -> list[str]:
        """Configured KEKs no document needs any more."""
        return sorted(k for k in self.configured if k != self.current and not self.by_kek.get(k))


def status(sessions: sessionmaker[Session], ring: KeyRing) -> KeyStatus:
    with sessions() as session:
        rows = session.execute(
            select(StoredDocument.encryption, StoredDocument.kek_id, func.count()).group_by(
                StoredDocument.encryption, StoredDocument.kek_id
            )
        ).all()
    by_kek: Counter[str] = Counter()
    plaintext = 0
    for encryption, kek_id, count in rows:
        if encryption == crypto.PLAINTEXT:
            plaintext += count
        else:
            by_kek[kek_id or "?"] += count
    return KeyStatus(ring.current, ring.source, sorted(ring.keys), dict(by_kek), plaintext)


def rotate(sessions: sessionmaker[Session], ring: KeyRing, batch: int = BATCH) -> RotationReport:
    report = RotationReport(ring.current)
    after = ""
    while True:
        with transaction(sessions) as session:
            rows = session.scalars(
                select(StoredDocument)
                .where(
                    StoredDocument.encryption != crypto.PLAINTEXT,
                    StoredDocument.kek_id != ring.current,
                    StoredDocument.unique_id > after,
                )
                .order_by(StoredDocument.unique_id)
                .limit(batch)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                after = row.unique_id
                try:
                    dek = ring.unwrap(row.kek_id or "", row.wrapped_dek or b"")
                except (UnknownKek, DekUnwrapFailed) as exc:
                    report.failed.append((row.unique_id, str(exc)))
                    continue
                row.kek_id, row.wrapped_dek = ring.wrap(dek)
                report.rewrapped += 1
        if len(rows) < batch:
            break
    with sessions() as session:
        for encryption, kek_id, count in session.execute(
            select(StoredDocument.encryption, StoredDocument.kek_id, func.count()).group_by(
                StoredDocument.encryption, StoredDocument.kek_id
            )
        ):
            if encryption == crypto.PLAINTEXT:
                report.plaintext += count
            elif kek_id == ring.current:
                report.under_current += count
    return report
