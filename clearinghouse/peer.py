"""The authenticated peer of a connection: who presented which certificate, and what it may do."""

from __future__ import annotations

from dataclasses import dataclass

ROLES = frozenset({"source", "consumer", "auditor", "admin", "monitor"})  # monitor: reads /metrics


@dataclass(frozen=True)
class Peer:
    subject: str
    fingerprint: str
    participant: str
    roles: frozenset[str]

    def has_role(self, role: str) -> bool:
        return role in self.roles


# The repository registering with the in-process registry: it is this server itself, so it is
# trusted as a source without a certificate (a remote registry sees the configured client certificate).
INTERNAL_REPOSITORY = Peer(
    subject="CN=clearinghouse-internal-repository",
    fingerprint="",
    participant="clearinghouse:repository",
    roles=frozenset({"source"}),
)

# The retention purge acting as Document Administrator towards the in-process repository (ITI-86):
# this server itself, so trusted with the admin role without a certificate.
INTERNAL_RETENTION = Peer(
    subject="CN=clearinghouse-internal-retention",
    fingerprint="",
    participant="clearinghouse:retention",
    roles=frozenset({"admin"}),
)
