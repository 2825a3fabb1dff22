"""A small HTTPS client for the web console, as a browser uses it: server certificate checked against
the clearinghouse CA, no client certificate, cookies kept, the CSRF token taken from the last page."""

from __future__ import annotations

import http.client
import re
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from sqlalchemy import Engine

from atna import fhir, search
from clearinghouse.db import transaction
from console import accounts

PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []


@dataclass
class ConsoleClient:
    port: int
    ca: Path
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str = ""

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(self.ca))
        return ctx

    def request(self, method: str, path: str, form: dict[str, str | list[str]] | None = None) -> Reply:
        conn = http.client.HTTPSConnection("localhost", self.port, context=self._context(), timeout=30)
        headers = {}
        body = None
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body = urlencode(form, doseq=True).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.headers, resp.read())
        finally:
            conn.close()
        for raw in reply.cookies():
            name, _, rest = raw.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in raw:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        if reply.headers.get_content_type() == "text/html":
            found = CSRF.search(reply.text)
            if found:
                self.csrf = found.group(1)
        return reply

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str | list[str]] | None = None, *, csrf: bool = True) -> Reply:
        form = dict(form or {})
        if csrf:
            form.setdefault("csrf", self.csrf)
        return self.request("POST", path, form)

    def sign_in(self, name: str, password: str = PASSWORD) -> Reply:
        self.get("/login")
        return self.post("/login", {"username": name, "password": password})


def add_user(sessions, name: str, *roles: str, password: str = PASSWORD) -> None:  # noqa: ANN001
    with transaction(sessions) as session:
        accounts.add(session, name, list(roles), password)


def wait_for_audit(engine: Engine, params: list[tuple[str, str]], count: int = 1, timeout: float = 15.0) -> list[dict]:
    """The stored audit records matching the ITI-81 ``params``, once at least ``count`` have arrived."""
    deadline = time.monotonic() + timeout
    query = fhir.parse_search(params)
    rows: list[dict] = []
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            _, rows = search.run(conn, query)
        if len(rows) >= count:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"{len(rows)} audit record(s) for {params}, expected {count}")


def reference_edge(ch, *, audit_source: str = "EDGE-UNDER-TEST"):  # noqa: ANN001, ANN201
    """The reference edge (conformance.edge) with the test identity ``edge``, auditing its exports
    over TLS syslog as an edge under test must; close ``edge.audit`` when done."""
    from clearinghouse.audit import AuditNode, SyslogTlsSink
    from conformance.edge import EdgeSimulator

    context = ch.identities["edge"].context()
    sink = SyslogTlsSink("localhost", ch.ch.audit.syslog_tls.port, context, AuditNode(source_id=audit_source))
    return EdgeSimulator(
        ch.soap("edge", "/xds/repository"),
        f"mllp+tls://localhost:{ch.feed_port}",
        context,
        affinity_domain_oid=ch.settings.affinity_domain_oid,
        repository_unique_id=ch.settings.repository_unique_id,
        audit=sink,
        node=sink.node,
    )


def sample_study(tmp_path: Path, names: tuple[str, ...] = ("CT_small.dcm", "MR_small.dcm")):  # noqa: ANN201
    from pydicom.data import get_testdata_file

    from conformance.study import collect

    study_dir = tmp_path / "study"
    study_dir.mkdir(exist_ok=True)
    for name in names:
        (study_dir / name).write_bytes(Path(get_testdata_file(name)).read_bytes())
    (tmp_path / "report.txt").write_text("IMPRESSION: normal.\n")
    return collect([study_dir], tmp_path / "report.txt")
