"""How long a submission is kept: the retention rule shared by the registry (which purges metadata)
and the retention coordinator. Pure functions, no database.

A submission is kept ``days`` from its registration, where ``days`` is, in order of precedence:
the SubmissionSet's ``urn:isn:clearinghouse:retention-days`` slot (extra metadata, ITI TF-3
4.2.3.1.5) when the source sends one; else the submitting participant's retention
(``participants retention NAME --retention-days N``); else ``CLEARINGHOUSE_RETENTION_DAYS``
(30). The slot may only shorten what the participant (or the default) allows: the operator's
setting is the ceiling agreed with the site, a submission cannot extend it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

RETENTION_SLOT = "urn:isn:clearinghouse:retention-days"
# Ten years: far beyond any sharing purpose; keeps the arithmetic inside datetime's range.
MAX_RETENTION_DAYS = 3650


class RetentionRuleError(ValueError):
    """A requested retention that breaks the rule; the message says which and why."""


def check_days(days: int) -> int:
    """A retention in days as an operator sets it: 1 to MAX_RETENTION_DAYS."""
    if not 1 <= days <= MAX_RETENTION_DAYS:
        raise RetentionRuleError(f"retention must be 1 to {MAX_RETENTION_DAYS} days, not {days}")
    return days


def requested_days(values: Sequence[str]) -> int | None:
    """The retention a SubmissionSet asks for through its slot values, or None without the slot.
    Exactly one value, a positive decimal integer."""
    if not values:
        return None
    if len(values) != 1:
        raise RetentionRuleError(f"slot {RETENTION_SLOT} must have exactly one value, not {len(values)}")
    raw = values[0].strip()
    if not raw.isascii() or not raw.isdigit():
        raise RetentionRuleError(f"slot {RETENTION_SLOT} value {values[0]!r} is not a whole number of days")
    return int(raw)


def effective_days(default_days: int, participant_days: int | None, requested: int | None) -> int:
    """The retention of one submission. ``requested`` (the slot) may shorten, never lengthen, the
    participant's retention (or the default when the participant has none)."""
    ceiling = participant_days if participant_days is not None else default_days
    if requested is None:
        return ceiling
    if requested < 1:
        raise RetentionRuleError(f"slot {RETENTION_SLOT}: a submission is kept at least 1 day, not {requested}")
    if requested > ceiling:
        raise RetentionRuleError(
            f"slot {RETENTION_SLOT} asks for {requested} days, more than the {ceiling} days this participant's "
            "submissions are kept; a submission may only shorten its retention"
        )
    return requested


def expires_at(registered_at: datetime, days: int) -> datetime:
    """When a submission registered at ``registered_at`` and kept ``days`` days is due for purging."""
    return registered_at + timedelta(days=days)
