"""The web console over real HTTPS (server certificate only, as browsers connect): sign-in, sessions,
CSRF, lock-out, role checks, the administrator's and auditor's pages against a running clearinghouse,
each sign-in and change audited; and the pure parts (lock-out rule, charts, series)."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import re
import socket
import ssl
import sys
import time

import edge
import pytest
from conftest import PG_URL, running_instance
from console_client import PASSWORD, ConsoleClient, add_user, reference_edge, sample_study, wait_for_audit
from pix_samples import PixConsumer, adt, cx, msa, new_oid, uid

from clearinghouse import participants, pki
from clearinghouse.cli import main
from clearinghouse.db import transaction
from console import accounts, charts, signins
from console.app import _safe_next
from console.pages import dashboard
from pix_manager import admin as pix_admin
from pix_manager.models import DEAD, PENDING

LOCKOUT = 3


@pytest.fixture(scope="module")
def ch(backend, tmp_path_factory):
    with running_instance(
        tmp_path_factory.mktemp(f"console-{backend}"),
        backend,
        console_lockout_attempts=LOCKOUT,
        pix_notify_retry_ms=50,
        pix_notify_max_attempts=1,
    ) as running:
        add_user(running.ch.sessions, "ada", "admin")
        add_user(running.ch.sessions, "audrey", "auditor")
        add_user(running.ch.sessions, "ivan", "integrator")
        yield running


def client(ch) -> ConsoleClient:
    return ConsoleClient(ch.ch.console.port, ch.settings.ca_cert_path)


def signed_in(ch, name: str) -> ConsoleClient:
    c = client(ch)
    reply = c.sign_in(name)
    assert reply.status == 303, reply.text
    return c


def flush_audit(ch) -> None:
    ch.ch.audit.sink.flush()


# --- transport, headers, sign-in ------------------------------------------------------------------


def test_console_is_https_without_a_client_certificate_and_sends_strict_headers(ch):
    c = client(ch)
    first = c.get("/dashboard")
    assert first.status == 303 and first.location == "/login?next=%2Fdashboard"
    login = c.get(first.location)
    assert login.status == 200 and '<form method="post" action="/login">' in login.text
    csp = login.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert login.headers["Cache-Control"] == "no-store" and login.headers["X-Frame-Options"] == "DENY"
    assert login.headers["Strict-Transport-Security"].startswith("max-age=")
    (cookie,) = login.cookies()
    assert cookie.startswith("__Host-console-login=") and all(
        flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/")
    )
    css = c.get("/static/console.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    assert c.get("/static/..%2Fapp.py").status == 404


def test_plain_http_to_the_console_port_gets_no_page(ch):
    with socket.create_connection(("localhost", ch.ch.console.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert b"HTTP/1.1 200" not in answer and b"<html" not in answer


def test_untrusted_server_certificate_is_what_a_browser_checks(ch):
    ctx = ssl.create_default_context()  # the system roots, not the clearinghouse CA
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection(("localhost", ch.ch.console.port), timeout=10) as s:
            ctx.wrap_socket(s, server_hostname="localhost")


def test_sign_in_sets_a_secure_session_cookie_and_is_audited(ch):
    c = client(ch)
    reply = c.sign_in("ada")
    assert reply.status == 303 and reply.location == "/dashboard"
    session_cookie = next(x for x in reply.cookies() if x.startswith(signins.COOKIE))
    assert all(flag in session_cookie for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"))
    token = c.cookies[signins.COOKIE]
    with ch.ch.engine.connect() as conn:  # only a digest of the token is stored
        stored = conn.exec_driver_sql("SELECT token_sha256 FROM console_session").scalars().all()
    assert token not in stored and len(stored) >= 1
    page = c.get("/dashboard")
    assert page.status == 200 and "Transactions per hour by kind" in page.text and "<svg" in page.text
    flush_audit(ch)
    (event,) = wait_for_audit(ch.ch.engine, [("type", "110114"), ("subtype", "110122"), ("agent", "console:ada")])
    assert event["event_outcome"] == 0


def test_sign_in_redirects_only_within_the_console(ch):
    c = client(ch)
    c.get("/login")
    reply = c.post("/login", {"username": "audrey", "password": PASSWORD, "next": "/audit?type=110114"})
    assert reply.location == "/audit?type=110114"
    assert _safe_next("//evil.example/x") == "" and _safe_next("https://evil.example/") == ""
    assert _safe_next("/\\evil") == "" and _safe_next("/admin/pix") == "/admin/pix"


def test_wrong_passwords_lock_the_account_and_every_attempt_is_audited(ch):
    add_user(ch.ch.sessions, "lucy", "admin")
    c = client(ch)
    for _ in range(LOCKOUT):
        refused = c.sign_in("lucy", "not the password at all")
        assert refused.status == 403 and "Sign-in failed" in refused.text
        assert signins.COOKIE not in c.cookies
    locked = c.sign_in("lucy")  # the right password, but locked
    assert locked.status == 403 and signins.COOKIE not in c.cookies
    with ch.ch.sessions() as session:
        (lucy,) = [a for a in accounts.list_all(session) if a.name == "lucy"]
    assert lucy.locked_until is not None and lucy.locked_until > dt.datetime.now(dt.UTC)
    unknown = c.sign_in("nobody-here")
    assert unknown.status == 403 and unknown.text.count("Sign-in failed") == 1  # the same answer
    flush_audit(ch)
    failures = wait_for_audit(
        ch.ch.engine, [("type", "110114"), ("agent", "console:lucy"), ("outcome", "4")], count=LOCKOUT + 1
    )
    assert len(failures) == LOCKOUT + 1
    wait_for_audit(ch.ch.engine, [("type", "110114"), ("agent", "console:nobody-here"), ("outcome", "4")])
    # An administrator's new password clears the lock-out.
    with transaction(ch.ch.sessions) as session:
        accounts.set_password(session, "lucy", PASSWORD + "!")
    assert c.sign_in("lucy", PASSWORD + "!").status == 303


def test_disabled_account_cannot_sign_in_and_loses_its_sessions(ch):
    add_user(ch.ch.sessions, "dora", "auditor")
    c = signed_in(ch, "dora")
    assert c.get("/audit").status == 200
    with transaction(ch.ch.sessions) as session:
        accounts.disable(session, "dora")
    assert c.get("/audit").status == 303  # back to the sign-in page
    assert client(ch).sign_in("dora").status == 403


def test_sign_out_ends_the_session_and_is_audited(ch):
    c = signed_in(ch, "ivan")
    token = c.cookies[signins.COOKIE]
    assert c.get("/integrator").status == 200
    out = c.post("/logout")
    assert out.status == 303 and signins.COOKIE not in c.cookies
    c.cookies[signins.COOKIE] = token  # a copy of the old cookie is worth nothing now
    assert c.get("/integrator").status == 303
    flush_audit(ch)
    wait_for_audit(ch.ch.engine, [("type", "110114"), ("subtype", "110123"), ("agent", "console:ivan")])


def test_session_expires_when_idle_and_at_the_absolute_limit(ch):
    now = dt.datetime.now(dt.UTC)
    with transaction(ch.ch.sessions) as session:
        account = next(a for a in accounts.list_all(session) if a.name == "ivan")
        token, started = signins.start(session, account, "127.0.0.1", idle_minutes=30, max_hours=2, now=now)
    assert started.expires_at == now + dt.timedelta(minutes=30)
    with transaction(ch.ch.sessions) as session:
        later = signins.lookup(session, token, idle_minutes=30, max_hours=2, now=now + dt.timedelta(minutes=29))
    assert later is not None and later.expires_at == now + dt.timedelta(minutes=59)
    for minutes in (50, 75, 100):  # used within every 30 minutes...
        with transaction(ch.ch.sessions) as session:
            used = signins.lookup(session, token, idle_minutes=30, max_hours=2, now=now + dt.timedelta(minutes=minutes))
        assert used is not None
    assert used.expires_at == now + dt.timedelta(hours=2)  # ...yet over after 2 hours
    with transaction(ch.ch.sessions) as session:
        assert signins.lookup(session, token, idle_minutes=30, max_hours=2, now=now + dt.timedelta(minutes=121)) is None
    with transaction(ch.ch.sessions) as session:
        idle_token, _ = signins.start(session, account, "127.0.0.1", idle_minutes=30, max_hours=2, now=now)
    with transaction(ch.ch.sessions) as session:
        assert (
            signins.lookup(session, idle_token, idle_minutes=30, max_hours=2, now=now + dt.timedelta(minutes=31))
            is None
        )
    with transaction(ch.ch.sessions) as session:  # an expired session is gone, not merely refused
        assert signins.lookup(session, idle_token, idle_minutes=30, max_hours=2, now=now) is None
        assert signins.lookup(session, "x" * 43, idle_minutes=30, max_hours=2, now=now) is None


# --- CSRF and roles -------------------------------------------------------------------------------


def test_posts_without_the_csrf_token_change_nothing(ch):
    c = signed_in(ch, "ada")
    c.get("/admin/participants")
    assert c.post("/admin/participants/revoke", {"name": "edge"}, csrf=False).status == 403
    assert c.post("/admin/participants/revoke", {"name": "edge", "csrf": "forged"}).status == 403
    with ch.ch.sessions() as session:
        assert not next(p for p in participants.list_all(session) if p.name == "edge").revoked
    mallory = client(ch)
    mallory.get("/login")
    login_token = mallory.csrf
    mallory.cookies.clear()  # the sign-in form's token must match its cookie
    refused = mallory.post("/login", {"username": "ada", "password": PASSWORD, "csrf": login_token}, csrf=False)
    assert refused.status == 403 and signins.COOKIE not in mallory.cookies
    assert c.post("/logout", csrf=False).status == 403 and c.get("/dashboard").status == 200


def test_every_page_checks_the_role_and_refusals_are_audited(ch):
    auditor, integrator, admin = signed_in(ch, "audrey"), signed_in(ch, "ivan"), signed_in(ch, "ada")
    for path in ("/admin/participants", "/admin/submissions", "/admin/pix", "/admin/dead-letters"):
        assert auditor.get(path).status == 403, path
        assert integrator.get(path).status == 403, path
        assert admin.get(path).status == 200, path
    for path in ("/audit", "/audit/timeline", "/audit/verify", "/audit/export.csv"):
        assert admin.get(path).status == 403, path
        assert integrator.get(path).status == 403, path
        assert auditor.get(path).status == 200, path
    assert integrator.get("/dashboard").status == 403
    assert auditor.get("/dashboard").status == 200
    assert auditor.post("/admin/participants/revoke", {"name": "edge"}).status == 403
    nav = auditor.get("/audit").text
    assert 'href="/audit"' in nav and 'href="/admin/participants"' not in nav
    flush_audit(ch)
    refused = wait_for_audit(ch.ch.engine, [("type", "110113"), ("subtype", "110132"), ("agent", "console:ivan")])
    assert refused and refused[0]["event_outcome"] == 4
    assert admin.get("/no-such-page").status == 404


# --- administrators -------------------------------------------------------------------------------


def test_admin_issues_imports_and_revokes_participants_audited_like_the_cli(ch, tmp_path):
    c = signed_in(ch, "ada")
    c.get("/admin/participants")
    issued = c.post("/admin/participants/issue", {"name": "site-b-edge", "role": ["source", "consumer"]})
    assert issued.status == 200, issued.text
    assert "BEGIN PRIVATE KEY" in issued.text and issued.headers["Cache-Control"] == "no-store"
    key = re.search(r"(-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----)", issued.text, re.S).group(1)
    cert = re.search(
        r"readonly rows=\"6\" class=\"mono\">(-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----)",
        issued.text,
        re.S,
    ).group(1)
    (tmp_path / "k.pem").write_text(key)
    (tmp_path / "c.pem").write_text(cert)
    # The issued identity is accepted by the clearinghouse's mutual-TLS ports.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ch.settings.ca_cert_path))
    ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    with (
        socket.create_connection(("localhost", ch.https_port)) as s,
        ctx.wrap_socket(s, server_hostname="localhost") as t,
    ):
        t.sendall(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert t.recv(64).startswith(b"HTTP/1.1 404")

    other = pki.issue_certificate(pki.create_ca("Elsewhere CA"), "imported-edge")
    c.get("/admin/participants")
    imported = c.post(
        "/admin/participants/import",
        {"name": "imported-edge", "role": "source", "certificate": other.cert_pem.decode()},
    )
    assert imported.status == 303 and "done=imported" in imported.location
    assert "Participant imported-edge imported." in c.get(imported.location).text
    bad = c.post("/admin/participants/import", {"name": "x", "role": "source", "certificate": "not a cert"})
    assert bad.status == 400 and "not a PEM certificate" in bad.text
    dup = c.post("/admin/participants/issue", {"name": "site-b-edge", "role": "source"})
    assert dup.status == 400 and "already exists" in dup.text

    c.get("/admin/participants")
    assert c.post("/admin/participants/revoke", {"name": "site-b-edge"}).status == 303
    with ch.ch.sessions() as session:
        rows = {p.name: p for p in participants.list_all(session)}
    assert rows["site-b-edge"].revoked and rows["site-b-edge"].roles == {"source", "consumer"}
    assert rows["imported-edge"].origin == "imported"
    with pytest.raises(ssl.SSLError), socket.create_connection(("localhost", ch.https_port)) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            t.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            t.recv(64)
    flush_audit(ch)
    changes = wait_for_audit(ch.ch.engine, [("type", "110113"), ("entity-id", "site-b-edge")], count=2)
    assert all("console:ada" in row["raw"].decode() for row in changes)
    wait_for_audit(ch.ch.engine, [("type", "110113"), ("subtype", "110136"), ("entity-id", "imported-edge")])


def test_expiring_certificates_are_flagged(ch):
    ca = pki.load_ca(ch.settings.pki_dir)
    soon = pki.issue_certificate(ca, "expiring-edge", not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=5))
    with transaction(ch.ch.sessions) as session:
        participants.register(session, "expiring-edge", ["source"], soon.certificate, "issued")
    page = signed_in(ch, "ada").get("/admin/participants").text
    row = page[page.index("<td>expiring-edge</td>") :].split("</tr>")[0]
    assert "expires within 30 days" in row
    edge_row = page[page.index("<td>edge</td>") :].split("</tr>")[0]
    assert "expires within" not in edge_row


def _submit(ch) -> tuple[str, edge.Study]:
    patient = edge.patient_for(edge.new_access_code(), "19700412", "s3cret")
    feed = ch.feed_client("edge")
    try:
        assert b"MSA|AA|" in feed.send(edge.feed_message(patient))
    finally:
        feed.close()
    study = edge.study(patient)
    reply = edge.submit(ch.soap("edge", "/xds/repository"), study)
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    return patient, study


def test_submissions_page_lists_a_submission_with_counts_sizes_and_purge_time(ch):
    patient, study = _submit(ch)
    c = signed_in(ch, "ada")
    page = c.get("/admin/submissions?patient=" + patient.replace("&", "%26").replace("^", "%5E"))
    assert page.status == 200
    assert "1 submission(s)" in page.text
    row = page.text[page.text.index("<tbody>") :].split("</tr>")[0]
    assert f'<td class="num">{len(study.documents)}</td>' in row
    assert ">edge<" in row and "in 29 days" in row
    assert study.unique_ids[0] not in page.text  # metadata of the submission only, not of each document
    everything = c.get("/admin/submissions").text
    assert "submission(s)" in everything and "Purge due" in everything


def test_dashboard_counts_transactions_storage_and_purge(ch):
    _submit(ch)
    flush_audit(ch)
    wait_for_audit(ch.ch.engine, [("subtype", "ITI-41")])
    page = signed_in(ch, "audrey").get("/dashboard").text
    figures = re.search(r"<strong>(\d+)</strong> transactions in 24 h", page)
    assert figures and int(figures.group(1)) >= 2
    assert "ITI-41" in page and "Volume of the document store" in page
    assert "Documents due for purge by day" in page


def test_pix_cross_references_are_listed_and_found_by_identifier(ch):
    site_oid, ns = new_oid(), f"N{uid()}"
    with ch.ch.engine.begin() as conn:
        pix_admin.set_domain(conn, site_oid, ns)
    mrn, rsna = uid(), uid()
    client_ = ch.pix_client()
    try:
        assert msa(client_.send(adt("A04", f"{cx(mrn, site_oid)}~{cx(rsna)}").encode())) == "AA"
    finally:
        client_.close()
    c = signed_in(ch, "ada")
    page = c.get(f"/admin/pix?identifier={mrn}").text
    assert "1 person(s)" in page and mrn in page and rsna in page and ns in page
    assert "0 person(s)" in c.get("/admin/pix?identifier=no-such-id").text


def test_dead_letters_are_listed_and_replayed(ch):
    consumer = PixConsumer(ch.settings.pki_dir, lambda _m: "AR").start()
    site_oid, ns = new_oid(), f"N{uid()}"
    name = f"consumer-{uid().lower()}"
    try:
        with ch.ch.engine.begin() as conn:
            pix_admin.set_domain(conn, site_oid, ns)
            pix_admin.subscribe(conn, name, consumer.url, [ns])
        client_ = ch.pix_client()
        try:
            assert msa(client_.send(adt("A04", cx(uid(), site_oid)).encode())) == "AA"
        finally:
            client_.close()
        entry = None
        for _ in range(200):
            with ch.ch.engine.connect() as conn:
                entry = next((e for e in pix_admin.dead_letters(conn) if e.destination == name), None)
            if entry:
                break
            time.sleep(0.05)
        assert entry is not None
        c = signed_in(ch, "ada")
        page = c.get("/admin/dead-letters")
        assert name in page.text and "ADT^A31" in page.text
        replayed = c.post("/admin/dead-letters/replay", {"id": str(entry.id)})
        assert replayed.status == 303
        with ch.ch.engine.connect() as conn:
            status = next(e.status for e in pix_admin.outbox(conn) if e.id == entry.id)
        assert status in (PENDING, DEAD) and len(consumer.received) >= 1
        again = c.post("/admin/dead-letters/replay", {"id": "999999"})
        assert again.status == 400 and "no outbox entry" in again.text
    finally:
        with ch.ch.engine.begin() as conn:
            pix_admin.unsubscribe(conn, name)
        consumer.stop()


# --- auditors -------------------------------------------------------------------------------------


def test_auditor_searches_exports_follows_a_timeline_and_verifies_the_chain(ch):
    patient, study = _submit(ch)
    flush_audit(ch)
    wait_for_audit(ch.ch.engine, [("patient.identifier", patient), ("subtype", "ITI-41")])
    c = signed_in(ch, "audrey")
    page = c.get("/audit?subtype=ITI-41&date=ge2020-01-01&date=&type=&outcome=0")
    assert page.status == 200 and "record(s)" in page.text and "ITI-41" in page.text
    bad = c.get("/audit?date=yesterday")
    assert bad.status == 400 and "date" in bad.text

    export = c.get("/audit/export.csv?subtype=ITI-41")
    assert export.status == 200 and export.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in export.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert rows and all("ITI-41" in r["subtypes"] for r in rows) and any(patient in r["patients"] for r in rows)

    quoted = patient.replace("^", "%5E").replace("&", "%26")
    timeline = c.get(f"/audit/timeline?patient={quoted}").text
    assert "ITI-41" in timeline and "ITI-42" in timeline and "ITI-8" in timeline
    doc = c.get(f"/audit/timeline?document={study.unique_ids[0]}").text
    assert "event(s)" in doc

    record_id = re.search(r"/audit/record\?id=(\d+)", page.text).group(1)
    record = c.get(f"/audit/record?id={record_id}")
    assert record.status == 200 and "&lt;AuditMessage" in record.text
    assert c.get("/audit/record?id=999999999").status == 404

    c.get("/audit/verify")
    verified = c.post("/audit/verify")
    assert "Audit chain intact" in verified.text
    flush_audit(ch)
    wait_for_audit(ch.ch.engine, [("type", "110101"), ("agent", "console:audrey")], count=5)


# --- the users command ----------------------------------------------------------------------------


def run_cli(ch, *args: str, stdin: str = "") -> tuple[int, str]:
    """``clearinghouse GROUP COMMAND --home H [--database-url U] ARGS`` against the instance's database."""
    common = ["--home", str(ch.settings.home)]
    if ch.ch.engine.dialect.name == "postgresql":
        with ch.ch.engine.connect() as conn:
            schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
        common += ["--database-url", f"{PG_URL}?options=-csearch_path%3D{schema}"]
    out = io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main([*args[:2], *common, *args[2:]])
    finally:
        sys.stdin = old_stdin
    return code, out.getvalue()


