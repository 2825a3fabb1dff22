"""When a submission is due for purging, as the console shows it.

The registry records each submission's expiry when it registers it (``registry_retention``, see
docs/retention.md); ``SubmissionSummary.expires_at`` carries it. Submissions registered before that
record existed have none: for them the console applies the same rule the registry would
(``clearinghouse.retention_policy``: the submitting participant's retention, else
CLEARINGHOUSE_RETENTION_DAYS, from the registration time). This module is the one place that decides.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from clearinghouse import participants
from clearinghouse.config import Settings
from clearinghouse.retention_policy import effective_days, expires_at
from registry.api import SubmissionSummary


def as_utc(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def purge_due(session: Session, settings: Settings, summary: SubmissionSummary) -> dt.datetime:
    if summary.expires_at is not None:
        return as_utc(summary.expires_at)
    days = effective_days(settings.retention_days, participants.retention_days_of(session, summary.submitted_by), None)
    return expires_at(as_utc(summary.registered_at), days)


def describe_left(due: dt.datetime, now: dt.datetime) -> str:
    """'in 3 days', 'in 5 hours', 'overdue by 2 days': how long until ``due``."""
    seconds = (due - now).total_seconds()
    span = abs(seconds)
    if span >= 86400:
        amount, unit = int(span // 86400), "day"
    elif span >= 3600:
        amount, unit = int(span // 3600), "hour"
    else:
        amount, unit = max(int(span // 60), 1), "minute"
    text = f"{amount} {unit}{'' if amount == 1 else 's'}"
    return f"in {text}" if seconds >= 0 else f"overdue by {text}"
