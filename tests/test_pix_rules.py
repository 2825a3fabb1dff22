"""The PIX Manager's pure rules: resolving assigning authorities, identifier checks, HL7 output, and
which subscribers a change concerns."""

from __future__ import annotations

import pytest

from clearinghouse import hl7
from clearinghouse.errors import PixInvalidField, PixMissingField, PixNotDomainSource, PixUnknownDomain
from pix_manager.identifiers import (
    Authority,
    Domain,
    Identifier,
    PixConfig,
    RawIdentifier,
    Subscription,
    check_source,
    check_value,
    format_cx,
    resolve_all,
    resolve_domain,
)
from pix_manager.notify import plan_notifications
from pix_manager.xref import Change

SITE = Domain(1, "1.2.3.4", "SITE", "site-a")
AFF = Domain(2, "1.3.6.1.4.1.19376.3.840.1.1.1", "ISN", None)
OTHER = Domain(3, "1.2.3.5", "OTHER", "site-a")
CONFIG = PixConfig(1, (SITE, AFF))


@pytest.mark.parametrize(
    "authority, expected",
    [
        (Authority("SITE"), SITE),
        (Authority("", "1.2.3.4", "ISO"), SITE),
        (Authority("SITE", "1.2.3.4", "ISO"), SITE),
        (Authority("", "1.2.3.4", ""), SITE),  # HD-3 left out: the OID still names the domain
        (Authority("", " 1.3.6.1.4.1.19376.3.840.1.1.1 ", "iso"), AFF),
    ],
)
def test_resolve_domain(authority, expected):
    assert resolve_domain(CONFIG, authority, location="L") == expected


@pytest.mark.parametrize(
    "authority, error",
    [
        (Authority("NOPE"), PixUnknownDomain),
        (Authority("", "9.9.9", "ISO"), PixUnknownDomain),
        (Authority("ISN", "1.2.3.4", "ISO"), PixUnknownDomain),  # namespace and OID disagree
        (Authority("", "1.2.3.4", "DNS"), PixUnknownDomain),
        (Authority(), PixMissingField),
    ],
)
def test_resolve_domain_refusals(authority, error):
    with pytest.raises(error) as exc:
        resolve_domain(CONFIG, authority, location="PID^1^3^1^4")
    assert exc.value.location == "PID^1^3^1^4" and exc.value.ack_code == "AE"


def test_missing_authority_comes_from_the_sources_one_domain():
    assert resolve_domain(CONFIG, Authority(), location="L", source_participant="site-a") == SITE
    two = PixConfig(2, (SITE, AFF, OTHER))
    with pytest.raises(PixMissingField):
        resolve_domain(two, Authority(), location="L", source_participant="site-a")
    with pytest.raises(PixMissingField):
        resolve_domain(CONFIG, Authority(), location="L", source_participant="site-b")


def test_identity_source_of_a_domain():
    check_source(SITE, "site-a", location="L")
    check_source(AFF, "anyone", location="L")
    with pytest.raises(PixNotDomainSource) as exc:
        check_source(SITE, "site-b", location="L")
    assert exc.value.ack_code == "AR" and exc.value.http_status == 403


@pytest.mark.parametrize(
    "value, error",
    [("", PixMissingField), (" ", PixMissingField), ("a\x01", PixInvalidField), ("x" * 257, PixInvalidField)],
)
def test_check_value(value, error):
    with pytest.raises(error):
        check_value(value, location="L")


def test_resolve_all_keeps_order_and_drops_duplicates():
    raw = [
        RawIdentifier("A", Authority("SITE"), "1"),
        RawIdentifier("R", Authority("", AFF.oid, "ISO"), "2"),
        RawIdentifier("A", Authority("", SITE.oid, "ISO"), "3"),
    ]
    got = resolve_all(CONFIG, raw, source_participant="site-a", check_sources=True)
    assert got == [Identifier(1, "A"), Identifier(2, "R")]
    with pytest.raises(PixNotDomainSource):
        resolve_all(CONFIG, raw, source_participant="site-b", check_sources=True)


def test_format_cx_escapes_and_qualifies_fully():
    seps = hl7.Separators()
    assert format_cx(SITE, "A^B&C", seps) == "A\\S\\B\\T\\C^^^SITE&1.2.3.4&ISO"
    other = hl7.Separators("#", "!", "+", "$", "%")
    assert format_cx(SITE, "X", other) == "X!!!SITE%1.2.3.4%ISO"


def test_plan_notifications():
    everything = Subscription(1, "all", "mllp+tls://a:1", frozenset())
    site_only = Subscription(2, "site", "mllp+tls://b:1", frozenset({SITE.oid}))
    config = PixConfig(1, (SITE, AFF), (everything, site_only))
    mrn, rsna, rsna2 = Identifier(1, "M"), Identifier(2, "R"), Identifier(2, "R2")

    new_patient = Change(10, True, [mrn, rsna], [], frozenset({mrn, rsna}))
    assert plan_notifications(config, new_patient) == [(everything, [mrn, rsna]), (site_only, [mrn])]

    # A second RSNA-ID joins: the site-only consumer's view ({M}) did not change.
    joined = Change(10, True, [rsna2], [frozenset({mrn, rsna})], frozenset({mrn, rsna, rsna2}))
    assert plan_notifications(config, joined) == [(everything, [mrn, rsna, rsna2])]

    # Two persons become one: each consumer had them apart, so both hear of it if their view changed.
    two = Change(10, True, [], [frozenset({mrn}), frozenset({rsna})], frozenset({mrn, rsna}))
    assert plan_notifications(config, two) == [(everything, [mrn, rsna])]

    affinity_only = Change(11, True, [rsna2], [], frozenset({rsna2}))
    assert plan_notifications(config, affinity_only) == [(everything, [rsna2])]
