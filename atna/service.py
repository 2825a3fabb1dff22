"""The Audit Record Repository as the composition wires it: the repository and its two syslog
receivers, the ITI-81 endpoint, and this node's own auditing (the sink every actor's events go to,
and the hooks on the transports that produce them)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from atna.api import AuditEventApi
from atna.outbox import OutboxSink
from atna.receivers import SyslogTlsServer, SyslogUdpServer
from atna.repository import AuditRecordRepository
from clearinghouse import audit
from clearinghouse.audit import AuditNode, LocalRepositorySink, SyslogTlsConnection, parse_repository_url
from clearinghouse.audit_events import Auditor
from clearinghouse.config import Settings
from clearinghouse.mllp import MllpServer
from clearinghouse.soap.client import SoapClient
from clearinghouse.soap.endpoint import SoapEndpoint
from clearinghouse.tls import ServerTLS, client_context

log = logging.getLogger("atna")


@dataclass
class AuditService:
    settings: Settings
    repository: AuditRecordRepository
    syslog_tls: SyslogTlsServer
    syslog_udp: SyslogUdpServer
    sink: LocalRepositorySink | OutboxSink
    auditor: Auditor
    api: AuditEventApi

    def start(self) -> None:
        self.repository.start()
        self.syslog_tls.start()
        self.syslog_udp.start()
        self.auditor.emit(audit.application_activity(node=self.auditor.node, start=True))

    def endpoints(self, host: str, https_port: int) -> dict[str, str]:
        return {
            "ITI-20 audit record repository (syslog/TLS)": f"syslog+tls://{host}:{self.syslog_tls.port}",
            "ITI-20 audit record repository (syslog/UDP)": f"syslog+udp://{host}:{self.syslog_udp.port}",
            "ITI-81 audit event search (FHIR R4)": f"https://{host}:{https_port}/fhir/AuditEvent",
        }

    def stop(self) -> None:
        self.auditor.emit(audit.application_activity(node=self.auditor.node, start=False))
        self.sink.close(timeout=10)
        self.syslog_tls.stop()
        self.syslog_udp.stop()
        self.repository.stop()

    def attach(
        self,
        *,
        tls: ServerTLS,
        endpoints: list[SoapEndpoint],
        clients: dict[str, SoapClient],
        listeners: list[MllpServer],
        feed_handlers: list[Any] = (),  # type: ignore[assignment]
    ) -> None:
        """Hook this node's auditing into its transports: refused handshakes, SOAP operations (server
        side), SOAP calls it makes (client side, by target URL), HL7 listeners and their refusals."""
        tls.audit_hook = self.auditor.tls_refused
        for endpoint in endpoints:
            endpoint.audit_hook = self.auditor.soap_operation
            endpoint.refusal_hook = self.auditor.soap_refused
        for url, client in clients.items():
            client.audit_hook = functools.partial(self.auditor.soap_call, url)
        for listener in listeners:
            listener.audit_hook = self.auditor.hl7_message
            listener.refusal_hook = self.auditor.hl7_frame_refused
        for handler in feed_handlers:
            handler.audit_refused = self.auditor.hl7_refused


def build_audit_service(settings: Settings, engine: Engine, tls: ServerTLS) -> AuditService:
    node = AuditNode(settings.audit_source_id, settings.audit_site_id)
    repository = AuditRecordRepository(engine, settings.audit_spool_dir, max_xml_depth=settings.max_xml_depth)
    sink: LocalRepositorySink | OutboxSink
    if settings.audit_repository_url:
        host, port = parse_repository_url(settings.audit_repository_url)
        ctx = client_context(
            settings.audit_repository_ca or settings.ca_cert_path,
            settings.client_cert or None,
            settings.client_key or None,
        )
        # Spool first, then send: an event is on disk before the transaction's response (docs/atna.md).
        outbox = settings.audit_spool_dir / "outbox"  # one per process, like the spool itself
        sink = OutboxSink(outbox, SyslogTlsConnection(host, port, ctx), node)
    else:
        sink = LocalRepositorySink(repository.accept_local, node)
    auditor = Auditor(sink, node)
    limit = settings.max_syslog_message_bytes
    return AuditService(
        settings,
        repository,
        SyslogTlsServer(settings.bind, settings.syslog_tls_port, tls, repository, max_message_bytes=limit),
        SyslogUdpServer(settings.bind, settings.syslog_udp_port, repository, max_message_bytes=limit),
        sink,
        auditor,
        AuditEventApi(engine, auditor),
    )