def test_users_command_adds_lists_disables_and_resets(ch, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("a long enough password\n")
    assert run_cli(ch, "users", "add", "carla", "--role", "auditor", "--password-file", str(pw))[0] == 0
    code, out = run_cli(ch, "users", "add", "carla", "--role", "admin", "--password-file", str(pw))
    assert code == 2 and "already exists" in out
    code, out = run_cli(ch, "users", "add", "short", "--role", "admin", stdin="too short\n")
    assert code == 2 and "at least 12 characters" in out
    assert run_cli(ch, "users", "add", "stdin-user", "--role", "integrator", stdin="from standard input ok\n")[0] == 0
    assert client(ch).sign_in("stdin-user", "from standard input ok").status == 303
    assert client(ch).sign_in("carla", "a long enough password").status == 303
    code, out = run_cli(ch, "users", "list")
    assert code == 0 and re.search(r"carla\s+auditor\s+active", out)
    assert run_cli(ch, "users", "disable", "carla")[0] == 0
    assert "disabled" in run_cli(ch, "users", "list")[1]
    assert client(ch).sign_in("carla", "a long enough password").status == 403
    assert run_cli(ch, "users", "passwd", "carla", stdin="another long password\n")[0] == 0
    assert client(ch).sign_in("carla", "another long password").status == 303
    assert run_cli(ch, "users", "disable", "nobody")[0] == 2


# --- pure rules -----------------------------------------------------------------------------------


def test_lockout_rule():
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert accounts.after_failure(0, attempts=3, lock_minutes=15, now=now) == (1, None)
    assert accounts.after_failure(1, attempts=3, lock_minutes=15, now=now) == (2, None)
    assert accounts.after_failure(2, attempts=3, lock_minutes=15, now=now) == (0, now + dt.timedelta(minutes=15))


def test_account_rules():
    with pytest.raises(accounts.AccountError):
        accounts.check_roles(["root"])
    with pytest.raises(accounts.AccountError):
        accounts.check_name("bad name")
    with pytest.raises(accounts.AccountError):
        accounts.check_password("short")
    stored = accounts.hash_password("a long enough password")
    assert stored.startswith("$argon2id$") and "a long enough" not in stored


def test_hourly_series_and_purge_series():
    now = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.UTC)
    hours = dashboard.hour_labels(now)
    assert len(hours) == 24 and hours[-1] == "2026-03-01T12" and hours[0] == "2026-02-28T13"
    counts = [
        ("2026-03-01T12", "ITI-41", 0, 3),
        ("2026-03-01T12", "ITI-41", 8, 1),
        ("2026-03-01T11", "110126", 4, 2),
        ("2026-03-01T11", "110100", 0, 1),
        ("2020-01-01T00", "ITI-18", 0, 9),  # outside the window
    ]
    kinds, outcomes, refused = dashboard.hourly_series(counts, hours)
    assert kinds == {"ITI-41": [0] * 23 + [4]}
    assert outcomes["success"][-1] == 3 and outcomes["failure"][-1] == 1 and outcomes["partial"][-2] == 2
    assert refused["TLS handshake refused"][-2] == 2
    expiring = [(now - dt.timedelta(hours=1), 4, 10), (now + dt.timedelta(days=2), 5, 10)]
    labels, values = dashboard.purge_series(expiring, now)
    assert labels[0] == "overdue" and values[0] == 4 and values[3] == 5 and sum(values) == 9


