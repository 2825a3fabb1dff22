"""Log output and the request id.

Every inbound transaction (an HTTP request, an HL7 message over MLLP, a syslog connection) runs in a
``request_scope``: a fresh request id held in a context variable, so that each log line written while
it is handled carries the id, and each audit message this node emits for it carries the same id
(``clearinghouse.audit.with_request_id``). Logs are text (the default) or one JSON object per line
(``log_format = json``) for log shippers.

The id lives in the thread that handles the request: work handed to another thread (the PIX writer,
the audit drainer) logs without it, which is why the audit record, not the log, is where an id ties a
transaction's events together.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
# LogRecord attributes that are not extra fields a caller passed.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "request_id"}


@dataclass(frozen=True)
class RequestScope:
    """One inbound transaction: its id, what carried it (http, mllp, syslog) and when it started."""

    kind: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


_current: ContextVar[RequestScope | None] = ContextVar("clearinghouse_request", default=None)


def current() -> RequestScope | None:
    """The scope of the transaction this thread is handling, if any."""
    return _current.get()


def current_request_id() -> str:
    scope = _current.get()
    return scope.request_id if scope is not None else ""


def begin(kind: str) -> RequestScope:
    """Enter a new scope in this thread (for callers that cannot use ``request_scope``, such as WSGI
    middleware whose response outlives the call); ``end`` leaves it."""
    scope = RequestScope(kind)
    _current.set(scope)
    return scope


def end() -> None:
    # Server threads are reused: the next request on this thread must not inherit the id.
    _current.set(None)


@contextmanager
def request_scope(kind: str) -> Iterator[RequestScope]:
    token = _current.set(RequestScope(kind))
    try:
        yield _current.get()  # type: ignore[misc]
    finally:
        _current.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` ("-" outside a transaction) to every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, thread,
    any ``extra`` fields, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None) or current_request_id() or "-"
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": "" if rid == "-" else rid,
            "thread": record.threadName,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str = "INFO", log_format: str = "text") -> logging.Handler:
    """Replace the root logger's handlers with one on standard error in ``log_format``."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
