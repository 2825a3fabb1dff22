"""What the edge and PHR scenarios share: the session under test, waiting (up to the user's timeout)
for the system under test to act, and failing a step with every broken rule."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from conformance.expect import ConformanceFailure, expect
from conformance.findings import Finding
from conformance.sessions import Recorded, SessionView, get_session, transactions

POLL_SECONDS = 0.2


@dataclass
class Observed:
    db: Any
    session: SessionView
    timeout: float

    def recorded(self) -> list[Recorded]:
        return transactions(self.db, self.session.id)

    def wait_for(self, done: Callable[[list[Recorded]], bool]) -> list[Recorded]:
        """Poll the recording until ``done`` holds or the timeout (counted from this call) passes; the
        recording either way, for the step to judge."""
        deadline = time.monotonic() + self.timeout
        while True:
            recorded = self.recorded()
            if done(recorded) or time.monotonic() >= deadline:
                return recorded
            time.sleep(POLL_SECONDS)


@pytest.fixture(name="observed")
def observed_fixture(conformance_db: Any, conformance_session_id: str, conformance_timeout: float) -> Observed:
    return Observed(conformance_db, get_session(conformance_db, conformance_session_id), conformance_timeout)


def count(recorded: Iterable[Recorded], transaction: str) -> int:
    return sum(1 for r in recorded if r.transaction == transaction)


def expect_role(observed: Observed, role: str) -> None:
    expect(
        observed.session.role == role,
        expected=f"a {role} conformance session",
        actual=f"session {observed.session.id} of role {observed.session.role}",
        ref="docs/conformance.md",
    )


def expect_acted(observed: Observed, wanted: dict[str, str]) -> list[Recorded]:
    """Wait until the participant has sent each transaction of ``wanted`` (name -> what it is)."""
    recorded = observed.wait_for(lambda rec: all(count(rec, t) for t in wanted))
    missing = [f"{t} ({what})" for t, what in wanted.items() if not count(recorded, t)]
    expect(
        not missing,
        expected=f"participant {observed.session.participant} to send "
        f"{', '.join(f'{t} ({w})' for t, w in wanted.items())} within {observed.timeout:g} s",
        actual=f"nothing of {', '.join(missing)}; recorded: {[r.transaction for r in recorded] or 'nothing'}",
        ref="docs/conformance.md (session test data)",
    )
    return recorded


def findings(recorded: Iterable[Recorded], transaction: str, prefixes: tuple[str, ...]) -> list[Finding]:
    return [f for r in recorded if r.transaction == transaction for f in r.findings if f.rule.startswith(prefixes)]


def expect_findings(found: list[Finding], what: str) -> None:
    """Fail with every broken rule: rule, expected, what arrived, and the TF section."""
    if not found:
        raise ConformanceFailure(f"{what} to be judged", "no transaction to judge", "docs/conformance.md")
    failed = [f for f in found if not f.passed]
    if failed:
        first = failed[0]
        more = "".join(f"\n  {f}" for f in failed[1:])
        raise ConformanceFailure(first.expected, f"{first.actual} (rule {first.rule}){more}", first.ref)
