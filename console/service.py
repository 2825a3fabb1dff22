"""The console as the composition wires it: the WSGI application on its own HTTPS listener (the core's
cheroot server), with the server certificate and no client certificate (people use browsers)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.audit_events import Auditor
from clearinghouse.config import Settings
from clearinghouse.https import HttpsServer
from clearinghouse.tls import BrowserTLS
from console.app import Console

CONSOLE_THREADS = 8


@dataclass
class ConsoleService:
    app: Console
    server: HttpsServer

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.app.suites.stop_all()

    @property
    def port(self) -> int:
        return self.server.port

    def endpoints(self, host: str) -> dict[str, str]:
        return {"web console (browsers; sign in with a console account)": f"https://{host}:{self.port}/"}


def build_console(
    settings: Settings, engine: Engine, sessions: sessionmaker[Session], auditor: Auditor
) -> ConsoleService | None:
    """The console, or None when ``console_port`` is negative (not served)."""
    if settings.console_port < 0:
        return None
    app = Console(settings, engine, sessions, auditor)
    tls = BrowserTLS(settings.server_cert_path, settings.server_key_path)
    server = HttpsServer(settings.bind, settings.console_port, app, tls, threads=CONSOLE_THREADS)
    return ConsoleService(app, server)
