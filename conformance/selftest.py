"""Running the edge and PHR suites in process against a recorded session, and collecting the verdict of
each scenario: how the project's own tests prove the suite passes a correct system and fails a faulty
one for the right reason (tests/test_conformance_edge.py, _phr.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conformance.plugin import InProcessDatabase
from conformance.run import SUITES

ROOT = Path(__file__).resolve().parents[1]


@dataclass(eq=False)  # a pytest plugin object: hashable by identity
class Verdicts:
    """Scenario test name -> (outcome, failure text)."""

    results: dict[str, tuple[str, str]] = field(default_factory=dict)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = report.nodeid.rsplit("::", 1)[-1]
        if report.failed:
            self.results[name] = ("failed", report.longreprtext)
        elif report.when == "call" or report.skipped:
            self.results.setdefault(name, (report.outcome, ""))

    @property
    def failed(self) -> dict[str, str]:
        return {n: text for n, (outcome, text) in self.results.items() if outcome == "failed"}

    @property
    def passed(self) -> list[str]:
        return [n for n, (outcome, _) in self.results.items() if outcome == "passed"]


def run_suite(role: str, db: Any, session_id: str, timeout: float, out: Path) -> Verdicts:
    """The role's scenarios, in this process, judging ``session_id`` in database ``db`` (a sessionmaker)."""
    verdicts = Verdicts()
    pytest.main(
        [
            "-p",
            "conformance.plugin",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
            "--pyargs",
            SUITES[role],
            f"--conformance-session={session_id}",
            f"--conformance-timeout={timeout}",
            f"--junitxml={out / 'junit.xml'}",
            "-q",
            "--tb=short",
            "-p",
            "no:randomly",
        ],
        plugins=[InProcessDatabase(db), verdicts],
    )
    return verdicts
