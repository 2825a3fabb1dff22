"""The registry's SOAP endpoint (/xds/registry): ITI-42 Register Document Set-b, ITI-18 Registry
Stored Query, ITI-57 Update Document Set and ITI-62 Delete Document Set."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.config import Settings
from clearinghouse.errors import XdsError
from clearinghouse.peer import INTERNAL_REPOSITORY
from clearinghouse.registry_response import error_response, success_response
from clearinghouse.soap.endpoint import Operation, SoapEndpoint, SoapRequest, SoapResult
from clearinghouse.xmlsafe import NS, qname
from registry.api import (
    Admission,
    delete_document_set,
    register_document_set,
    stored_query_xml,
    update_document_set,
)
from registry.queries import response_outline

log = logging.getLogger("registry")

ITI42_ACTION = "urn:ihe:iti:2007:RegisterDocumentSet-b"
ITI18_ACTION = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI57_ACTION = "urn:ihe:iti:2010:UpdateDocumentSet"
ITI62_ACTION = "urn:ihe:iti:2010:DeleteDocumentSet"


def registry_endpoint(settings: Settings, sessions: sessionmaker[Session]) -> SoapEndpoint:
    # One admission per endpoint: the registry's share of the database, not a global.
    admission = Admission(settings.registry_max_concurrent, settings.registry_busy_wait_ms / 1000)

    def register(req: SoapRequest) -> SoapResult:
        try:
            register_document_set(
                sessions,
                settings,
                req.body,
                submitter=req.peer.participant,
                # Only the in-process repository may say which edge it relays for.
                trusted_relay=req.peer == INTERNAL_REPOSITORY,
                admission=admission,
            )
        except XdsError as exc:
            log.info("ITI-42 from %s refused: %s", req.peer.participant, "; ".join(i.code for i in exc.items))
            return SoapResult(error_response(qname("rs", "RegistryResponse"), exc))
        log.info("ITI-42 from %s registered", req.peer.participant)
        return SoapResult(success_response())

    def query(req: SoapRequest) -> SoapResult:
        try:
            answer = stored_query_xml(sessions, settings, req.body, admission=admission)
        except XdsError as exc:
            log.info("ITI-18 by %s refused: %s", req.peer.participant, "; ".join(i.code for i in exc.items))
            return SoapResult(error_response(qname("query", "AdhocQueryResponse"), exc))
        # Sent as serialised (spliced from stored XML, never parsed); observers read the outline.
        return SoapResult(response_outline(), body_xml=answer)

    def update(req: SoapRequest) -> SoapResult:
        try:
            update_document_set(sessions, settings, req.body, participant=req.peer.participant, admission=admission)
        except XdsError as exc:
            log.info("ITI-57 from %s refused: %s", req.peer.participant, "; ".join(i.code for i in exc.items))
            return SoapResult(error_response(qname("rs", "RegistryResponse"), exc))
        log.info("ITI-57 from %s applied", req.peer.participant)
        return SoapResult(success_response())

    def delete(req: SoapRequest) -> SoapResult:
        try:
            delete_document_set(sessions, settings, req.body, participant=req.peer.participant, admission=admission)
        except XdsError as exc:
            log.info("ITI-62 from %s refused: %s", req.peer.participant, "; ".join(i.code for i in exc.items))
            return SoapResult(error_response(qname("rs", "RegistryResponse"), exc))
        log.info("ITI-62 from %s applied", req.peer.participant)
        return SoapResult(success_response())

    return SoapEndpoint(
        "DocumentRegistry",
        NS["xdsb"],
        [
            Operation(
                name="DocumentRegistry_RegisterDocumentSet-b",
                transaction="ITI-42",
                action=ITI42_ACTION,
                response_action=ITI42_ACTION + "Response",
                body_tag=qname("lcm", "SubmitObjectsRequest"),
                response_tag=qname("rs", "RegistryResponse"),
                role="source",
                handler=register,
            ),
            Operation(
                name="DocumentRegistry_RegistryStoredQuery",
                transaction="ITI-18",
                action=ITI18_ACTION,
                response_action=ITI18_ACTION + "Response",
                body_tag=qname("query", "AdhocQueryRequest"),
                response_tag=qname("query", "AdhocQueryResponse"),
                role="consumer",
                handler=query,
            ),
            Operation(
                name="DocumentRegistry_UpdateDocumentSet",
                transaction="ITI-57",
                action=ITI57_ACTION,
                response_action=ITI57_ACTION + "Response",
                body_tag=qname("lcm", "SubmitObjectsRequest"),
                response_tag=qname("rs", "RegistryResponse"),
                role="source",
                handler=update,
            ),
            Operation(
                name="DocumentRegistry_DeleteDocumentSet",
                transaction="ITI-62",
                action=ITI62_ACTION,
                response_action=ITI62_ACTION + "Response",
                body_tag=qname("lcm", "RemoveObjectsRequest"),
                response_tag=qname("rs", "RegistryResponse"),
                role="source",
                handler=delete,
            ),
        ],
        settings,
    )
