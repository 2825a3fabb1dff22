"""The little WSGI toolkit the console needs: a parsed request, a response with the security headers
every page carries, cookies. Standard library only (see docs/decisions.md, "Console: plain WSGI")."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote

MAX_FORM_BYTES = 256 * 1024

# Pages and their assets come from this server only; nothing inline runs (charts are SVG markup,
# not scripts), no page may be framed, and forms post only here.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("Strict-Transport-Security", "max-age=31536000"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
]

STATUS_TEXT = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    environ: dict[str, Any]
    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    cookies: dict[str, str]
    remote_addr: str

    @classmethod
    def from_environ(cls, environ: dict[str, Any]) -> Request:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        form: dict[str, list[str]] = {}
        if method == "POST":
            form = _read_form(environ)
        cookies: dict[str, str] = {}
        raw_cookie = environ.get("HTTP_COOKIE", "")
        if raw_cookie:
            try:
                parsed = SimpleCookie(raw_cookie)
                cookies = {k: m.value for k, m in parsed.items()}
            except CookieError:
                cookies = {}
        return cls(
            environ,
            method,
            environ.get("PATH_INFO", "") or "/",
            query,
            form,
            cookies,
            environ.get("REMOTE_ADDR", ""),
        )

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0].strip() if values else default

    def field(self, name: str, default: str = "") -> str:
        values = self.form.get(name)
        return values[0] if values else default

    def fields(self, name: str) -> list[str]:
        return self.form.get(name, [])

    @property
    def host_url(self) -> str:
        host = self.environ.get("HTTP_HOST") or f"{self.environ.get('SERVER_NAME', 'localhost')}"
        return f"https://{host}"


def _read_form(environ: dict[str, Any]) -> dict[str, list[str]]:
    ctype = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError as exc:
        raise HttpError(400, "invalid Content-Length") from exc
    if length > MAX_FORM_BYTES:
        raise HttpError(413, f"a form may carry at most {MAX_FORM_BYTES // 1024} KiB")
    if ctype != "application/x-www-form-urlencoded":
        raise HttpError(415, "forms are sent as application/x-www-form-urlencoded")
    body = environ["wsgi.input"].read(length) if length else b""
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise HttpError(400, "the form is not UTF-8") from exc


@dataclass
class Response:
    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    cache: bool = False

    def set_cookie(self, name: str, value: str, *, max_age: int | None = None) -> None:
        # __Host- cookies must be Secure, Path=/ and carry no Domain; the browser enforces it.
        parts = [f"{name}={value}", "Path=/", "Secure", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        self.headers.append(("Set-Cookie", "; ".join(parts)))

    def clear_cookie(self, name: str) -> None:
        self.set_cookie(name, "", max_age=0)

    def __call__(self, start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers = [("Content-Type", self.content_type), *SECURITY_HEADERS, *self.headers]
        if not self.cache:
            headers.append(("Cache-Control", "no-store"))
        body = self.body
        if isinstance(body, bytes):
            headers.append(("Content-Length", str(len(body))))
            body = [body]
        start_response(f"{self.status} {STATUS_TEXT.get(self.status, '')}".strip(), headers)
        return body


def redirect(location: str) -> Response:
    return Response(303, b"", "text/plain", [("Location", location)])


def json_response(doc: Any) -> Response:
    return Response(200, json.dumps(doc, separators=(",", ":")).encode(), "application/json")


def download(body: bytes | Iterable[bytes], filename: str, content_type: str) -> Response:
    return Response(
        200, body, content_type, [("Content-Disposition", f"attachment; filename*=UTF-8''{quote(filename)}")]
    )
