"""RSNA-ID consistency: every patient identifier a participant sends must be the RSNA-ID (in the
affinity domain's CX form) of one of its session's test patients, computed from the access code,
date of birth and password it was given (RSNA Image Share; docs/rsna-id.md)."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from conformance.findings import Finding, check

REF = "RSNA Image Share RSNA-ID (docs/rsna-id.md); ITI TF-2a 3.8.4.1.2.3; ITI TF-3 4.2.3.2.16"


def check_patients(where: Iterable[tuple[str, str]], expected: Collection[str]) -> list[Finding]:
    """``where``: (what carried it, patient id) pairs; ``expected``: the test patients' CX ids."""
    wanted = " or ".join(sorted(expected)) or "(no test patient)"
    return [
        check(
            "RSNA-ID",
            pid in expected,
            expected=f"{label}: the RSNA-ID of a test patient ({wanted})",
            actual=pid or "(none)",
            ref=REF,
        )
        for label, pid in where
    ]
