"""The PIX Manager as the composition wires it: the manager, its MLLP/TLS listener (ITI-8/9), the
/pix/v3 SOAP endpoint (ITI-44/45), the PIXm application (ITI-83) and the link it feeds the registry
through (the registry's own ITI-8 handler in this process, or a remote registry's feed port)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from clearinghouse import audit
from clearinghouse.config import Settings
from clearinghouse.mllp import MllpServer, ServerTLSLike
from clearinghouse.peer import Peer
from clearinghouse.soap.endpoint import SoapEndpoint
from clearinghouse.tls import client_context
from pix_manager.auditing import PixAuditor
from pix_manager.fhir import PATH as PIXM_PATH
from pix_manager.fhir import PixmApp
from pix_manager.fhir_feed import METADATA_PATH, PATIENT_PATH, PatientFeedApp
from pix_manager.manager import PixManager
from pix_manager.notify import ITI10, BatchHandler, InProcessLink, Link, MllpLink
from pix_manager.v2 import PixV2Handler
from pix_manager.v3 import PixV3Service

V3_PATH = "/pix/v3"
# The PIX Manager feeding the in-process registry: this server itself, so trusted as a source
# without a certificate (a remote registry sees the configured client certificate instead).
INTERNAL_PIX_MANAGER = Peer(
    subject="CN=clearinghouse-internal-pix-manager",
    fingerprint="",
    participant="clearinghouse:pix-manager",
    roles=frozenset({"source"}),
)


@dataclass
class PixService:
    manager: PixManager
    handler: PixV2Handler
    server: MllpServer
    v3: SoapEndpoint
    pixm: PixmApp
    routes: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def start(self) -> None:
        self.manager.start()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.manager.stop()

    def endpoints(self, host: str, https_port: int) -> dict[str, str]:
        return {
            "ITI-8/ITI-9 PIX Manager (MLLP/TLS)": f"mllp+tls://{host}:{self.server.port}",
            "ITI-44/ITI-45 PIXv3 (SOAP)": f"https://{host}:{https_port}{V3_PATH}",
            "ITI-83 PIXm (FHIR)": f"https://{host}:{https_port}{PIXM_PATH}",
            "ITI-104 PIXm feed (FHIR)": f"https://{host}:{https_port}{PATIENT_PATH}",
        }


def registry_link(
    settings: Settings, local_feed: Callable[[Peer, bytes], bytes], local_batch: BatchHandler | None = None
) -> Link:
    if settings.pix_registry_feed_url:
        ctx = client_context(
            settings.registry_ca or settings.ca_cert_path,
            settings.client_cert or settings.server_cert_path,
            settings.client_key or settings.server_key_path,
        )
        return MllpLink(settings.pix_registry_feed_url, ctx)
    return InProcessLink(local_feed, INTERNAL_PIX_MANAGER, local_batch)


def build_pix_service(
    settings: Settings,
    engine: Engine,
    tls: ServerTLSLike,
    local_registry_feed: Callable[[Peer, bytes], bytes],
    *,
    audit_sink: audit.AuditSink | None = None,
    audit_node: audit.AuditNode | None = None,
    local_registry_batch: BatchHandler | None = None,
) -> PixService:
    auditor = PixAuditor(audit_sink, audit_node or audit.AuditNode()) if audit_sink is not None else None

    def delivered(destination: str, transaction: str, message: bytes, outcome: str, error: str) -> None:
        if auditor is not None and transaction == ITI10:
            ok = outcome == "delivered"
            auditor.notification(
                consumer=destination,
                url=destination,
                message=message,
                outcome=audit.SUCCESS if ok else audit.SERIOUS_FAILURE,
                description=error,
            )

    manager = PixManager(
        engine, settings, registry_link(settings, local_registry_feed, local_registry_batch), on_delivery=delivered
    )
    handler = PixV2Handler(manager)
    server = MllpServer(
        settings.bind,
        settings.pix_port,
        tls,
        handler.handle,
        max_message_bytes=settings.max_hl7_message_bytes,
        name="pix",
    )
    v3 = PixV3Service(manager, settings, auditor).endpoint()
    pixm = PixmApp(manager, auditor)
    feed = PatientFeedApp(manager, auditor)
    routes = {V3_PATH: v3, PIXM_PATH: pixm, PATIENT_PATH: feed, PATIENT_PATH + "/": feed, METADATA_PATH: feed}
    return PixService(manager, handler, server, v3, pixm, routes)
