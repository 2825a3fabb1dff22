"""The dashboard: transactions per hour by kind and by outcome and refused connections (from the
audit repository), storage used and documents due for purge (from the registry), as SVG charts."""

from __future__ import annotations

import datetime as dt
import shutil
from collections import defaultdict
from typing import Any

from atna import search
from console import charts
from console.app import Page, Route, format_bytes
from console.web import Response
from registry import api as registry_api

VIEWERS = ("admin", "auditor")
HOURS = 24
PURGE_DAYS = 14
MAX_KINDS = 7
# EventTypeCodes of refusals (DICOM CID 403 / 400 codes the clearinghouse emits, docs/atna.md).
REFUSALS = {"110126": "TLS handshake refused", "110132": "authorization refused"}
OUTCOME_NAMES = {0: "success", 4: "partial", 8: "failure", 12: "error"}


def hour_labels(now: dt.datetime, hours: int = HOURS) -> list[str]:
    """The last ``hours`` hours ending with the current one, as ``YYYY-MM-DDTHH`` (the stored prefix)."""
    top = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return [(top - dt.timedelta(hours=hours - 1 - i)).strftime("%Y-%m-%dT%H") for i in range(hours)]


def hourly_series(
    counts: list[tuple[str, str, int | None, int]], hours: list[str]
) -> tuple[dict[str, list[int]], dict[str, list[int]], dict[str, list[int]]]:
    """From (hour, kind, outcome, n): transactions by kind (the busiest MAX_KINDS, the rest as
    'other'), every record by outcome, and the refusals by kind."""
    at = {h: i for i, h in enumerate(hours)}
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0] * len(hours))
    by_outcome: dict[str, list[int]] = {name: [0] * len(hours) for name in OUTCOME_NAMES.values()}
    refused: dict[str, list[int]] = {name: [0] * len(hours) for name in REFUSALS.values()}
    for hour, kind, outcome, n in counts:
        i = at.get(hour)
        if i is None:
            continue
        if kind in REFUSALS:
            refused[REFUSALS[kind]][i] += n
        elif kind.startswith(("ITI-", "RAD-")):
            by_kind[kind][i] += n
        by_outcome[OUTCOME_NAMES.get(outcome if outcome is not None else -1, "error")][i] += n
    ranked = sorted(by_kind, key=lambda k: (-sum(by_kind[k]), k))
    kinds = {k: by_kind[k] for k in ranked[:MAX_KINDS]}
    if len(ranked) > MAX_KINDS:
        kinds["other"] = [sum(by_kind[k][i] for k in ranked[MAX_KINDS:]) for i in range(len(hours))]
    return kinds, by_outcome, refused


def purge_series(expiring: list[tuple[dt.datetime, int, int]], now: dt.datetime) -> tuple[list[str], list[int]]:
    """Documents due for purge per day for the next PURGE_DAYS days; the first bar holds the overdue ones."""
    days = [(now + dt.timedelta(days=i)).date() for i in range(PURGE_DAYS)]
    labels = ["overdue", *(d.strftime("%m-%d") for d in days)]
    values = [0] * len(labels)
    for when, documents, _ in expiring:
        if when <= now:
            values[0] += documents
            continue
        offset = (when.astimezone(dt.UTC).date() - days[0]).days
        if 0 <= offset < PURGE_DAYS:
            values[offset + 1] += documents
    return labels, values


def dashboard(page: Page) -> Response:
    now = page.console.now()
    hours = hour_labels(now)
    with page.console.engine.connect() as conn:
        counts = search.hourly_counts(conn, hours[0])
    kinds, outcomes, refused = hourly_series(counts, hours)
    short = [h[-2:] + "h" for h in hours]
    totals = registry_api.document_totals(page.console.sessions)
    expiring = registry_api.expiring_submissions(page.console.sessions, now + dt.timedelta(days=PURGE_DAYS))
    purge_labels, purge_values = purge_series(expiring, now)
    store_path = page.settings.effective_store_path
    disk: Any = shutil.disk_usage(store_path) if store_path.exists() else None
    figures = {
        "submissions": totals.submissions,
        "documents": totals.documents,
        "document_bytes": format_bytes(totals.total_bytes),
        "transactions_24h": sum(map(sum, kinds.values())),
        "refused_24h": sum(map(sum, refused.values())),
        "due_14d": sum(purge_values),
        "overdue": purge_values[0],
    }
    return page.render(
        "dashboard.html",
        figures=figures,
        disk=disk,
        store_path=store_path,
        chart_kinds=charts.stacked_bars(short, kinds, title="Transactions per hour by kind (last 24 hours, UTC)"),
        chart_outcomes=charts.stacked_bars(
            short, outcomes, title="Audit events per hour by outcome", colours=charts.OUTCOME_COLOURS
        ),
        chart_refused=charts.stacked_bars(short, refused, title="Refused connections per hour"),
        chart_purge=charts.stacked_bars(
            purge_labels, {"documents": purge_values}, title="Documents due for purge by day", label_every=1
        ),
        chart_disk=charts.usage_bar(
            disk.used,
            disk.total,
            title=f"Volume of the document store: {format_bytes(disk.used)} of {format_bytes(disk.total)} used",
        )
        if disk
        else None,
    )


ROUTES = [Route("GET", "/dashboard", VIEWERS, dashboard, "Dashboard")]
