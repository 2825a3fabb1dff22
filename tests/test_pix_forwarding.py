"""What the PIX Manager tells the registry (ITI TF-2a 3.8.4.1.3, ITI TF-2b 3.64) and A37 Unlink, end to end:
feeds over MLLP/TLS on the PIX port, the registry's patient identity seen through ITI-41/42 acceptance
and ITI-18, and the cross-reference seen through ITI-9."""

from __future__ import annotations

import threading
import time

import edge
import pytest
from pix_samples import (
    AFFINITY,
    Site,
    add_domain,
    adt,
    affinity_full,
    cx,
    errors,
    msa,
    pid3_of,
    query,
    segments,
    send,
    uid,
    v3_feed,
)

from clearinghouse import hl7
from pix_manager import admin
from pix_manager.admin import REGISTRY_DESTINATION
from pix_manager.models import DELIVERED


@pytest.fixture
def site(clearinghouse) -> Site:
    return add_domain(clearinghouse)


def registry_messages(ch, value: str) -> list[admin.OutboxEntry]:
    with ch.ch.engine.connect() as conn:
        return [e for e in admin.outbox(conn) if e.destination == REGISTRY_DESTINATION and value.encode() in e.message]


def wait_registry(ch, value: str, count: int, timeout: float = 10.0) -> list[hl7.Message]:
    """The registry-bound messages naming ``value``, once ``count`` of them are delivered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = registry_messages(ch, value)
        if len(rows) >= count and all(e.status == DELIVERED for e in rows):
            return [hl7.parse_message(e.message) for e in rows]
        time.sleep(0.05)
    with ch.ch.engine.connect() as conn:
        waiting = [
            (e.id, e.destination, e.status, e.attempts, e.next_attempt_at, e.last_error)
            for e in admin.outbox(conn)
            if e.status != DELIVERED
        ]
    raise AssertionError(
        f"not delivered: {[(e.id, e.status) for e in registry_messages(ch, value)]}; waiting: {waiting}"
    )


def rsna_id() -> tuple[str, str]:
    """A real RSNA-ID as the registry files it (ID^^^&OID&ISO) and its bare value."""
    patient = edge.patient_for(edge.new_access_code(), "19700412")
    return patient, patient.split("^^^")[0]


def a37(first: str, second: str, *, version: str = "2.5", control: str | None = None) -> str:
    """ADT^A37^ADT_A37: one PID (with its PV1) per patient to unlink."""
    segments = [
        f"MSH|^~\\&|EDGE|SITE-A|PIX_MANAGER|ISN|20261123120000||ADT^A37^ADT_A37|{control or uid()}|P|{version}",
        "EVN|A37|20261123120000",
        f"PID|||{first}||DOE^JANE",
        "PV1||O",
        f"PID|||{second}||DOE^JANE",
        "PV1||O",
    ]
    return "\r".join(segments) + "\r"


def accepted(ch, patient: str, sample: str = "CT_small.dcm") -> bool:
    reply = edge.submit(ch.soap("edge", "/xds/repository"), edge.study(patient, samples=[sample], report=False))
    if reply.body.get("status") == edge.SUCCESS:
        return True
    assert "XDSUnknownPatientId" in [code for code, _ in edge.errors_of(reply.body)]
    return False


class TestRegistryFeed:
    def test_registration_makes_the_rsna_id_known_to_the_registry(self, clearinghouse, site):
        patient, value = rsna_id()
        mrn = uid()
        assert not accepted(clearinghouse, patient)  # never fed: the registry refuses its documents
        assert msa(send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(value)}"))) == "AA"
        (forwarded,) = wait_registry(clearinghouse, value, 1)
        # Only the affinity-domain identifier, never the site's MRN, never the name.
        assert forwarded.message_type == "ADT" and forwarded.trigger_event == "A04"
        text = registry_messages(clearinghouse, value)[0].message.decode()
        pid = forwarded.segment("PID")
        assert pid is not None and pid.repetition_count(3) == 1 and pid.get(3, 1) == value
        assert pid.get(3, 4, 1, 2) == "1.3.6.1.4.1.19376.3.840.1.1.1" and pid.get(5, 1) == ""
        assert mrn not in text and "DOE" not in text
        assert accepted(clearinghouse, patient)
        found = edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), patient)
        assert len(found.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", edge.NS)) == 1

    @pytest.mark.parametrize("event, version", [("A01", "2.5"), ("A05", "2.3.1"), ("A08", "2.5")])
    def test_each_registering_event_is_passed_on(self, clearinghouse, site, event, version):
        patient, value = rsna_id()
        assert msa(send(clearinghouse, adt(event, f"{site.cx(uid())}~{cx(value)}", version=version))) == "AA"
        (forwarded,) = wait_registry(clearinghouse, value, 1)
        assert forwarded.trigger_event == event
        assert accepted(clearinghouse, patient)

    @pytest.mark.parametrize("interaction, event", [("PRPA_IN201301UV02", "A01"), ("PRPA_IN201302UV02", "A08")])
    def test_hl7_v3_feed_is_passed_on_as_its_v2_event(self, clearinghouse, site, interaction, event):
        patient, value = rsna_id()
        reply = clearinghouse.soap("edge", "/pix/v3").call(
            f"urn:hl7-org:v3:{interaction}", v3_feed(interaction, [(site.oid, uid()), (AFFINITY, value)])
        )
        v3 = "{urn:hl7-org:v3}"
        assert reply.body.find(f"{v3}acknowledgement/{v3}typeCode").get("code") == "AA"
        (forwarded,) = wait_registry(clearinghouse, value, 1)
        assert forwarded.trigger_event == event
        assert accepted(clearinghouse, patient)

    def test_update_forwards_only_new_affinity_identifiers(self, clearinghouse, site):
        mrn, (_, v1), (p2, v2) = uid(), rsna_id(), rsna_id()
        send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(v1)}"))
        wait_registry(clearinghouse, v1, 1)
        # A08 with the known identifiers and a new RSNA-ID: the registry hears of the new one only.
        assert msa(send(clearinghouse, adt("A08", f"{site.cx(mrn)}~{cx(v1)}~{cx(v2)}"))) == "AA"
        (forwarded,) = wait_registry(clearinghouse, v2, 1)
        pid = forwarded.segment("PID")
        assert forwarded.trigger_event == "A08" and pid is not None and pid.repetition_count(3) == 1
        assert len(registry_messages(clearinghouse, v1)) == 1
        # Nothing new at all: nothing is sent.
        assert msa(send(clearinghouse, adt("A08", f"{site.cx(mrn)}~{cx(v2)}"))) == "AA"
        time.sleep(0.3)
        assert len(registry_messages(clearinghouse, v2)) == 1
        assert accepted(clearinghouse, p2)

    def test_a_burst_of_registrations_reaches_the_registry_in_batches(self, clearinghouse):
        patients = [rsna_id() for _ in range(24)]

        def feed(chunk: list[tuple[str, str]]) -> None:
            for _, value in chunk:
                assert msa(send(clearinghouse, adt("A04", cx(value)))) == "AA"

        threads = [threading.Thread(target=feed, args=(patients[i::6],)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = []
        for _, value in patients:
            wait_registry(clearinghouse, value, 1)
            rows += registry_messages(clearinghouse, value)
        # Runs of registrations were stored by the registry together (one status update per run).
        assert len({e.delivered_at for e in rows}) < len(patients)
        assert accepted(clearinghouse, patients[0][0]) and accepted(clearinghouse, patients[-1][0])

    def test_local_identifiers_alone_are_not_forwarded(self, clearinghouse, site):
        mrn = uid()
        assert msa(send(clearinghouse, adt("A04", site.cx(mrn)))) == "AA"
        time.sleep(0.3)
        assert registry_messages(clearinghouse, mrn) == []

    def test_affinity_merge_reaches_the_registry_without_a_direct_feed(self, clearinghouse):
        (prior, vp), (surviving, vs) = rsna_id(), rsna_id()
        send(clearinghouse, adt("A04", cx(vp)))
        send(clearinghouse, adt("A04", cx(vs)))
        wait_registry(clearinghouse, vp, 1)
        assert accepted(clearinghouse, prior)
        assert msa(send(clearinghouse, adt("A40", cx(vs), mrg=cx(vp)))) == "AA"
        events = [m.trigger_event for m in wait_registry(clearinghouse, vp, 3)]
        assert events == ["A04", "A04", "A40"]  # its registration, the one before the merge, the merge
        assert not accepted(clearinghouse, prior, "MR_small.dcm")  # subsumed: XDSUnknownPatientId
        found = edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), surviving)
        assert len(found.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", edge.NS)) == 1

    def test_local_merge_leaves_the_registry_alone(self, clearinghouse, site):
        """ITI-64 is not sent: see docs/decisions.md (PIX: what the registry hears of local changes)."""
        old, new, (p1, v1), (p2, v2) = uid(), uid(), rsna_id(), rsna_id()
        send(clearinghouse, adt("A04", f"{site.cx(old)}~{cx(v1)}"))
        send(clearinghouse, adt("A04", f"{site.cx(new)}~{cx(v2)}"))
        wait_registry(clearinghouse, v1, 1)
        wait_registry(clearinghouse, v2, 1)
        assert msa(send(clearinghouse, adt("A40", site.cx(new), mrg=site.cx(old)))) == "AA"
        time.sleep(0.3)
        assert len(registry_messages(clearinghouse, v1)) == 1 and len(registry_messages(clearinghouse, v2)) == 1
        assert registry_messages(clearinghouse, old) == [] and registry_messages(clearinghouse, new) == []
        # Both RSNA-IDs stay valid: documents under each access code are still accepted.
        assert accepted(clearinghouse, p1) and accepted(clearinghouse, p2, "MR_small.dcm")
        assert sorted(pid3_of(query(clearinghouse, site.cx(new)))) == sorted([affinity_full(v1), affinity_full(v2)])


class TestUnlink:
    @pytest.mark.parametrize("version", ["2.3.1", "2.5"])
    def test_unlink_splits_the_person(self, clearinghouse, site, version):
        a, b, r1, r2 = uid(), uid(), uid(), uid()
        send(clearinghouse, adt("A04", f"{site.cx(a)}~{cx(r1)}"))
        send(clearinghouse, adt("A04", f"{site.cx(b)}~{cx(r2)}"))
        send(clearinghouse, adt("A08", f"{cx(r1)}~{cx(r2)}"))  # linked: one person
        assert sorted(pid3_of(query(clearinghouse, site.cx(a)))) == sorted(
            [affinity_full(r1), affinity_full(r2), site.full(b)]
        )
        unlink = a37(f"{site.cx(a)}~{cx(r1)}", f"{site.cx(b)}~{cx(r2)}", version=version, control="U-" + uid())
        ack = send(clearinghouse, unlink)
        assert segments(ack)["MSA"][0][1:3] == ["AA", unlink.split("|")[9]]
        assert segments(ack)["MSH"][0][8] == "ACK^A37^ACK" and segments(ack)["MSH"][0][11] == version
        assert pid3_of(query(clearinghouse, site.cx(a))) == [affinity_full(r1)]
        assert pid3_of(query(clearinghouse, site.cx(b))) == [affinity_full(r2)]
        # The same unlink again is accepted and changes nothing; the registry hears nothing of it.
        assert msa(send(clearinghouse, a37(site.cx(a), site.cx(b), version=version))) == "AA"
        assert pid3_of(query(clearinghouse, cx(r2))) == [site.full(b)]
        assert [m.trigger_event for m in wait_registry(clearinghouse, r1, 1)] == ["A04"]

    def test_unlisted_identifiers_stay_with_the_first_patient(self, clearinghouse, site):
        a, b, r = uid(), uid(), uid()
        send(clearinghouse, adt("A04", f"{site.cx(a)}~{site.cx(b)}~{cx(r)}"))
        assert msa(send(clearinghouse, a37(site.cx(a), site.cx(b)))) == "AA"
        assert pid3_of(query(clearinghouse, site.cx(a))) == [affinity_full(r)]
        assert segments(query(clearinghouse, site.cx(b)))["QAK"][0][2] == "NF"

    @pytest.mark.parametrize(
        "case, code, location",
        [
            ("one PID", "100", "PID"),
            ("unknown", "204", "PID^2^3^1^1"),
            ("in both", "102", "PID^2^3^1^1"),
            ("empty second", "101", "PID^2^3"),
        ],
    )
    def test_unlink_refusals_change_nothing(self, clearinghouse, site, case, code, location):
        a, b = uid(), uid()
        send(clearinghouse, adt("A04", f"{site.cx(a)}~{site.cx(b)}"))
        message = {
            "one PID": a37(site.cx(a), site.cx(b)).replace(f"PID|||{site.cx(b)}||DOE^JANE\rPV1||O\r", ""),
            "unknown": a37(site.cx(a), site.cx("NEVER" + uid())),
            "in both": a37(site.cx(a), site.cx(a)),
            "empty second": a37(site.cx(a), ""),
        }[case]
        ack = send(clearinghouse, message)
        assert msa(ack) == "AE" and errors(ack) == [(code, location)]
        assert pid3_of(query(clearinghouse, site.cx(a))) == [site.full(b)]
