"""Running the conformance suite for a session from the console: ``conformance run --role ROLE
--session ID`` as a child process (the same command line an integrator would type), one at a time per
session, its JUnit XML and HTML report kept under ``HOME/conformance/runs/SESSION/``."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from clearinghouse.config import Settings
from conformance.run import pytest_command

log = logging.getLogger("console.suite")

REPORTS = {"junit.xml": "application/xml", "report.html": "text/html; charset=utf-8"}
_SESSION_ID = re.compile(r"[0-9a-f]{6,64}")


@dataclass(frozen=True)
class RunStatus:
    started_at: str
    finished_at: str
    returncode: int | None
    started_by: str

    @property
    def running(self) -> bool:
        return not self.finished_at

    @property
    def passed(self) -> bool:
        return self.returncode == 0


def database_url(settings: Settings, engine: Engine) -> str:
    """The URL a child process reaches this database with: the configured one, on PostgreSQL with the
    engine's schema when it is not the default (test instances run in schemas of their own)."""
    if engine.dialect.name != "postgresql":
        return settings.database_url
    with engine.connect() as conn:
        schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
    url = settings.database_url or engine.url.render_as_string(hide_password=False)
    if schema in ("public", None) or "search_path" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


class SuiteRunner:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen[bytes]] = {}

    def folder(self, session_id: str) -> Path:
        if not _SESSION_ID.fullmatch(session_id):
            raise ValueError(f"{session_id!r} is not a session id")
        return self.settings.home / "conformance" / "runs" / session_id

    def status(self, session_id: str) -> RunStatus | None:
        path = self.folder(session_id) / "status.json"
        if not path.exists():
            return None
        return RunStatus(**json.loads(path.read_text()))

    def report(self, session_id: str, name: str) -> Path | None:
        path = self.folder(session_id) / name
        return path if name in REPORTS and path.is_file() else None

    def start(self, session_id: str, role: str, user: str, *, wait_seconds: float) -> RunStatus:
        """Start the suite for the session unless a run of it is under way; returns its status."""
        out = self.folder(session_id)
        with self._lock:
            if session_id in self._running:
                current = self.status(session_id)
                assert current is not None
                return current
            out.mkdir(parents=True, exist_ok=True)
            options = [
                f"--conformance-session={session_id}",
                f"--conformance-timeout={wait_seconds:g}",
                f"--ch-home={self.settings.home.resolve()}",
            ]
            url = database_url(self.settings, self.engine)
            if url:
                options.append(f"--ch-database-url={url}")
            for stale in REPORTS:
                (out / stale).unlink(missing_ok=True)
            status = RunStatus(_now(), "", None, user)
            self._write(out, status)
            with open(out / "output.txt", "wb") as log_file:
                process = subprocess.Popen(
                    pytest_command(role, out, options), stdout=log_file, stderr=subprocess.STDOUT, cwd=out
                )
            self._running[session_id] = process
        threading.Thread(target=self._wait, args=(session_id, process, status), daemon=True).start()
        return status

    def _wait(self, session_id: str, process: subprocess.Popen[bytes], status: RunStatus) -> None:
        code = process.wait()
        with self._lock:
            self._write(self.folder(session_id), RunStatus(status.started_at, _now(), code, status.started_by))
            self._running.pop(session_id, None)
        log.info("conformance suite for session %s finished with exit code %d", session_id, code)

    def stop_all(self) -> None:
        with self._lock:
            for process in self._running.values():
                process.terminate()

    @staticmethod
    def _write(out: Path, status: RunStatus) -> None:
        tmp = out / "status.json.tmp"
        tmp.write_text(json.dumps(status.__dict__))
        tmp.replace(out / "status.json")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