def test_charts_are_svg_with_escaped_labels():
    svg = str(charts.stacked_bars(["a", "b"], {"<x>": [1, 2], "y": [0, 3]}, title="T & U"))
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "&lt;x&gt;" in svg and "T &amp; U" in svg
    assert svg.count("<rect") == 3 + 2  # three bars' segments, two legend keys
    empty = str(charts.stacked_bars(["a"], {"x": [0]}, title="none"))
    assert "nothing recorded" in empty
    assert [charts._nice_max(v) for v in (0, 1, 4, 5, 7, 9, 41, 240)] == [4, 4, 4, 8, 8, 20, 80, 400]


# --- integrators ----------------------------------------------------------------------------------


def test_integrator_opens_a_session_watches_transactions_and_runs_the_suite(ch, tmp_path):
    c = signed_in(ch, "ivan")
    home = c.get("/integrator")
    assert home.status == 200 and "<option>edge</option>" in home.text
    refused = c.post("/integrator/open", {"role": "edge", "participant": "phr", "minutes": "60"})
    assert refused.status == 400 and "lacks the role" in refused.text
    opened = c.post("/integrator/open", {"role": "edge", "participant": "edge", "minutes": "15"})
    assert opened.status == 303, opened.text
    session_id = opened.location.split("id=")[1]
    page = c.get(opened.location)
    assert page.status == 200 and "Test patients:" in page.text and "Nothing recorded yet." in page.text
    data = re.search(r"1\. access code (\S+)\s+date of birth (\d{8})\s+password (\S+)", page.text)
    code, dob, password = data.groups()
    assert c.get(f"/integrator/transactions?id={session_id}&since=0").text.startswith('{"open":true,"transactions":[]')

    simulator = reference_edge(ch)
    sink = simulator.audit
    simulator.send(sample_study(tmp_path, ("CT_small.dcm",)), dob=dob, password=password, access_code=code)
    assert sink.flush(15)
    sink.close(1)
    seen: list[str] = []
    for _ in range(200):
        doc = json.loads(c.get(f"/integrator/transactions?id={session_id}&since=0").text)
        seen = [t["transaction"] for t in doc["transactions"]]
        if {"ITI-8", "ITI-41", "ITI-20"} <= set(seen):
            break
        time.sleep(0.1)
    assert {"ITI-8", "ITI-41", "ITI-20"} <= set(seen), seen
    assert all(t["passed"] for t in doc["transactions"]), doc
    last = max(t["id"] for t in doc["transactions"])
    later = json.loads(c.get(f"/integrator/transactions?id={session_id}&since={last}").text)
    assert later["transactions"] == []

    c.get(opened.location)
    assert c.post("/integrator/run", {"id": session_id, "wait": "5"}).status == 303
    for _ in range(600):
        status = json.loads(c.get(f"/integrator/transactions?id={session_id}").text)["run"]
        if status and not status["running"]:
            break
        time.sleep(0.2)
    assert status == {"running": False, "returncode": 0}, (tmp_path, status)
    junit = c.get(f"/integrator/report?id={session_id}&file=junit.xml")
    assert junit.status == 200 and b"<testsuite" in junit.body and b'failures="0"' in junit.body
    html = c.get(f"/integrator/report?id={session_id}&file=report.html")
    assert html.status == 200 and b"<html" in html.body.lower()
    assert c.get(f"/integrator/report?id={session_id}&file=../status.json").status == 404
    assert c.get("/integrator/session?id=000000000000").status == 404

    c.get(opened.location)
    assert c.post("/integrator/close", {"id": session_id}).status == 303
    assert "closed" in c.get(opened.location).text
    assert signed_in(ch, "ada").get("/integrator").status == 403


def test_integrator_opens_a_phr_session_with_a_preloaded_study(ch):
    c = signed_in(ch, "ivan")
    c.get("/integrator")
    opened = c.post("/integrator/open", {"role": "phr", "participant": "phr", "minutes": "15"})
    assert opened.status == 303, opened.text
    page = c.get(opened.location).text
    assert "RSNA-ID" in page and re.search(r"A study of \d+ document\(s\) is waiting for test patient 1", page)
    session_id = opened.location.split("id=")[1]
    c.get(opened.location)
    assert c.post("/integrator/close", {"id": session_id}).status == 303
    bad = c.post("/integrator/open", {"role": "edge", "participant": "edge", "minutes": "7"})
    assert bad.status == 400 and "minutes" in bad.text
