"""Composition of the clearinghouse: the actors, their endpoints and listeners, wired by configuration.

This is the only place that knows every actor; actors talk to each other through the same
interfaces a remote peer would (the repository registers through ITI-42 messages).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from atna.api import PATH as AUDIT_EVENT_PATH
from atna.service import AuditService, build_audit_service
from clearinghouse import db, pki
from clearinghouse.config import Settings
from clearinghouse.https import HttpsServer
from clearinghouse.mllp import MllpServer
from clearinghouse.peer import INTERNAL_REPOSITORY
from clearinghouse.soap.client import HttpsTransport, SoapClient, WsgiTransport
from clearinghouse.tls import ServerTLS, TrustPolicy, client_context
from pix_manager.service import PixService, build_pix_service
from registry.feed import PatientIdentityFeed
from registry.service import registry_endpoint
from repository.service import RegistryClient, repository_endpoint
from repository.store import FilesystemStore

log = logging.getLogger("clearinghouse")


class Router:
    """Dispatches WSGI requests by path prefix; unknown paths get 404."""

    def __init__(self, routes: dict[str, Callable[..., Iterable[bytes]]]) -> None:
        self.routes = routes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        app = self.routes.get(path.rstrip("/") or "/")
        if app is None:
            # Routes ending in "/" also serve everything below them (e.g. /fhir/AuditEvent/{id}).
            app = next(
                (a for prefix, a in self.routes.items() if prefix.endswith("/") and path.startswith(prefix)), None
            )
        if app is None:
            body = b"not found; endpoints: " + ", ".join(sorted(self.routes)).encode() + b"\n"
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)


def prepare_home(settings: Settings) -> None:
    """Create the data directory and, unless production certificates are configured, the development PKI."""
    settings.home.mkdir(parents=True, exist_ok=True)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    # Spool files belong to requests in flight; old ones were left by a crash. Recent ones may
    # belong to another server process sharing this home, so they are left alone.
    cutoff = time.time() - 3600
    for stale in settings.spool_dir.iterdir():
        if stale.is_file() and stale.stat().st_mtime < cutoff:
            stale.unlink(missing_ok=True)
    if not settings.tls_cert:
        pki.ensure_development_pki(settings.pki_dir)


@dataclass
class Clearinghouse:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    https: HttpsServer
    feed: MllpServer
    endpoints: dict[str, str] = field(default_factory=dict)
    audit: AuditService | None = None
    pix: PixService | None = None

    def start(self) -> None:
        if self.audit is not None:
            self.audit.start()
        self.https.start()
        self.feed.start()
        host = self.settings.bind if ":" not in self.settings.bind else f"[{self.settings.bind}]"
        self.endpoints = {
            "ITI-41/ITI-43 repository": f"https://{host}:{self.https.port}/xds/repository",
            "ITI-42/ITI-18 registry": f"https://{host}:{self.https.port}/xds/registry",
            "ITI-8 patient identity feed (MLLP/TLS)": f"mllp+tls://{host}:{self.feed.port}",
        }
        if self.audit is not None:
            self.endpoints.update(self.audit.endpoints(host, self.https.port))
        if self.pix is not None:
            self.pix.start()
            self.endpoints.update(self.pix.endpoints(host, self.https.port))

    def stop(self) -> None:
        self.https.stop()
        self.feed.stop()
        if self.pix is not None:
            self.pix.stop()
        if self.audit is not None:
            self.audit.stop()
        self.engine.dispose()


def build(settings: Settings, *, engine: Engine | None = None, upgrade: bool = True) -> Clearinghouse:
    prepare_home(settings)
    engine = engine or db.make_engine(settings.effective_database_url)
    if upgrade:
        db.upgrade(engine)
    sessions = db.session_factory(engine)
    tls = ServerTLS(settings.server_cert_path, settings.server_key_path, settings.ca_cert_path, TrustPolicy(sessions))
    audit_service = build_audit_service(settings, engine, tls)
    store = FilesystemStore(settings.effective_store_path)
    registry = registry_endpoint(settings, sessions)
    if settings.registry_url:
        transport: Any = HttpsTransport(
            settings.registry_url,
            client_context(settings.registry_ca or settings.ca_cert_path, settings.client_cert, settings.client_key),
        )
    else:
        transport = WsgiTransport(registry, INTERNAL_REPOSITORY)
    registry_client = SoapClient(transport, settings.spool_dir)
    repository = repository_endpoint(settings, sessions, store, RegistryClient(registry_client))
    app = Router({"/xds/registry": registry, "/xds/repository": repository})
    app.routes[AUDIT_EVENT_PATH] = app.routes[AUDIT_EVENT_PATH + "/"] = audit_service.api
    https = HttpsServer(settings.bind, settings.https_port, app, tls, threads=settings.http_threads)
    feed_handler = PatientIdentityFeed(sessions, settings)
    feed = MllpServer(
        settings.bind,
        settings.feed_port,
        tls,
        feed_handler.handle,
        max_message_bytes=settings.max_hl7_message_bytes,
        name="feed",
    )
    # The PIX Manager feeds merges to the registry through the registry's ITI-8 handler (or a remote feed port).
    pix = build_pix_service(
        settings, engine, tls, feed_handler.handle, audit_sink=audit_service.sink, audit_node=audit_service.auditor.node
    )
    app.routes.update(pix.routes)
    audit_service.attach(
        tls=tls,
        endpoints=[registry, repository],
        clients={settings.registry_url or "in-process:/xds/registry": registry_client},
        listeners=[feed, pix.server],
        feed_handlers=[feed_handler, pix.handler],
    )
    return Clearinghouse(settings, engine, sessions, https, feed, audit=audit_service, pix=pix)
