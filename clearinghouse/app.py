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

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from atna.api import PATH as AUDIT_EVENT_PATH
from atna.service import AuditService, build_audit_service
from clearinghouse import db, pki
from clearinghouse.config import Settings
from clearinghouse.https import HttpsServer
from clearinghouse.metrics import PATH as METRICS_PATH
from clearinghouse.metrics import Metrics, spool_backlog_bytes
from clearinghouse.mllp import MllpServer
from clearinghouse.peer import INTERNAL_REPOSITORY, INTERNAL_RETENTION
from clearinghouse.retention import ITI18_ACTION, RemoteRegistryLookup, RetentionCoordinator, RetentionScheduler
from clearinghouse.soap.client import HttpsTransport, SoapClient, WsgiTransport
from clearinghouse.soap.endpoint import SoapEndpoint
from clearinghouse.tls import ServerTLS, TrustPolicy, client_context
from console.service import ConsoleService, build_console
from pix_manager.fhir import PATH as PIXM_PATH
from pix_manager.service import PixService, build_pix_service
from registry.feed import PatientIdentityFeed
from registry.service import registry_endpoint
from repository.service import RegistryClient, repository_endpoint
from repository.store_sealed import audit_alarm, build_sealed_store

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
    retention: RetentionScheduler | None = None
    console: ConsoleService | None = None
    metrics: Metrics | None = None

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
        if self.retention is not None:
            self.retention.start()
        if self.console is not None:
            self.console.app.services.update(https_port=self.https.port, feed_port=self.feed.port)
            self.console.start()
            self.endpoints.update(self.console.endpoints(host))

    def stop(self) -> None:
        if self.console is not None:
            self.console.stop()
        if self.retention is not None:
            self.retention.stop()
        self.https.stop()
        self.feed.stop()
        if self.pix is not None:
            self.pix.stop()
        if self.audit is not None:
            self.audit.stop()
        self.engine.dispose()


def build(settings: Settings, *, engine: Engine | None = None, upgrade: bool = True) -> Clearinghouse:
    prepare_home(settings)
    engine = engine or db.engine_for(settings)
    if upgrade:
        db.upgrade(engine)
    sessions = db.session_factory(engine)
    tls = ServerTLS(settings.server_cert_path, settings.server_key_path, settings.ca_cert_path, TrustPolicy(sessions))
    audit_service = build_audit_service(settings, engine, tls)
    store = build_sealed_store(settings, audit_alarm(audit_service.auditor.emit, audit_service.auditor.node))
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
    metrics = Metrics()  # and each request's id: the wrapper opens its request scope
    https = HttpsServer(
        settings.bind, settings.https_port, metrics.wsgi(app, METERED_ROUTES), tls, threads=settings.http_threads
    )
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
        settings,
        engine,
        tls,
        feed_handler.handle,
        audit_sink=audit_service.sink,
        audit_node=audit_service.auditor.node,
        local_registry_batch=feed_handler.handle_registrations,
    )
    app.routes.update(pix.routes)
    audit_service.attach(
        tls=tls,
        endpoints=[registry, repository],
        clients={settings.registry_url or "in-process:/xds/registry": registry_client},
        listeners=[feed, pix.server],
        feed_handlers=[feed_handler, pix.handler],
    )
    # The conformance recorder sits beside the Auditor: what a participant with an open session sends.
    from conformance.recorder import Recorder
    from conformance.recorder import attach as attach_recorder

    attach_recorder(
        Recorder(sessions),
        endpoints=[registry, repository],
        listeners=[feed, pix.server],
        syslog=audit_service.syslog_tls,
    )
    coordinator = retention_coordinator(
        settings, sessions, repository, audit_service.auditor.emit, audit_service.auditor.node, registry_client
    )
    scheduler = RetentionScheduler(coordinator, settings.retention_purge_interval_seconds)
    console = build_console(settings, engine, sessions, audit_service.auditor)
    instrument(
        metrics, app, engine, soap=[registry, repository, pix.v3], listeners=[feed, pix.server], audit=audit_service
    )
    return Clearinghouse(
        settings,
        engine,
        sessions,
        https,
        feed,
        audit=audit_service,
        pix=pix,
        retention=scheduler,
        console=console,
        metrics=metrics,
    )


# HTTPS routes that are not SOAP, metered per transaction by the WSGI wrapper (SOAP ones by their endpoints).
METERED_ROUTES = {AUDIT_EVENT_PATH: "ITI-81", PIXM_PATH: "ITI-83"}


