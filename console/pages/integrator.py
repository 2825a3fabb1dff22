"""Integrators: open a conformance session for a participant, see the test data to use, watch the
transactions arrive with each validation finding (a small polling script; a refresh link without
it), run the suite and download its JUnit XML and HTML report. Built on ``conformance.sessions``."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from clearinghouse import participants
from clearinghouse.soap.client import https_client
from clearinghouse.tls import client_context
from conformance import sessions as conformance
from conformance.edge import EdgeSimulator
from conformance.preload import edge_preloader, preload_identity
from console.app import Page, Route
from console.suite_runs import REPORTS
from console.web import HttpError, Response, download, json_response, redirect

INTEGRATOR = ("integrator",)
TIMEOUT_CHOICES = (15, 60, 240, 1440)  # minutes a session records
DEFAULT_WAIT_SECONDS = 10


def _recorded(r: conformance.Recorded) -> dict[str, Any]:
    return {
        "id": r.id,
        "transaction": r.transaction,
        "received_at": r.received_at.strftime("%H:%M:%S"),
        "passed": r.passed,
        "findings": [f.as_dict() for f in r.findings],
    }


def _session(page: Page, session_id: str) -> conformance.SessionView:
    try:
        return conformance.get_session(page.console.sessions, session_id)
    except conformance.SessionError as exc:
        raise HttpError(404, str(exc)) from exc


def home(page: Page, *, error: str = "", status: int = 200) -> Response:
    with page.console.sessions() as session:
        candidates = [p for p in participants.list_all(session) if not p.revoked]
    now = page.console.now()
    return page.render(
        "integrator.html",
        status=status,
        sessions=sorted(conformance.list_sessions(page.console.sessions), key=lambda v: v.created_at, reverse=True),
        now=now,
        edges=[p.name for p in candidates if "source" in p.roles],
        phrs=[p.name for p in candidates if "consumer" in p.roles],
        timeouts=TIMEOUT_CHOICES,
        error=error,
    )


def _preloader(page: Page) -> conformance.Preloader:
    """The PHR session's study goes in through this server's own ITI-8 and ITI-41, as the internal edge."""
    settings = page.settings
    https_port, feed_port = page.console.services["https_port"], page.console.services["feed_port"]
    cert, key = preload_identity(settings, page.console.sessions)
    ca = settings.ca_cert_path
    edge = EdgeSimulator(
        https_client(f"https://localhost:{https_port}/xds/repository", ca, cert, key, settings.spool_dir),
        f"mllp+tls://localhost:{feed_port}",
        client_context(ca, cert, key),
        affinity_domain_oid=settings.affinity_domain_oid,
        repository_unique_id=settings.repository_unique_id,
    )
    return edge_preloader(edge, Path(settings.home) / "conformance" / "preload")


def open_session(page: Page) -> Response:
    req = page.request
    role, participant, minutes = req.field("role"), req.field("participant"), req.field("minutes", "60")
    if not minutes.isdigit() or int(minutes) not in TIMEOUT_CHOICES:
        return home(page, error=f"choose one of {', '.join(map(str, TIMEOUT_CHOICES))} minutes", status=400)
    try:
        preload = _preloader(page) if role == "phr" else None
        view = conformance.open_session(
            page.console.sessions,
            page.settings,
            role=role,
            participant=participant,
            timeout=int(minutes) * 60,
            preload=preload,
        )
    except (conformance.SessionError, RuntimeError, OSError) as exc:
        return home(page, error=str(exc), status=400)
    return redirect(f"/integrator/session?id={quote(view.id)}")


def session_page(page: Page) -> Response:
    view = _session(page, page.request.arg("id"))
    recorded = [_recorded(r) for r in conformance.transactions(page.console.sessions, view.id)]
    return page.render(
        "integrator_session.html",
        view=view,
        open=view.is_open(page.console.now()),
        sheet=conformance.render_test_data(view),
        recorded=recorded,
        since=recorded[-1]["id"] if recorded else 0,
        run=page.console.suites.status(view.id),
        reports={name: page.console.suites.report(view.id, name) is not None for name in REPORTS},
        wait_seconds=DEFAULT_WAIT_SECONDS,
    )


def transactions_json(page: Page) -> Response:
    """What arrived after ``since``: what the page's script polls for."""
    view = _session(page, page.request.arg("id"))
    since = page.request.arg("since", "0")
    recorded = conformance.transactions(page.console.sessions, view.id, int(since) if since.isdigit() else 0)
    status = page.console.suites.status(view.id)
    return json_response(
        {
            "open": view.is_open(page.console.now()),
            "transactions": [_recorded(r) for r in recorded],
            "run": None if status is None else {"running": status.running, "returncode": status.returncode},
        }
    )


def close(page: Page) -> Response:
    view = _session(page, page.request.field("id"))
    conformance.close_session(page.console.sessions, view.id)
    return redirect(f"/integrator/session?id={quote(view.id)}")


def run_suite(page: Page) -> Response:
    view = _session(page, page.request.field("id"))
    raw = page.request.field("wait", str(DEFAULT_WAIT_SECONDS))
    wait = float(raw) if raw.isdigit() and 1 <= int(raw) <= 600 else DEFAULT_WAIT_SECONDS
    page.console.suites.start(view.id, view.role, page.user.account.name, wait_seconds=wait)
    return redirect(f"/integrator/session?id={quote(view.id)}")


def report(page: Page) -> Response:
    view = _session(page, page.request.arg("id"))
    name = page.request.arg("file")
    path = page.console.suites.report(view.id, name)
    if path is None:
        raise HttpError(404, f"no {name or 'report'} for session {view.id} (run the suite first)")
    return download(path.read_bytes(), f"conformance-{view.id}-{name}", REPORTS[name])


ROUTES = [
    Route("GET", "/integrator", INTEGRATOR, home, "Conformance"),
    Route("POST", "/integrator/open", INTEGRATOR, open_session),
    Route("GET", "/integrator/session", INTEGRATOR, session_page),
    Route("GET", "/integrator/transactions", INTEGRATOR, transactions_json),
    Route("POST", "/integrator/close", INTEGRATOR, close),
    Route("POST", "/integrator/run", INTEGRATOR, run_suite),
    Route("GET", "/integrator/report", INTEGRATOR, report),
]
