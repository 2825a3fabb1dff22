"""The repository's SOAP endpoint (/xds/repository): ITI-41 (and RAD-68, the same message carrying
an imaging manifest), ITI-43, RAD-69 Retrieve Imaging Document Set, and its ITI-42 client."""

from __future__ import annotations

import copy
import logging

from lxml import etree
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.config import Settings
from clearinghouse.errors import XdsError, XDSRegistryNotAvailable
from clearinghouse.registry_response import error_response
from clearinghouse.soap.client import SoapClient, SoapClientError
from clearinghouse.soap.endpoint import Operation, SoapEndpoint, SoapRequest, SoapResult
from clearinghouse.xmlsafe import NS, qname
from repository.imaging import XDSI, retrieve_imaging_document_set
from repository.provide import provide_and_register
from repository.remove import ITI86_ACTION, REQUEST_TAG, remove_documents
from repository.retrieve import retrieve_document_set
from repository.store_sealed import SealedStore

log = logging.getLogger("repository")

ITI41_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI43_ACTION = "urn:ihe:iti:2007:RetrieveDocumentSet"
ITI42_ACTION = "urn:ihe:iti:2007:RegisterDocumentSet-b"
RAD69_ACTION = "urn:ihe:rad:2009:RetrieveImagingDocumentSet"


class RegistryClient:
    """ITI-42 to the registry, over whatever transport the SoapClient was given."""

    def __init__(self, client: SoapClient) -> None:
        self.client = client

    def register(self, submit_objects_request: etree._Element) -> etree._Element:
        try:
            reply = self.client.call(ITI42_ACTION, copy.deepcopy(submit_objects_request))
        except (SoapClientError, OSError) as exc:
            log.error("ITI-42 to the registry failed: %s", exc)
            raise XDSRegistryNotAvailable(f"the registry could not be reached or refused the message: {exc}") from exc
        reply.close()
        if reply.body.tag != qname("rs", "RegistryResponse"):
            raise XDSRegistryNotAvailable(f"the registry answered ITI-42 with {reply.body.tag}")
        return reply.body


def repository_endpoint(
    settings: Settings, sessions: sessionmaker[Session], store: SealedStore, registry: RegistryClient
) -> SoapEndpoint:
    def provide(req: SoapRequest) -> SoapResult:
        try:
            body = provide_and_register(
                req.body,
                req.mtom,
                settings=settings,
                sessions=sessions,
                store=store,
                register=registry.register,
                submitter=req.peer.participant,
            )
        except XdsError as exc:
            log.info("ITI-41 from %s refused: %s", req.peer.participant, "; ".join(i.context for i in exc.items))
            body = error_response(qname("rs", "RegistryResponse"), exc)
        else:
            log.info("ITI-41 from %s: %s", req.peer.participant, body.get("status"))
        return SoapResult(body)

    def retrieve(req: SoapRequest) -> SoapResult:
        result = retrieve_document_set(
            req.body,
            repository_unique_id=settings.repository_unique_id,
            home_community_id=settings.home_community_id,
            sessions=sessions,
            store=store,
        )
        log.info("ITI-43 by %s: %d document(s)", req.peer.participant, len(result.attachments))
        return SoapResult(result.body, result.attachments, force_mtom=True)

    def retrieve_imaging(req: SoapRequest) -> SoapResult:
        result = retrieve_imaging_document_set(
            req.body,
            repository_unique_id=settings.repository_unique_id,
            sessions=sessions,
            store=store,
            spool_dir=settings.spool_dir,
        )
        log.info("RAD-69 by %s: %d instance(s)", req.peer.participant, len(result.attachments))
        return SoapResult(result.body, list(result.attachments), force_mtom=True)

    def remove(req: SoapRequest) -> SoapResult:
        body = remove_documents(
            req.body, repository_unique_id=settings.repository_unique_id, sessions=sessions, store=store
        )
        log.info("ITI-86 by %s: %s", req.peer.participant, body.get("status"))
        return SoapResult(body)

    return SoapEndpoint(
        "DocumentRepository",
        NS["xdsb"],
        [
            Operation(
                name="DocumentRepository_ProvideAndRegisterDocumentSet-b",
                transaction="ITI-41",
                action=ITI41_ACTION,
                response_action=ITI41_ACTION + "Response",
                body_tag=qname("xdsb", "ProvideAndRegisterDocumentSetRequest"),
                response_tag=qname("rs", "RegistryResponse"),
                role="source",
                handler=provide,
                mtom=True,
            ),
            Operation(
                name="DocumentRepository_RetrieveDocumentSet",
                transaction="ITI-43",
                action=ITI43_ACTION,
                response_action=ITI43_ACTION + "Response",
                body_tag=qname("xdsb", "RetrieveDocumentSetRequest"),
                response_tag=qname("xdsb", "RetrieveDocumentSetResponse"),
                role="consumer",
                handler=retrieve,
                mtom=True,
            ),
            Operation(
                name="ImagingDocumentSource_RetrieveImagingDocumentSet",
                transaction="RAD-69",
                action=RAD69_ACTION,
                response_action=RAD69_ACTION + "Response",
                body_tag=f"{{{XDSI}}}RetrieveImagingDocumentSetRequest",
                response_tag=qname("xdsb", "RetrieveDocumentSetResponse"),
                role="consumer",
                handler=retrieve_imaging,
                mtom=True,
            ),
            # RMD Document Administrator -> Document Repository (ITI TF-2b 3.86).
            Operation(
                name="DocumentRepository_RemoveDocuments",
                transaction="ITI-86",
                action=ITI86_ACTION,
                response_action=ITI86_ACTION + "Response",
                body_tag=REQUEST_TAG,
                response_tag=qname("rs", "RegistryResponse"),
                role="admin",
                handler=remove,
            ),
        ],
        settings,
    )