def instrument(
    metrics: Metrics,
    app: Router,
    engine: Engine,
    *,
    soap: list[SoapEndpoint],
    listeners: list[MllpServer],
    audit: AuditService,
) -> None:
    """/metrics, the observers that count transactions, and the queue depths and totals read when scraped
    (docs/operations.md, "Monitoring"). Database-wide figures are the same from every process."""
    from pix_manager.models import PixOutbox
    from repository.models import StoredDocument

    app.routes[METRICS_PATH] = metrics.endpoint
    for endpoint in soap:
        endpoint.observers.append(metrics.soap_observer)
    for listener in listeners:
        listener.observers.append(metrics.hl7_observer)
    spool, repo = audit.repository.spool, audit.repository
    outbox, documents = PixOutbox.__table__, StoredDocument.__table__

    def outbox_depth() -> dict[tuple[str, ...], float]:
        with engine.connect() as conn:
            rows = conn.execute(
                select(outbox.c.transaction, outbox.c.status, func.count())
                .where(outbox.c.status.in_(("pending", "dead")))
                .group_by(outbox.c.transaction, outbox.c.status)
            ).all()
        depth = {(t, st): 0.0 for t in ("ITI-10", "ITI-8") for st in ("pending", "dead")}
        depth.update({(t, st): float(n) for t, st, n in rows})
        return depth

    def stored() -> dict[tuple[str, ...], float]:
        with engine.connect() as conn:
            count, size = conn.execute(select(func.count(), func.coalesce(func.sum(documents.c.size), 0))).one()
        return {("documents",): float(count), ("bytes",): float(size)}

    metrics.gauge("clearinghouse_stored", "Documents in the repository and their plaintext bytes", stored, ("unit",))
    metrics.gauge(
        "clearinghouse_pix_outbox_messages",
        "PIX Manager outbox: ITI-10 notifications and ITI-8 registry feeds waiting (pending) or dead letters",
        outbox_depth,
        ("transaction", "status"),
    )
    metrics.gauge(
        "clearinghouse_audit_spool_backlog_bytes",
        "ITI-20 records durable in this process's spool and not yet in the database (approximate)",
        lambda: spool_backlog_bytes(spool.durable_position(), repo.position, spool.segment_bytes),
    )
    metrics.gauge(
        "clearinghouse_audit_records_received",
        "ITI-20 records made durable",
        lambda: spool.appended_records,
        counter=True,
    )
    metrics.gauge(
        "clearinghouse_audit_records_stored", "ITI-20 records stored in the chain", lambda: repo.stored, counter=True
    )
    metrics.gauge(
        "clearinghouse_audit_sink_queue",
        "This node's audit messages queued for the repository",
        lambda: audit.sink.pending,
    )
    metrics.gauge(
        "clearinghouse_db_pool_connections_in_use",
        "Database connections checked out of this process's pool",
        lambda: getattr(engine.pool, "checkedout", lambda: 0)(),
    )


def retention_coordinator(
    settings: Settings,
    sessions: sessionmaker[Session],
    repository: Callable[..., Iterable[bytes]],
    emit: Callable[[Any], None],
    node: Any,
    registry_client: SoapClient | None = None,
) -> RetentionCoordinator:
    """The retention purge wired to this node's actors: the registry's purge (registry.api), the
    repository's listing, and ITI-86 to the repository endpoint as the internal Document Administrator.
    With a remote registry the sweep asks it by ITI-18 through ``registry_client`` (made here from the
    settings when not given, as for `clearinghouse purge`)."""
    from registry.api import purge_expired_submissions, registered_document_unique_ids
    from repository.remove import ITI86_ACTION, DocumentRequest, build_request, held_before

    iti86 = SoapClient(WsgiTransport(repository, INTERNAL_RETENTION), settings.spool_dir)

    def remove_documents(documents: list[tuple[str, str]]) -> Any:
        reply = iti86.call(ITI86_ACTION, build_request([DocumentRequest(r, u) for r, u in documents]))
        reply.close()
        return reply.body

    return RetentionCoordinator(
        settings,
        purge_registry=lambda now, limit, dry_run: purge_expired_submissions(
            sessions, settings, now=now, limit=limit, dry_run=dry_run
        ),
        # With a remote registry this node's registry tables are not the ones that name the documents.
        registered=(
            _remote_lookup(settings, registry_client, emit, node)
            if settings.registry_url
            else (lambda uids: registered_document_unique_ids(sessions, uids))
        ),
        held_before=lambda cutoff, after, limit: held_before(sessions, cutoff, after=after, limit=limit),
        remove_documents=remove_documents,
        emit=emit,
        node=node,
    )


def _remote_lookup(
    settings: Settings, client: SoapClient | None, emit: Callable[[Any], None], node: Any
) -> RemoteRegistryLookup:
    """The sweep's question to a remote registry: ITI-18 GetDocuments, with this node's client identity
    (which the registry must know with the consumer role besides source)."""
    if client is None:
        ca = settings.registry_ca or settings.ca_cert_path
        context = client_context(ca, settings.client_cert, settings.client_key)
        client = SoapClient(HttpsTransport(settings.registry_url, context), settings.spool_dir)

    def query(request: Any) -> Any:
        reply = client.call(ITI18_ACTION, request)
        reply.close()
        return reply.body

    return RemoteRegistryLookup(query, url=settings.registry_url, emit=emit, node=node)
