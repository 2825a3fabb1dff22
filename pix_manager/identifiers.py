"""Patient identifiers and the domains that assign them: the configuration snapshot and the pure rules
that turn an identifier as a peer sent it (HL7 v2 CX, HL7 v3 II, FHIR token) into a configured domain.

ITI TF-2a 3.8.4.1.2.3/3.9.4.1.2.2: an assigning authority is given by its namespace id, or by its
universal id and type (ISO), or by all three, which must then name the same domain. A feed without
one gets the domain its source is configured for (3.8.4.1.3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from clearinghouse import hl7
from clearinghouse.errors import (
    PixInvalidField,
    PixMissingField,
    PixNotDomainSource,
    PixUnknownDomain,
)
from pix_manager.models import MAX_ID_LENGTH


@dataclass(frozen=True)
class Domain:
    id: int
    oid: str
    namespace: str
    source: str | None  # participant name; None: any participant with the source role
    description: str = ""


@dataclass(frozen=True)
class Subscription:
    id: int
    name: str
    url: str
    domains: frozenset[str]  # OIDs of interest; empty: every domain
    ca_file: str = ""

    def wants(self, oid: str) -> bool:
        return not self.domains or oid in self.domains


@dataclass(frozen=True)
class PixConfig:
    """Domains and subscriptions as of one configuration version (immutable; replaced whole)."""

    version: int
    domains: tuple[Domain, ...]
    subscriptions: tuple[Subscription, ...] = ()
    by_id: dict[int, Domain] = field(init=False, repr=False, compare=False)
    by_oid: dict[str, Domain] = field(init=False, repr=False, compare=False)
    by_namespace: dict[str, Domain] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", {d.id: d for d in self.domains})
        object.__setattr__(self, "by_oid", {d.oid: d for d in self.domains})
        object.__setattr__(self, "by_namespace", {d.namespace: d for d in self.domains})


@dataclass(frozen=True)
class Authority:
    """An assigning authority as received (HL7 HD: namespace id, universal id, universal id type)."""

    namespace: str = ""
    universal_id: str = ""
    universal_id_type: str = ""

    def __bool__(self) -> bool:
        return bool(self.namespace or self.universal_id or self.universal_id_type)


@dataclass(frozen=True)
class RawIdentifier:
    """An identifier as a peer sent it, with where its value and its assigning authority were (ERR-2
    locations such as ``PID^1^3^2^1``, XPath expressions, or a query parameter name)."""

    value: str
    authority: Authority
    location: str
    authority_location: str = ""

    @property
    def where_authority(self) -> str:
        return self.authority_location or self.location


@dataclass(frozen=True, order=True)
class Identifier:
    """A resolved identifier: ``value`` in the domain with database id ``domain_id``."""

    domain_id: int
    value: str


def resolve_domain(
    config: PixConfig, authority: Authority, *, location: str, source_participant: str | None = None
) -> Domain:
    """The configured domain ``authority`` names. Without any authority, the one domain whose
    configured source is ``source_participant`` (feeds only; queries must name the domain)."""
    ns, uid = authority.namespace.strip(), authority.universal_id.strip()
    kind = authority.universal_id_type.strip().upper()
    if uid:
        if kind and kind != "ISO":
            raise PixUnknownDomain(
                f"assigning authority {uid!r} of type {kind!r}: only ISO OIDs identify domains here", location=location
            )
        domain = config.by_oid.get(uid)
        if domain is None:
            raise PixUnknownDomain(f"assigning authority {uid} is not a domain of this PIX Manager", location=location)
        if ns and ns != domain.namespace:
            raise PixUnknownDomain(
                f"namespace {ns!r} and universal id {uid!r} do not name the same domain "
                f"(domain {uid} is {domain.namespace!r})",
                location=location,
            )
        return domain
    if ns:
        domain = config.by_namespace.get(ns)
        if domain is None:
            raise PixUnknownDomain(f"assigning authority {ns!r} is not a domain of this PIX Manager", location=location)
        return domain
    if source_participant is not None:
        own = [d for d in config.domains if d.source == source_participant]
        if len(own) == 1:
            return own[0]
    raise PixMissingField("the assigning authority is missing", location=location)


def check_source(domain: Domain, participant: str, *, location: str) -> None:
    """Only the configured Patient Identity Source of a domain may feed its identifiers."""
    if domain.source is not None and domain.source != participant:
        raise PixNotDomainSource(
            f"participant {participant!r} is not the identity source of domain {domain.namespace} ({domain.oid})",
            location=location,
        )


def check_value(value: str, *, location: str) -> str:
    if not value.strip():
        raise PixMissingField("the identifier value is empty", location=location)
    if len(value) > MAX_ID_LENGTH:
        raise PixInvalidField(f"the identifier is longer than {MAX_ID_LENGTH} characters", location=location)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise PixInvalidField("the identifier contains control characters", location=location)
    return value


def resolve_all(
    config: PixConfig, raw: Iterable[RawIdentifier], *, source_participant: str | None, check_sources: bool
) -> list[Identifier]:
    """Resolve a source's identifier list; duplicates collapse, order is kept."""
    out: dict[Identifier, None] = {}
    for r in raw:
        value = check_value(r.value, location=r.location)
        domain = resolve_domain(config, r.authority, location=r.where_authority, source_participant=source_participant)
        if check_sources and source_participant is not None:
            check_source(domain, source_participant, location=r.where_authority)
        out[Identifier(domain.id, value)] = None
    return list(out)


def cx_repetitions(segment: hl7.Segment, field_no: int, location: str) -> list[RawIdentifier]:
    """The CX repetitions of a field (PID-3, MRG-1, QPD-3) as raw identifiers; ``location`` is the
    ERR-2 prefix ``SEG^n^field``, completed with the repetition and component (1: ID, 4: authority)."""
    out = []
    for rep in range(1, segment.repetition_count(field_no) + 1):
        authority = Authority(
            segment.get(field_no, 4, rep, 1), segment.get(field_no, 4, rep, 2), segment.get(field_no, 4, rep, 3)
        )
        value = segment.get(field_no, 1, rep)
        out.append(RawIdentifier(value, authority, f"{location}^{rep}^1", f"{location}^{rep}^4"))
    return out


def audit_cx(value: str, oid: str) -> str:
    """ID^^^&OID&ISO: how an identifier is named in audit records (ParticipantObjectID of a patient)."""
    return f"{value}^^^&{oid}&ISO"


def format_cx(domain: Domain, value: str, seps: hl7.Separators) -> str:
    """ID^^^namespace&OID&ISO with every subcomponent of the assigning authority (ITI-9/10 require all three)."""
    s = seps.subcomponent
    c = seps.component
    authority = s.join([hl7.escape(domain.namespace, seps), hl7.escape(domain.oid, seps), "ISO"])
    return c.join([hl7.escape(value, seps), "", "", authority])


def sort_for_output(config: PixConfig, identifiers: Iterable[Identifier]) -> list[Identifier]:
    """Grouped by domain (ITI-9 case 6: identifiers of one domain in successive repetitions)."""
    return sorted(identifiers, key=lambda i: (config.by_id[i.domain_id].namespace, i.value))
