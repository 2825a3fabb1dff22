"""How a conformance step fails: what was expected, what arrived, and the Technical Framework section."""

from __future__ import annotations

from typing import Any


class ConformanceFailure(AssertionError):
    def __init__(self, expected: str, actual: Any, ref: str) -> None:
        self.expected, self.actual, self.ref = expected, actual, ref
        super().__init__(f"expected {expected}; got {actual} [{ref}]")


def expect(ok: bool, *, expected: str, actual: Any, ref: str) -> None:
    if not ok:
        raise ConformanceFailure(expected, actual, ref)
