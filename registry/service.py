"""The registry's SOAP endpoint (/xds/registry): ITI-42 Register Document Set-b and ITI-18 Registry Stored Query."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.config import Settings
from clearinghouse.errors import XdsError
from clearinghouse.registry_response import error_response, success_response
from clearinghouse.soap.endpoint import Operation, SoapEndpoint, SoapRequest, SoapResult
from clearinghouse.xmlsafe import NS, qname
from registry.api import register_document_set, stored_query

log = logging.getLogger("registry")

ITI42_ACTION = "urn:ihe:iti:2007:RegisterDocumentSet-b"
ITI18_ACTION = "urn:ihe:iti:2007:RegistryStoredQuery"


def registry_endpoint(settings: Settings, sessions: sessionmaker[Session]) -> SoapEndpoint:
    def register(req: SoapRequest) -> SoapResult:
        try:
            register_document_set(sessions, settings, req.body)
        except XdsError as exc:
            log.info("ITI-42 from %s refused: %s", req.peer.participant, "; ".join(i.code for i in exc.items))
            return SoapResult(error_response(qname("rs", "RegistryResponse"), exc))
        log.info("ITI-42 from %s registered", req.peer.participant)
        return SoapResult(success_response())

    def query(req: SoapRequest) -> SoapResult:
        try:
            body = stored_query(sessions, settings, req.body)
        except XdsError as exc:
            log.info("ITI-18 by %s refused: %s", req.peer.participant, "; ".join(i.code for i in exc.items))
            return SoapResult(error_response(qname("query", "AdhocQueryResponse"), exc))
        return SoapResult(body)

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
        ],
        settings,
    )
