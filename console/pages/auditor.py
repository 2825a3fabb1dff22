"""Auditors: search the audit log with the ITI-81 parameters, one record as received, a timeline for
one patient identifier or one document, the hash-chain check and CSV export. Every use of the log
is itself audited (DICOM "Audit Log Used"), as ITI-81 and the ``audit`` commands do."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from atna import fhir, search, store
from atna.cli import CSV_COLUMNS, csv_row
from clearinghouse import audit
from console.app import Page, Route
from console.web import Response, download

AUDITOR = ("auditor",)
# The ITI-81 parameters, in the order the form shows them, with a hint each.
PARAMETERS = (
    ("type", "EventID, e.g. 110112"),
    ("subtype", "EventTypeCode, e.g. ITI-41,ITI-43"),
    ("outcome", "0, 4, 8 or 12"),
    ("source", "AuditSourceID"),
    ("entity-id", "[IDTypeCode|]id of any object"),
    ("patient.identifier", "CX or urn:oid:OID|id"),
    ("address", "NetworkAccessPointID"),
    ("agent", "UserID or UserName"),
)
PAGE_SIZE = 50
TIMELINE_LIMIT = 500
OUTCOMES = {0: "success", 4: "partial", 8: "failure", 12: "error"}


def _params(page: Page) -> list[tuple[str, str]]:
    """The request's ITI-81 parameters, blanks left out (a form sends every field)."""
    names = {"date", "_offset", "_count"} | {n for n, _ in PARAMETERS}
    return [(n, v.strip()) for n, vs in page.request.query.items() if n in names for v in vs if v.strip()]


def _used(page: Page, what: str, outcome: int = audit.SUCCESS, description: str = "") -> None:
    page.emit(
        audit.audit_log_used(
            node=page.console.auditor.node,
            auditor=page.party,
            log_uri=page.request.host_url + page.request.path,
            query=what.encode(),
            outcome=outcome,
            outcome_description=description,
        )
    )


def _rows(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**csv_row(r), "outcome_text": OUTCOMES.get(r["event_outcome"], "?")} for r in raw]


def search_page(page: Page) -> Response:
    params = _params(page)
    dates = [v for n, v in params if n == "date"] + ["", ""]
    values = {n: v for n, v in params if n != "date"}
    context: dict[str, Any] = {"parameters": PARAMETERS, "values": values, "dates": dates[:2], "error": ""}
    if not params:
        return page.render("audit_search.html", searched=False, **context)
    try:
        query = fhir.parse_search([*params, ("_count", str(PAGE_SIZE))] if "_count" not in values else params)
    except fhir.SearchError as exc:
        _used(page, urlencode(params), audit.SERIOUS_FAILURE, str(exc))
        return page.render("audit_search.html", status=400, searched=False, **{**context, "error": str(exc)})
    with page.console.engine.connect() as conn:
        total, raw = search.run(conn, query)
    _used(page, urlencode(params))
    base = [(n, v) for n, v in params if n != "_offset"]
    prev_offset = max(query.offset - query.count, 0)
    return page.render(
        "audit_search.html",
        searched=True,
        total=total,
        rows=_rows(raw),
        offset=query.offset,
        shown=len(raw),
        export=urlencode(base),
        previous=urlencode([*base, ("_offset", str(prev_offset))]) if query.offset > 0 else "",
        next=urlencode([*base, ("_offset", str(query.offset + query.count))])
        if query.offset + query.count < total
        else "",
        **context,
    )


def record_page(page: Page) -> Response:
    raw_id = page.request.arg("id")
    if not raw_id.isdigit():
        return page.render("error.html", status=400, message="a record id is a number")
    with page.console.engine.connect() as conn:
        row = search.get(conn, int(raw_id))
    if row is None:
        return page.render("error.html", status=404, message=f"no audit record {raw_id}")
    _used(page, f"AuditEvent/{raw_id}")
    xml = fhir.original_xml(row).decode("utf-8", "replace")
    return page.render("audit_record.html", row=_rows([row])[0], raw=row, xml=xml)


def export_csv(page: Page) -> Response:
    params = [(n, v) for n, v in _params(page) if n not in ("_offset", "_count")]
    try:
        query = fhir.parse_search(params)
    except fhir.SearchError as exc:
        _used(page, "export " + urlencode(params), audit.SERIOUS_FAILURE, str(exc))
        return page.render("error.html", status=400, message=str(exc))
    _used(page, "export " + urlencode(params))
    engine = page.console.engine

    def chunks() -> Iterator[bytes]:
        # Streamed: an export may hold every record there is.
        import csv

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        with engine.connect() as conn:
            for n, row in enumerate(search.iterate(conn, query), 1):
                writer.writerow(csv_row(row))
                if n % 500 == 0:
                    yield buffer.getvalue().encode()
                    buffer.seek(0)
                    buffer.truncate()
        yield buffer.getvalue().encode()

    return download(chunks(), "audit-export.csv", "text/csv; charset=utf-8")


def timeline_page(page: Page) -> Response:
    patient, document = page.request.arg("patient"), page.request.arg("document")
    context: dict[str, Any] = {"patient": patient, "document": document, "error": ""}
    if not patient and not document:
        return page.render("audit_timeline.html", events=None, **context)
    params = [("patient.identifier", patient)] if patient else [("entity-id", document)]
    try:
        query = fhir.parse_search([*params, ("_count", str(TIMELINE_LIMIT))])
    except fhir.SearchError as exc:
        return page.render("audit_timeline.html", status=400, events=None, **{**context, "error": str(exc)})
    with page.console.engine.connect() as conn:
        total, raw = search.run(conn, query)
    _used(page, "timeline " + urlencode(params))
    events = sorted(_rows(raw), key=lambda r: (r["recorded"], int(r["id"])))
    return page.render("audit_timeline.html", events=events, total=total, limit=TIMELINE_LIMIT, **context)


def verify_page(page: Page) -> Response:
    return page.render("audit_verify.html", report=None)


def verify(page: Page) -> Response:
    report = store.verify(page.console.engine)
    _used(
        page,
        "verify",
        audit.SUCCESS if report.intact else audit.SERIOUS_FAILURE,
        "" if report.intact else f"chain broken at record {report.broken_at}: {report.reason}",
    )
    return page.render("audit_verify.html", report=report)


ROUTES = [
    Route("GET", "/audit", AUDITOR, search_page, "Audit log"),
    Route("GET", "/audit/record", AUDITOR, record_page),
    Route("GET", "/audit/export.csv", AUDITOR, export_csv),
    Route("GET", "/audit/timeline", AUDITOR, timeline_page, "Timeline"),
    Route("GET", "/audit/verify", AUDITOR, verify_page, "Chain check"),
    Route("POST", "/audit/verify", AUDITOR, verify),
]
