"""One verdict of a validator: a rule, whether the participant kept it, what was expected, what arrived,
and the Technical Framework section the rule rests on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    rule: str  # stable id, e.g. ITI8-MSH-9.3
    passed: bool
    expected: str
    actual: str
    ref: str  # e.g. ITI TF-2a 3.8.4.1.2

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"{self.rule} {verdict}: expected {self.expected}; got {self.actual} [{self.ref}]"


def check(rule: str, ok: bool, *, expected: str, actual: object, ref: str) -> Finding:
    return Finding(rule, bool(ok), expected, str(actual), ref)
