"""The clearinghouse under test: where it listens and the identities the suite uses against it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from clearinghouse.soap.client import SoapClient, https_client
from clearinghouse.tls import client_context
from conformance.edge import EdgeSimulator
from conformance.faults import Fault
from conformance.phr import PhrSimulator


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Target:
    base_url: str  # https://host:port
    feed_url: str  # mllp+tls://host:port
    ca: Path
    source: Identity  # an edge's certificate, registered with role source
    consumer: Identity  # a PHR's certificate, registered with role consumer
    affinity_domain_oid: str
    repository_unique_id: str
    spool: Path

    def identity(self, role: str) -> Identity:
        return {"source": self.source, "consumer": self.consumer}[role]

    def soap(self, role: str, path: str) -> SoapClient:
        ident = self.identity(role)
        return https_client(self.base_url.rstrip("/") + path, self.ca, ident.cert, ident.key, self.spool)

    def edge(self, faults: Collection[Fault] = (), as_role: str = "source") -> EdgeSimulator:
        ident = self.identity(as_role)
        return EdgeSimulator(
            self.soap(as_role, "/xds/repository"),
            self.feed_url,
            client_context(self.ca, ident.cert, ident.key),
            affinity_domain_oid=self.affinity_domain_oid,
            repository_unique_id=self.repository_unique_id,
            faults=faults,
        )

    def phr(self, faults: Collection[Fault] = (), as_role: str = "consumer") -> PhrSimulator:
        return PhrSimulator(
            self.soap(as_role, "/xds/registry"),
            lambda _repository: self.soap(as_role, "/xds/repository"),
            affinity_domain_oid=self.affinity_domain_oid,
            faults=faults,
        )
