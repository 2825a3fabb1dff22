"""The console's WSGI application: sign-in and sign-out, the session and CSRF checks every request
goes through, the role check of every page, and dispatch to the pages (console/pages/)."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import mimetypes
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse import audit
from clearinghouse.audit import Party
from clearinghouse.audit_events import Auditor
from clearinghouse.config import Settings
from clearinghouse.db import transaction
from console import accounts, signins
from console.web import HttpError, Request, Response, redirect

log = logging.getLogger("console")

_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
LOGIN_COOKIE = "__Host-console-login"  # the sign-in form's CSRF token (double submit), before any session
HOME_BY_ROLE = (("admin", "/dashboard"), ("auditor", "/dashboard"), ("integrator", "/integrator"))


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    roles: tuple[str, ...]
    handler: Callable[[Page], Response]
    title: str = ""  # shown in the navigation when set


@dataclass
class Page:
    """One request to a signed-in page: who asks, what, and how to answer."""

    console: Console
    request: Request
    user: signins.SignedIn

    @property
    def settings(self) -> Settings:
        return self.console.settings

    @property
    def party(self) -> Party:
        return self.console.party(self.user.account.name, self.request.remote_addr)

    def render(self, template: str, status: int = 200, **values: Any) -> Response:
        return Response(status, self.console.render(template, page=self, status=status, **values).encode())

    def emit(self, message: audit.AuditMessage) -> None:
        self.console.auditor.emit(message)


@dataclass
class Console:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    auditor: Auditor
    routes: list[Route] = field(default_factory=list)
    # What the composition knows once it runs: the ports the integrator pages preload studies through.
    services: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.templates = Environment(
            loader=PackageLoader("console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["when"] = _format_when
        self.templates.filters["bytes"] = format_bytes
        from console.pages import all_routes
        from console.suite_runs import SuiteRunner

        self.suites = SuiteRunner(self.settings, self.engine)
        self.routes = all_routes()
        self._by_key = {(r.method, r.path): r for r in self.routes}

    # --- helpers used by the pages ---

    def render(self, template: str, **values: Any) -> str:
        return self.templates.get_template(template).render(**values)

    def party(self, user: str, address: str) -> Party:
        return Party(f"console:{user}", address, user)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def nav(self, account: accounts.Account) -> list[Route]:
        return [r for r in self.routes if r.title and r.method == "GET" and account.has_any(r.roles)]

    # --- WSGI ---

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            request = Request.from_environ(environ)
            response = self._dispatch(request)
        except HttpError as exc:
            response = self._error(exc.status, exc.message)
        except Exception:  # noqa: BLE001 - a page that fails answers 500 and is logged, the server goes on
            log.exception("console page %s failed", environ.get("PATH_INFO"))
            response = self._error(500, "the page could not be shown; the error is in the server log")
        return response(start_response)

    def _error(self, status: int, message: str, user: signins.SignedIn | None = None) -> Response:
        body = self.render("error.html", status=status, message=message, page=None, user=user)
        return Response(status, body.encode())

    def _dispatch(self, request: Request) -> Response:
        if request.path.startswith("/static/"):
            return _static(request.path[len("/static/") :])
        if request.path == "/favicon.ico":
            return _static("favicon.svg")
        if request.path == "/login":
            return self._login(request)
        signed_in = self._signed_in(request)
        if request.path == "/logout" and request.method == "POST":
            return self._logout(request, signed_in)
        if signed_in is None:
            if request.method == "GET":
                query = request.environ.get("QUERY_STRING", "")
                target = request.path + (f"?{query}" if query else "")
                return redirect(f"/login?next={quote(target, safe='')}")
            raise HttpError(403, "not signed in (or the session has ended): sign in again")
        if request.path == "/":
            return redirect(_home(signed_in.account))
        route = self._by_key.get((request.method, request.path))
        if route is None:
            if any(p == request.path for _, p in self._by_key):
                raise HttpError(405, f"{request.method} is not used on {request.path}")
            raise HttpError(404, f"no page {request.path}")
        if not signed_in.account.has_any(route.roles):
            return self._refused(request, signed_in, route)
        if request.method == "POST" and not hmac.compare_digest(
            request.field("csrf").encode(), signed_in.csrf_token.encode()
        ):
            log.warning("console: CSRF token missing or wrong for %s from %s", request.path, request.remote_addr)
            return self._error(403, "the form is stale or did not come from this console: reload the page and retry")
        return route.handler(Page(self, request, signed_in))

    def _refused(self, request: Request, user: signins.SignedIn, route: Route) -> Response:
        reason = (
            f"console user {user.account.name!r} ({', '.join(sorted(user.account.roles))}) may not use "
            f"{request.path}: role {' or '.join(route.roles)} required"
        )
        log.warning("console refused: %s", reason)
        self.auditor.emit(
            audit.restricted_function(
                node=self.auditor.node,
                endpoint=request.host_url + request.path,
                peer=self.party(user.account.name, request.remote_addr),
                transaction="console",
                reason=reason,
            )
        )
        return self._error(403, f"this page needs the role {' or '.join(route.roles)}", user)

    # --- sessions ---

    def _signed_in(self, request: Request) -> signins.SignedIn | None:
        token = request.cookies.get(signins.COOKIE, "")
        if not token:
            return None
        with transaction(self.sessions) as session:
            return signins.lookup(
                session,
                token,
                idle_minutes=self.settings.console_session_minutes,
                max_hours=self.settings.console_session_max_hours,
                now=self.now(),
            )

    def _login(self, request: Request) -> Response:
        target = _safe_next(request.field("next") or request.arg("next"))
        if request.method == "GET":
            return self._login_form(target, "", token=request.cookies.get(LOGIN_COOKIE, ""))
        if request.method != "POST":
            raise HttpError(405, "use GET or POST")
        form_token, cookie_token = request.field("csrf"), request.cookies.get(LOGIN_COOKIE, "")
        if not form_token or not hmac.compare_digest(form_token.encode(), cookie_token.encode()):
            return self._login_form(target, "The sign-in form had expired. Please sign in again.", status=403)
        name, password = request.field("username").strip(), request.field("password")
        refused: accounts.SignInRefused | None = None
        # The refusal is caught inside the transaction so that the failure count it raised is committed.
        with transaction(self.sessions) as session:
            try:
                account = accounts.authenticate(
                    session,
                    name,
                    password,
                    attempts=self.settings.console_lockout_attempts,
                    lock_minutes=self.settings.console_lockout_minutes,
                    now=self.now(),
                )
            except accounts.SignInRefused as exc:
                refused = exc
            else:
                token, _ = signins.start(
                    session,
                    account,
                    request.remote_addr,
                    idle_minutes=self.settings.console_session_minutes,
                    max_hours=self.settings.console_session_max_hours,
                    now=self.now(),
                )
        if refused is not None:
            log.warning("console sign-in refused for %r from %s: %s", refused.user, request.remote_addr, refused.reason)
            self.audit_sign_in(refused.user[:64], request.remote_addr, audit.MINOR_FAILURE, refused.reason)
            return self._login_form(
                target,
                "Sign-in failed: unknown user, wrong password, or the account is locked or disabled.",
                status=403,
                username=name,
            )
        self.audit_sign_in(account.name, request.remote_addr, audit.SUCCESS, "console sign-in")
        response = redirect(target or _home(account))
        response.set_cookie(signins.COOKIE, token)
        response.clear_cookie(LOGIN_COOKIE)
        return response

    def _login_form(
        self, target: str, error: str, *, status: int = 200, username: str = "", token: str = ""
    ) -> Response:
        # The token a browser already holds is kept: a second tab (or the browser's own requests that
        # land here) must not invalidate the form shown in the first.
        if not _TOKEN.fullmatch(token):
            token = secrets.token_urlsafe(32)
        body = self.render("login.html", page=None, user=None, csrf=token, next=target, error=error, username=username)
        response = Response(status, body.encode())
        response.set_cookie(LOGIN_COOKIE, token)
        return response

    def _logout(self, request: Request, signed_in: signins.SignedIn | None) -> Response:
        response = redirect("/login")
        response.clear_cookie(signins.COOKIE)
        if signed_in is None:
            return response
        if not hmac.compare_digest(request.field("csrf").encode(), signed_in.csrf_token.encode()):
            return self._error(403, "the form is stale or did not come from this console: reload the page and retry")
        with transaction(self.sessions) as session:
            signins.end(session, signed_in.token_sha256)
        self.auditor.emit(
            audit.user_authentication(
                node=self.auditor.node,
                user=self.party(signed_in.account.name, request.remote_addr),
                login=False,
                description="console sign-out",
            )
        )
        return response

    def audit_sign_in(self, user: str, address: str, outcome: int, description: str) -> None:
        self.auditor.emit(
            audit.user_authentication(
                node=self.auditor.node,
                user=self.party(user or "-", address),
                login=True,
                outcome=outcome,
                description=description,
            )
        )


def _home(account: accounts.Account) -> str:
    return next((path for role, path in HOME_BY_ROLE if role in account.roles), "/account")


def _safe_next(target: str) -> str:
    """Only a path on this console (never another site: an open redirect helps phishing)."""
    parts = urlsplit(target)
    if not target.startswith("/") or target.startswith("//") or parts.scheme or parts.netloc or "\\" in target:
        return ""
    return target if not target.startswith(("/login", "/logout")) else ""


def _static(name: str) -> Response:
    if not name or "/" in name or name.startswith("."):
        raise HttpError(404, "no such file")
    try:
        data = resources.files("console").joinpath("static", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise HttpError(404, "no such file") from exc
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype == "application/javascript":
        ctype += "; charset=utf-8"
    response = Response(200, data, ctype, cache=True)
    response.headers.append(("Cache-Control", "max-age=3600"))
    return response


def _format_when(when: dt.datetime | None) -> str:
    if when is None:
        return "—"
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def format_bytes(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
