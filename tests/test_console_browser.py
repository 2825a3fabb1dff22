"""The web console in a real browser: Debian's headless Chromium driven by Playwright signs in,
watches a submission made by the reference edge appear, and searches the audit log.

Needs /usr/bin/chromium (``.ci/run`` installs it) and the ``playwright`` package; without them these
tests skip and say why. With CONSOLE_SCREENSHOTS=1 they refresh docs/screenshots/*.png."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import running_instance
from console_client import PASSWORD, add_user, reference_edge, sample_study, wait_for_audit
from pix_samples import PixConsumer, adt, cx, msa, new_oid, uid

from pix_manager import admin as pix_admin

CHROMIUM = Path("/usr/bin/chromium")
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
)
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does it)"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@pytest.fixture(scope="module")
def ch(backend, tmp_path_factory):
    with running_instance(tmp_path_factory.mktemp(f"console-browser-{backend}"), backend) as running:
        add_user(running.ch.sessions, "ada", "admin")
        add_user(running.ch.sessions, "audrey", "auditor")
        add_user(running.ch.sessions, "ivan", "integrator")
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    profile = tempfile.mkdtemp(prefix="console-chromium-")
    with playwright_api.sync_playwright() as p:
        # A persistent context is how Playwright takes a fresh --user-data-dir of our own. The test
        # CA is not in Chromium's store, so certificate errors are ignored for this profile only.
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            ignore_https_errors=True,
            viewport={"width": 1280, "height": 860},
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser):  # noqa: ANN001
    browser.clear_cookies()
    pg = browser.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    pg.close()


def url(ch, path: str) -> str:
    return f"https://localhost:{ch.ch.console.port}{path}"


def shoot(ch, page, name: str) -> None:  # noqa: ANN001
    if os.environ.get("CONSOLE_SCREENSHOTS") and ch.ch.engine.dialect.name == "sqlite":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(ch, page, name: str) -> None:  # noqa: ANN001
    page.goto(url(ch, "/"))
    assert page.url.startswith(url(ch, "/login"))
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "/login" not in page.url, page.content()


def edge_submits(ch, tmp_path: Path):  # noqa: ANN201
    edge = reference_edge(ch)
    try:
        return edge.send(sample_study(tmp_path), dob="19800101", password="pw")
    finally:
        edge.audit.close(5)


def refuse_a_connection(ch) -> None:  # noqa: ANN001
    """A client without a certificate at the mutual-TLS port: refused, and audited as a security alert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ch.settings.ca_cert_path))
    with socket.create_connection(("localhost", ch.https_port)) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                tls.recv(16)
        except (ssl.SSLError, ConnectionError):
            pass
    ch.ch.audit.sink.flush()
    wait_for_audit(ch.ch.engine, [("subtype", "110126")])


def test_sign_in_page_and_a_refused_password(ch, page):
    page.goto(url(ch, "/admin/participants"))
    assert page.url.startswith(url(ch, "/login?next="))
    shoot(ch, page, "sign-in")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    assert "Sign-in failed" in page.inner_text(".error")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url(ch, "/admin/participants"))
    assert page.inner_text("h1") == "Participants"


def test_admin_sees_a_submission_by_the_reference_edge_appear(ch, page, tmp_path):
    sign_in(ch, page, "ada")
    page.goto(url(ch, "/admin/submissions"))
    before = page.inner_text("main")
    sub = edge_submits(ch, tmp_path)
    assert sub.reply_status.endswith("Success")
    assert sub.patient_id not in before
    page.reload()
    row = page.locator("tbody tr", has_text=sub.patient_id)
    assert row.count() == 1
    cells = row.locator("td").all_inner_texts()
    assert cells[5] == str(len(sub.unique_ids)) and "edge" in cells[3] and "in 29 days" in cells[7]
    shoot(ch, page, "submissions")

    refuse_a_connection(ch)
    page.goto(url(ch, "/dashboard"))
    assert page.locator("svg.chart").count() >= 4
    assert page.locator("svg.chart rect title", has_text="ITI-41").count() >= 1
    assert page.locator("svg.chart rect title", has_text="TLS handshake refused").count() >= 1
    shoot(ch, page, "dashboard")
    page.goto(url(ch, "/admin/participants"))
    assert page.locator("tbody tr", has_text="auditor").count() == 1
    shoot(ch, page, "participants")
    # A site links its MRN to the exam's RSNA-ID at the PIX Manager (ITI-8).
    site_oid, mrn = new_oid(), f"MRN{uid()}"
    with ch.ch.engine.begin() as conn:
        pix_admin.set_domain(conn, site_oid, "SITE-A", description="Site A medical record numbers")
    pix = ch.pix_client()
    try:
        assert msa(pix.send(adt("A04", f"{cx(mrn, site_oid)}~{cx(sub.rsna_id)}").encode())) == "AA"
    finally:
        pix.close()
    page.goto(url(ch, "/admin/pix"))
    page.fill("input[name=identifier]", mrn)
    page.click("main button[type=submit]")
    listed = page.inner_text("main table")
    assert mrn in listed and sub.rsna_id in listed and "SITE-A" in listed
    shoot(ch, page, "pix")
    # A subscriber that rejects what it is sent (AR): its notification is a dead letter at once.
    consumer = PixConsumer(ch.settings.pki_dir, lambda _m: "AR").start()
    try:
        with ch.ch.engine.begin() as conn:
            pix_admin.subscribe(conn, "ehr-site-a", consumer.url, ["SITE-A"])
        pix = ch.pix_client()
        try:
            assert msa(pix.send(adt("A04", cx(f"MRN{uid()}", site_oid)).encode())) == "AA"  # a new SITE-A patient
        finally:
            pix.close()
        page.goto(url(ch, "/admin/dead-letters"))
        for _ in range(100):
            if page.locator("tbody tr", has_text="ehr-site-a").count():
                break
            page.wait_for_timeout(100)
            page.reload()
        row = page.locator("tbody tr", has_text="ehr-site-a").first.inner_text()
        assert "ITI-10" in row and "AR: consumer says no" in row
        page.click("tbody details summary")
        assert "ADT^A31" in page.inner_text("tbody details pre")
        shoot(ch, page, "dead-letters")
        page.click("tbody tr:has-text('ehr-site-a') button:has-text('Replay')")
        assert "queued again" in page.inner_text(".ok")
    finally:
        with ch.ch.engine.begin() as conn:
            pix_admin.unsubscribe(conn, "ehr-site-a")
        consumer.stop()

    page.click("header button[type=submit]")  # sign out
    page.wait_for_url(url(ch, "/login"))
    page.goto(url(ch, "/admin/submissions"))
    assert page.url.startswith(url(ch, "/login"))


