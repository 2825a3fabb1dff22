"""Site administrators: participants and their certificates, registry contents by submission, the
PIX cross-references, the dead-letter list. Participant changes use the same core functions as the
``participants`` commands and are audited like them, with the console user as the operator."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from urllib.parse import quote

from cryptography.x509 import Certificate

from clearinghouse import audit, participants, pki
from clearinghouse.db import transaction
from clearinghouse.peer import ROLES as PARTICIPANT_ROLES
from console import retention
from console.app import Page, Route
from console.web import Response, redirect
from pix_manager import admin as pix_admin
from registry import api as registry_api

ADMIN = ("admin",)
PAGE_SIZE = 50
# A certificate that ends within this many days is flagged on the participants page.
EXPIRY_WARNING_DAYS = 30
DONE = {
    "imported": "Participant {name} imported.",
    "revoked": "Participant {name} revoked: its certificate is refused from the next connection on.",
    "replayed": "Dead letter {name} queued again; it is sent within a second.",
}


def _page_number(page: Page) -> int:
    raw = page.request.arg("page", "1")
    return max(int(raw), 1) if raw.isdigit() else 1


def participants_page(page: Page, *, error: str = "", status: int = 200) -> Response:
    with page.console.sessions() as session:
        rows = participants.list_all(session)
    now = page.console.now()
    warn_before = now + dt.timedelta(days=EXPIRY_WARNING_DAYS)
    listed = [
        {
            "p": p,
            "not_after": retention.as_utc(p.not_after),
            "expired": retention.as_utc(p.not_after) <= now,
            "expiring": now < retention.as_utc(p.not_after) <= warn_before,
        }
        for p in rows
    ]
    done = page.request.arg("done")
    message = DONE[done].format(name=page.request.arg("name")) if done in DONE else ""
    return page.render(
        "participants.html",
        status=status,
        rows=listed,
        roles=sorted(PARTICIPANT_ROLES),
        error=error,
        message=message,
        warning_days=EXPIRY_WARNING_DAYS,
        can_issue=page.settings.ca_key_path.exists(),
    )


def _changed(page: Page, change: str, view: participants.ParticipantView) -> None:
    page.emit(
        audit.participant_change(
            node=page.console.auditor.node,
            change=change,
            participant=view.name,
            roles=sorted(view.roles),
            fingerprint=view.fingerprint,
            subject=view.subject,
            operator=page.party,
        )
    )


def issue(page: Page) -> Response:
    req = page.request
    name, roles = req.field("name").strip(), req.fields("role")
    try:
        roles = participants.check_roles(roles)
        ca = pki.load_ca(page.settings.pki_dir)
        identity = pki.issue_certificate(ca, name, client=True)
        with transaction(page.console.sessions) as session:
            view = participants.register(session, name, roles, identity.certificate, "issued")
    except (participants.ParticipantError, FileNotFoundError) as exc:
        return participants_page(page, error=str(exc), status=400)
    _changed(page, "add", view)
    password = secrets.token_urlsafe(12)
    p12 = pki.pkcs12_bundle(identity, ca.cert_pem, name, password.encode())
    # The private key exists only in this answer (never stored, never cached: Cache-Control no-store).
    return page.render(
        "issued.html",
        view=view,
        key_pem=identity.key_pem.decode(),
        cert_pem=identity.cert_pem.decode(),
        ca_pem=ca.cert_pem.decode(),
        p12_b64=base64.b64encode(p12).decode(),
        p12_password=password,
    )


def import_certificate(page: Page) -> Response:
    req = page.request
    name, roles, pem = req.field("name").strip(), req.fields("role"), req.field("certificate").strip()
    try:
        cert: Certificate = pki.load_certificate(pem.encode())
    except ValueError as exc:
        return participants_page(page, error=f"not a PEM certificate: {exc}", status=400)
    try:
        with transaction(page.console.sessions) as session:
            view = participants.register(session, name, roles, cert, "imported")
    except participants.ParticipantError as exc:
        return participants_page(page, error=str(exc), status=400)
    _changed(page, "import", view)
    return redirect(f"/admin/participants?done=imported&name={quote(view.name)}")


def revoke(page: Page) -> Response:
    name = page.request.field("name")
    try:
        with transaction(page.console.sessions) as session:
            view = participants.revoke(session, name)
    except participants.ParticipantError as exc:
        return participants_page(page, error=str(exc), status=400)
    _changed(page, "revoke", view)
    return redirect(f"/admin/participants?done=revoked&name={quote(view.name)}")


def submissions_page(page: Page) -> Response:
    number = _page_number(page)
    patient = page.request.arg("patient")
    total, rows = registry_api.submission_summaries(
        page.console.sessions, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE, patient_id=patient
    )
    now = page.console.now()
    listed = []
    with page.console.sessions() as session:
        for s in rows:
            due = retention.purge_due(session, page.settings, s)
            listed.append({"s": s, "due": due, "left": retention.describe_left(due, now)})
    return page.render(
        "submissions.html",
        rows=listed,
        total=total,
        number=number,
        pages=max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1),
        patient=patient,
    )


def pix_page(page: Page) -> Response:
    number = _page_number(page)
    identifier = page.request.arg("identifier")
    with page.console.engine.connect() as conn:
        total, rows = pix_admin.cross_references(
            conn, identifier=identifier, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE
        )
        domains = pix_admin.list_domains(conn)
    return page.render(
        "pix.html",
        rows=rows,
        total=total,
        number=number,
        pages=max((total + PAGE_SIZE - 1) // PAGE_SIZE, 1),
        identifier=identifier,
        domains=domains,
    )


def dead_letters_page(page: Page, *, error: str = "", status: int = 200) -> Response:
    from clearinghouse import hl7

    with page.console.engine.connect() as conn:
        entries = pix_admin.dead_letters(conn)
    rows = []
    for e in entries:
        try:
            control = hl7.parse_message(e.message).control_id
        except hl7.MalformedMessage:
            control = "?"
        rows.append({"e": e, "control": control, "text": e.message.decode("utf-8", "replace").replace("\r", "\n")})
    done = page.request.arg("done")
    message = DONE[done].format(name=page.request.arg("name")) if done in DONE else ""
    return page.render("dead_letters.html", status=status, rows=rows, error=error, message=message)


def replay(page: Page) -> Response:
    raw = page.request.field("id")
    if not raw.isdigit():
        return dead_letters_page(page, error=f"{raw!r} is not an outbox entry id", status=400)
    try:
        with page.console.engine.begin() as conn:
            entry = pix_admin.replay(conn, int(raw))
    except pix_admin.PixAdminError as exc:
        return dead_letters_page(page, error=str(exc), status=400)
    return redirect(f"/admin/dead-letters?done=replayed&name={entry.id}")


ROUTES = [
    Route("GET", "/admin/participants", ADMIN, participants_page, "Participants"),
    Route("POST", "/admin/participants/issue", ADMIN, issue),
    Route("POST", "/admin/participants/import", ADMIN, import_certificate),
    Route("POST", "/admin/participants/revoke", ADMIN, revoke),
    Route("GET", "/admin/submissions", ADMIN, submissions_page, "Submissions"),
    Route("GET", "/admin/pix", ADMIN, pix_page, "PIX"),
    Route("GET", "/admin/dead-letters", ADMIN, dead_letters_page, "Dead letters"),
    Route("POST", "/admin/dead-letters/replay", ADMIN, replay),
]