def test_auditor_searches_the_audit_log_and_follows_a_patient(ch, page, tmp_path):
    sub = edge_submits(ch, tmp_path)
    ch.ch.audit.sink.flush()
    wait_for_audit(ch.ch.engine, [("patient.identifier", sub.patient_id), ("subtype", "ITI-41")])
    sign_in(ch, page, "audrey")
    page.goto(url(ch, "/audit"))
    page.fill("input[name=subtype]", "ITI-41")
    page.fill("input[name='patient.identifier']", sub.patient_id)
    page.click("#audit-search button[type=submit]")
    page.wait_for_selector("#result-count")
    # The clearinghouse's Import and the edge's own Export (sent over TLS syslog).
    assert page.inner_text("#result-count").startswith("2 record(s)")
    rows = page.locator("table.audit tbody tr").all_inner_texts()
    assert all("ITI-41" in r for r in rows) and {"Import", "Export"} == {r.split("\t")[2] for r in rows}
    shoot(ch, page, "audit-search")

    page.click(f"table.audit a:has-text('{sub.patient_id}')")
    page.wait_for_selector("#timeline-count")
    timeline = page.inner_text("ol.timeline")
    assert "ITI-8" in timeline and "ITI-41" in timeline and "ITI-42" in timeline
    shoot(ch, page, "audit-timeline")

    page.goto(url(ch, "/audit/verify"))
    page.click("main button[type=submit]")
    assert page.inner_text("#verify-result").startswith("Audit chain intact")
    shoot(ch, page, "audit-verify")

    page.goto(url(ch, "/admin/participants"))  # not an auditor's page
    assert "needs the role admin" in page.inner_text("main")


def test_integrator_opens_a_session_and_watches_the_edge_live(ch, page, tmp_path):
    sign_in(ch, page, "ivan")
    assert page.url == url(ch, "/integrator")
    page.select_option("select[name=role]", "edge")
    page.select_option("select[name=participant]", "edge")
    page.click("#open-session button[type=submit]")
    page.wait_for_selector("#test-data")
    sheet = page.inner_text("#test-data")
    code, dob, password = re.search(r"1\. access code (\S+)\s+date of birth (\d{8})\s+password (\S+)", sheet).groups()
    assert page.locator("#transactions tbody tr").count() == 0

    edge = reference_edge(ch)
    try:
        edge.send(sample_study(tmp_path), dob=dob, password=password, access_code=code)
        assert edge.audit.flush(15)
    finally:
        edge.audit.close(5)
    # No reload: the page's script adds each transaction as it is recorded.
    for transaction in ("ITI-8", "ITI-41", "ITI-20"):
        page.locator("#transactions tbody tr", has_text=transaction).first.wait_for()
    assert page.locator("#transactions .badge.outcome-failure").count() == 0
    shoot(ch, page, "integrator-session")

    page.fill("input[name=wait]", "5")
    page.click("form[action='/integrator/run'] button")
    for _ in range(120):
        if "Running since" not in page.inner_text("#run-state"):
            break
        page.wait_for_timeout(500)
        page.reload()
    assert "passed" in page.inner_text("#run-state"), page.inner_text("#run-state")
    with page.expect_download() as download:
        page.click("a:has-text('junit.xml')")
    assert b'failures="0"' in Path(download.value.path()).read_bytes()
    shoot(ch, page, "integrator-report")
    page.goto(url(ch, "/integrator"))
    shoot(ch, page, "integrator")
