"""PIX Manager over MLLP/TLS on its own port: ITI-8 feeds (v2.3.1 and v2.5) with cross-referencing and
merges, ITI-9 queries with every response case, the acknowledgement rules (original and enhanced
mode), duplicate control, character sets, assigning authorities and malformed input."""

from __future__ import annotations

import socket
import time

import edge
import pytest
from atna_client import agents_by_role, resources, search, wait_for
from pix_samples import (
    AFFINITY,
    RawMllp,
    Site,
    add_domain,
    adt,
    affinity_full,
    cx,
    errors,
    msa,
    new_oid,
    pid3_of,
    qbp,
    query,
    segments,
    send,
    uid,
)

from clearinghouse import hl7
from pix_manager import admin
from pix_manager.admin import REGISTRY_DESTINATION
from pix_manager.models import DELIVERED


@pytest.fixture
def site(clearinghouse) -> Site:
    return add_domain(clearinghouse)


class TestFeedAndQuery:
    def test_feed_links_domains_and_query_returns_the_others(self, clearinghouse, site):
        mrn, rsna = uid(), uid()
        ack = send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(rsna)}", control="C-LINK"))
        assert segments(ack)["MSA"][0][1:3] == ["AA", "C-LINK"]
        assert segments(ack)["MSH"][0][8] == "ACK^A04^ACK" and segments(ack)["MSH"][0][11] == "2.3.1"

        answer = query(clearinghouse, site.cx(mrn), tag="TAG1")
        seg = segments(answer)
        assert seg["MSH"][0][8] == "RSP^K23^RSP_K23" and msa(answer) == "AA"
        assert seg["QAK"][0][1:3] == ["TAG1", "OK"]
        assert seg["QPD"][0][1:4] == ["IHE PIX Query", "TAG1", site.cx(mrn)]  # echoed
        assert pid3_of(answer) == [affinity_full(rsna)]  # the queried identifier is not returned
        assert seg["PID"][0][5] == "~^^^^^^S"  # no name: an empty repetition, then type S only
        assert pid3_of(query(clearinghouse, cx(rsna))) == [site.full(mrn)]

    def test_v25_feed_and_namespace_only_authority(self, clearinghouse, site):
        mrn, rsna = uid(), uid()
        ack = send(clearinghouse, adt("A01", f"{mrn}^^^{site.namespace}~{cx(rsna)}", version="2.5"))
        assert msa(ack) == "AA" and segments(ack)["MSH"][0][11] == "2.5"
        assert pid3_of(query(clearinghouse, f"{mrn}^^^{site.namespace}")) == [affinity_full(rsna)]

    def test_missing_authority_is_filled_from_the_sources_domain(self, clearinghouse):
        name = "edge-" + uid().lower()
        clearinghouse.add_identity(name, ["source"])
        own = add_domain(clearinghouse, source=name)
        mrn, rsna = uid(), uid()
        assert msa(send(clearinghouse, adt("A05", f"{mrn}~{cx(rsna)}"), who=name)) == "AA"
        assert pid3_of(query(clearinghouse, cx(rsna))) == [own.full(mrn)]

    def test_later_feed_links_two_patients_into_one(self, clearinghouse, site):
        mrn, rsna1, rsna2 = uid(), uid(), uid()
        send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(rsna1)}"))
        send(clearinghouse, adt("A04", cx(rsna2)))
        assert segments(query(clearinghouse, cx(rsna2)))["QAK"][0][2] == "NF"
        assert msa(send(clearinghouse, adt("A08", f"{cx(rsna2)}~{site.cx(mrn)}"))) == "AA"
        assert sorted(pid3_of(query(clearinghouse, site.cx(mrn)))) == sorted(
            [affinity_full(rsna1), affinity_full(rsna2)]
        )

    def test_escaped_separators_in_an_identifier_round_trip(self, clearinghouse, site):
        mrn, rsna = "A\\S\\B\\T\\" + uid(), uid()  # A^B&… on the wire as HL7 escapes
        assert msa(send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(rsna)}", version="2.5"))) == "AA"
        assert pid3_of(query(clearinghouse, cx(rsna))) == [site.full(mrn)]
        answer = hl7.parse_message(query(clearinghouse, cx(rsna)))
        assert answer.get("PID", 3).startswith("A^B&")

    def test_update_changes_nothing_twice(self, clearinghouse, site):
        mrn, rsna = uid(), uid()
        for event in ("A01", "A08", "A08"):
            assert msa(send(clearinghouse, adt(event, f"{site.cx(mrn)}~{cx(rsna)}"))) == "AA"
        assert pid3_of(query(clearinghouse, site.cx(mrn))) == [affinity_full(rsna)]


class TestQueryCases:
    def test_case2_known_but_nothing_in_requested_domains(self, clearinghouse, site):
        other = add_domain(clearinghouse)
        mrn, rsna = uid(), uid()
        send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(rsna)}"))
        answer = query(clearinghouse, cx(rsna), domains=[f"&{other.oid}&ISO"])
        assert msa(answer) == "AA" and segments(answer)["QAK"][0][2] == "NF" and "PID" not in segments(answer)

    def test_requested_domains_filter_the_answer(self, clearinghouse, site):
        mrn, rsna = uid(), uid()
        send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(rsna)}"))
        assert pid3_of(query(clearinghouse, cx(rsna), domains=[site.namespace])) == [site.full(mrn)]
        assert pid3_of(query(clearinghouse, site.cx(mrn), domains=[f"&{AFFINITY}&ISO"])) == [affinity_full(rsna)]

    def test_case3_unknown_identifier(self, clearinghouse, site):
        answer = query(clearinghouse, site.cx("NOBODY" + uid()))
        assert msa(answer) == "AE" and segments(answer)["QAK"][0][2] == "AE"
        assert errors(answer) == [("204", "QPD^1^3^1^1")]
        assert segments(answer)["ERR"][0][4] == "E"

    def test_case4_unknown_domain(self, clearinghouse):
        answer = query(clearinghouse, cx("X1", new_oid()))
        assert msa(answer) == "AE" and segments(answer)["QAK"][0][2] == "AE"
        assert errors(answer) == [("204", "QPD^1^3^1^4")]

    def test_case5_each_unknown_requested_domain(self, clearinghouse, site):
        mrn = uid()
        send(clearinghouse, adt("A04", site.cx(mrn)))
        answer = query(clearinghouse, site.cx(mrn), domains=[f"&{new_oid()}&ISO", site.namespace, "NOSUCHNS"])
        assert msa(answer) == "AE" and segments(answer)["QAK"][0][2] == "AE"
        assert errors(answer) == [("204", "QPD^1^4^1"), ("204", "QPD^1^4^3")]

    def test_case6_several_identifiers_in_one_domain_are_grouped(self, clearinghouse, site):
        mrn1, mrn2, rsna = uid(), uid(), uid()
        send(clearinghouse, adt("A04", f"{site.cx(mrn1)}~{cx(rsna)}~{site.cx(mrn2)}"))
        got = pid3_of(query(clearinghouse, cx(rsna)))
        assert got == sorted([site.full(mrn1), site.full(mrn2)])

    def test_wrong_query_name_and_missing_identifier(self, clearinghouse, site):
        answer = query(clearinghouse, site.cx("A"), name="IHE PDQ Query")
        assert msa(answer) == "AE" and ("103", "QPD^1^1") in errors(answer)
        bad = qbp("", version="2.5")
        answer = send(clearinghouse, bad, who="phr")
        assert msa(answer) == "AE" and errors(answer) == [("101", "QPD^1^3")]

    def test_v231_query_uses_the_231_error_layout(self, clearinghouse, site):
        answer = query(clearinghouse, site.cx("NOBODY" + uid()), version="2.3.1")
        assert segments(answer)["ERR"][0][1] == "QPD^1^3^204&Unknown key identifier&HL70357"
        assert errors(answer) == [("204", "QPD^1^3")]


class TestMerge:
    def test_local_merge_moves_links_and_retires_the_prior_identifier(self, clearinghouse, site):
        old, new, rsna_old, rsna_new = uid(), uid(), uid(), uid()
        send(clearinghouse, adt("A04", f"{site.cx(old)}~{cx(rsna_old)}"))
        send(clearinghouse, adt("A04", f"{site.cx(new)}~{cx(rsna_new)}"))
        ack = send(clearinghouse, adt("A40", site.cx(new), mrg=site.cx(old), control="M-1"))
        assert segments(ack)["MSA"][0][1:3] == ["AA", "M-1"] and segments(ack)["MSH"][0][8] == "ACK^A40^ACK"
        assert sorted(pid3_of(query(clearinghouse, site.cx(new)))) == sorted(
            [affinity_full(rsna_old), affinity_full(rsna_new)]
        )
        assert sorted(pid3_of(query(clearinghouse, cx(rsna_old)))) == sorted([affinity_full(rsna_new), site.full(new)])
        # The prior identifier is not referenced again: queries and feeds that use it are refused.
        assert errors(query(clearinghouse, site.cx(old))) == [("204", "QPD^1^3^1^1")]
        refused = send(clearinghouse, adt("A08", site.cx(old)))
        assert msa(refused) == "AE" and errors(refused) == [("204", "PID^1^3")]  # 2.3.1: ERR-1 layout
        # The same merge again changes nothing and is accepted.
        assert msa(send(clearinghouse, adt("A40", site.cx(new), mrg=site.cx(old)))) == "AA"

    def test_merge_into_a_new_identifier_renames(self, clearinghouse, site):
        old, new, rsna = uid(), uid(), uid()
        send(clearinghouse, adt("A01", f"{site.cx(old)}~{cx(rsna)}"))
        assert msa(send(clearinghouse, adt("A40", site.cx(new), mrg=site.cx(old), version="2.5"))) == "AA"
        assert pid3_of(query(clearinghouse, cx(rsna))) == [site.full(new)]

    @pytest.mark.parametrize(
        "case, code, location",
        [
            ("unknown prior", "204", "MRG^1^1^1^1"),
            ("same identifier", "102", "MRG^1^1^1^1"),
            ("other domain", "102", "MRG^1^1^1^4"),
            ("surviving retired", "204", "PID^1^3^1^1"),
            ("no MRG", "100", "MRG"),
        ],
    )
    def test_merge_refusals_store_nothing(self, clearinghouse, site, case, code, location):
        a, b, c = uid(), uid(), uid()
        send(clearinghouse, adt("A04", f"{site.cx(a)}~{cx(c)}"))
        send(clearinghouse, adt("A04", site.cx(b)))
        message = {
            "unknown prior": adt("A40", site.cx(a), mrg=site.cx("NEVER" + uid()), version="2.5"),
            "same identifier": adt("A40", site.cx(a), mrg=site.cx(a), version="2.5"),
            "other domain": adt("A40", f"{site.cx(a)}", mrg=cx(c), version="2.5"),
            "surviving retired": None,
            "no MRG": adt("A40", site.cx(a), version="2.5").replace("PV1||O\r", ""),
        }[case]
        if case == "surviving retired":
            assert msa(send(clearinghouse, adt("A40", site.cx(b), mrg=site.cx(a)))) == "AA"
            message = adt("A40", site.cx(a), mrg=site.cx(b), version="2.5")
        ack = send(clearinghouse, message)
        assert msa(ack) == "AE" and errors(ack) == [(code, location)]
        if case != "surviving retired":
            assert pid3_of(query(clearinghouse, site.cx(a))) == [affinity_full(c)]

    def test_affinity_domain_merge_reaches_the_registry(self, clearinghouse):
        prior = edge.patient_for(edge.new_access_code(), "19700412")
        surviving = edge.patient_for(edge.new_access_code(), "19700412")
        feed = clearinghouse.feed_client()  # the registry's own ITI-8 port
        try:
            assert b"MSA|AA|" in feed.send(edge.feed_message(prior))
        finally:
            feed.close()
        st = edge.study(prior, samples=["CT_small.dcm"], report=False)
        assert edge.submit(clearinghouse.soap("edge", "/xds/repository"), st).body.get("status") == edge.SUCCESS

        pid_s, pid_p = surviving.split("^^^")[0], prior.split("^^^")[0]
        send(clearinghouse, adt("A04", cx(pid_s)))
        send(clearinghouse, adt("A04", cx(pid_p)))
        assert msa(send(clearinghouse, adt("A40", cx(pid_s), mrg=cx(pid_p)))) == "AA"
        delivered = wait_delivered(clearinghouse, [pid_p, pid_s])
        # Each registration, then the prior's registration again and the merge (see test_pix_forwarding.py).
        assert [hl7.parse_message(m).trigger_event for m in delivered] == ["A04", "A04", "A04", "A40"]

        # The registry now treats the prior id as merged: no new documents, the surviving one finds them.
        reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), edge.study(prior, samples=["MR_small.dcm"]))
        assert "XDSUnknownPatientId" in [code for code, _ in edge.errors_of(reply.body)]
        found = edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), surviving)
        assert len(found.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", edge.NS)) == 1

    def test_local_merge_is_not_forwarded_to_the_registry(self, clearinghouse, site):
        old, new = uid(), uid()
        send(clearinghouse, adt("A04", f"{site.cx(old)}~{cx(uid())}"))
        send(clearinghouse, adt("A04", f"{site.cx(new)}~{cx(uid())}"))
        assert msa(send(clearinghouse, adt("A40", site.cx(new), mrg=site.cx(old)))) == "AA"
        with clearinghouse.ch.engine.connect() as conn:
            sent = [e.message for e in admin.outbox(conn) if e.destination == REGISTRY_DESTINATION]
        assert not [m for m in sent if old.encode() in m or new.encode() in m]


def wait_delivered(ch, values: list[str], timeout: float = 10.0) -> list[bytes]:
    """The registry-bound messages mentioning all of ``values``, once all of them are delivered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ch.ch.engine.connect() as conn:
            rows = [e for e in admin.outbox(conn) if e.destination == REGISTRY_DESTINATION]
        mine = [e for e in rows if any(v.encode() in e.message for v in values)]
        if len(mine) >= 4 and all(e.status == DELIVERED for e in mine):
            return [e.message for e in mine]
        time.sleep(0.05)
    raise AssertionError(f"registry feed not delivered: {[(e.id, e.status, e.last_error) for e in mine]}")


class TestDuplicatesAndAcknowledgements:
    def test_resent_message_gets_the_same_answer_and_is_applied_once(self, clearinghouse, site):
        mrn, other = uid(), uid()
        message = adt("A04", site.cx(mrn), control="DUP-" + uid())
        first = send(clearinghouse, message)
        assert send(clearinghouse, message) == first  # byte for byte, same ACK control id
        restamped = message.replace("20261123120000", "20261123120500", 1)
        assert send(clearinghouse, restamped) == first
        # A merge resent after its prior was retired would fail if it were applied again.
        send(clearinghouse, adt("A04", site.cx(other)))
        merge = adt("A40", site.cx(other), mrg=site.cx(mrn), control="DUPM-" + uid())
        assert msa(send(clearinghouse, merge)) == "AA" and msa(send(clearinghouse, merge)) == "AA"

    def test_reused_control_id_for_another_message(self, clearinghouse, site):
        control = "REUSE-" + uid()
        assert msa(send(clearinghouse, adt("A04", site.cx(uid()), control=control, version="2.5"))) == "AA"
        ack = send(clearinghouse, adt("A04", site.cx(uid()), control=control, version="2.5"))
        assert msa(ack) == "AE" and errors(ack) == [("205", "MSH^1^10")]

    def test_refused_message_can_be_corrected_and_resent_with_its_control_id(self, clearinghouse, site):
        control, mrn = "FIX-" + uid(), uid()
        assert msa(send(clearinghouse, adt("A04", cx(mrn, new_oid()), control=control))) == "AE"
        assert msa(send(clearinghouse, adt("A04", site.cx(mrn), control=control))) == "AA"

    def test_enhanced_mode_accept_then_application_acknowledgement(self, clearinghouse, site):
        raw = RawMllp(clearinghouse.pix_port, clearinghouse.identities["edge"].context())
        try:
            raw.send(adt("A04", site.cx(uid()), control="E1", msh15="AL", msh16="AL", version="2.5").encode())
            accept, application = raw.read(), raw.read()
            assert segments(accept)["MSA"][0][1:3] == ["CA", "E1"]
            assert segments(application)["MSA"][0][1:3] == ["AA", "E1"]
            assert segments(application)["MSH"][0][14:16] == ["NE", "NE"]  # our acknowledgement wants none back
            # The sender may acknowledge our application ACK anyway: it is read and never answered.
            raw.send(hl7.build_ack(hl7.parse_message(application), "CA"))
            raw.send(adt("A04", site.cx(uid()), control="E2", msh15="NE", msh16="AL", version="2.5").encode())
            assert segments(raw.read())["MSA"][0][1:3] == ["AA", "E2"]
            raw.send(adt("A04", site.cx(uid()), control="E3", msh15="AL", msh16="NE", version="2.5").encode())
            assert segments(raw.read())["MSA"][0][1:3] == ["CA", "E3"]
            # ER/ER: nothing on success; on an application error only the AE.
            silent = uid()
            raw.send(adt("A04", site.cx(silent), control="E4", msh15="ER", msh16="ER", version="2.5").encode())
            raw.send(adt("A04", cx("X", new_oid()), control="E5", msh15="ER", msh16="ER", version="2.5").encode())
            refused = raw.read()
            assert segments(refused)["MSA"][0][1:3] == ["AE", "E5"] and errors(refused) == [("204", "PID^1^3^1^4")]
            # Not accepted at all (unsupported event): CR, and no application acknowledgement.
            rejected = uid()
            raw.send(adt("A03", site.cx(rejected), control="E6", msh15="AL", msh16="AL", version="2.5").encode())
            assert segments(raw.read())["MSA"][0][1:3] == ["CR", "E6"]
            assert raw.read(timeout=0.3) is None
        finally:
            raw.close()
        assert segments(query(clearinghouse, site.cx(silent)))["QAK"][0][2] == "NF"  # stored, though unanswered
        assert errors(query(clearinghouse, site.cx(rejected))) == [("204", "QPD^1^3^1^1")]


class TestRefusals:
    @pytest.mark.parametrize(
        "mutate, ack, code, location",
        [
            (lambda m: m.replace("ADT^A04^ADT_A01", "ADT^A03^ADT_A03"), "AR", "201", "MSH^1^9^1^2"),
            (lambda m: m.replace("ADT^A04^ADT_A01", "ORU^R01^ORU_R01"), "AR", "200", "MSH^1^9^1^1"),
            (lambda m: m.replace("|P|2.5", "|P|2.6"), "AR", "203", "MSH^1^12"),
            (lambda m: m.replace("|P|2.5", "|X|2.5"), "AR", "202", "MSH^1^11"),
            (lambda m: m.replace("PID|", "ZZZ|"), "AE", "100", "PID"),
            (lambda m: m.split("PID|||")[0] + "PID|||||DOE^JANE\rPV1||O\r", "AE", "101", "PID^1^3"),
        ],
    )
    def test_header_and_content_errors(self, clearinghouse, site, mutate, ack, code, location):
        message = mutate(adt("A04", site.cx(uid()), version="2.5"))
        answer = send(clearinghouse, message)
        assert msa(answer) == ack and errors(answer) == [(code, location)]

    def test_assigning_authority_checks(self, clearinghouse, site):
        unknown = send(clearinghouse, adt("A04", f"{site.cx(uid())}~{cx('X', new_oid())}", version="2.5"))
        assert msa(unknown) == "AE" and errors(unknown) == [("204", "PID^1^3^2^4")]
        mismatch = send(clearinghouse, adt("A04", cx(uid(), site.oid, "WRONGNS"), version="2.5"))
        assert msa(mismatch) == "AE" and errors(mismatch) == [("204", "PID^1^3^1^4")]
        not_iso = send(clearinghouse, adt("A04", f"{uid()}^^^&{site.oid}&DNS", version="2.5"))
        assert errors(not_iso) == [("204", "PID^1^3^1^4")]
        other_source = add_domain(clearinghouse, source="some-other-site")
        denied = send(clearinghouse, adt("A04", other_source.cx(uid()), version="2.5"))
        assert msa(denied) == "AR" and errors(denied) == [("207", "PID^1^3^1^4")]

    def test_no_authority_and_no_own_domain(self, clearinghouse):
        name = "lonely-" + uid().lower()
        clearinghouse.add_identity(name, ["source"])
        answer = send(clearinghouse, adt("A04", uid(), version="2.5"), who=name)
        assert msa(answer) == "AE" and errors(answer) == [("101", "PID^1^3^1^4")]

    def test_refused_feed_stores_none_of_its_identifiers(self, clearinghouse, site):
        mrn = uid()
        answer = send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(uid(), new_oid())}"))
        assert msa(answer) == "AE"
        assert errors(query(clearinghouse, site.cx(mrn))) == [("204", "QPD^1^3^1^1")]

    def test_roles(self, clearinghouse, site):
        denied = send(clearinghouse, adt("A04", site.cx(uid()), version="2.5"), who="phr")
        assert msa(denied) == "AR" and errors(denied) == [("207", "")]
        denied = send(clearinghouse, qbp(site.cx("A")), who="edge")
        assert msa(denied) == "AR"


class TestMalformedInput:
    def test_missing_msh(self, clearinghouse):
        answer = send(clearinghouse, b"PID|||X^^^&1.2&ISO\r")
        assert msa(answer) == "AR" and errors(answer) == [("100", "MSH")]

    def test_wrong_separators(self, clearinghouse):
        answer = send(clearinghouse, b"MSH|^^\\&|EDGE|SITE|PIX|ISN|2026||ADT^A04|C1|P|2.5\rPID|||X\r")
        assert msa(answer) == "AR" and errors(answer) == [("102", "MSH^1^2")]

    def test_truncated_frame_stores_nothing_and_the_port_keeps_serving(self, clearinghouse, site):
        mrn, control = uid(), "T" + uid()[:15]
        raw = RawMllp(clearinghouse.pix_port, clearinghouse.identities["edge"].context())
        raw.sock.sendall(b"\x0b" + adt("A04", site.cx(mrn), control=control).encode()[:-10])  # no end block
        raw.close()
        time.sleep(0.2)
        assert errors(query(clearinghouse, site.cx(mrn))) == [("204", "QPD^1^3^1^1")]
        # Refused unread, yet audited: a Security Alert naming the sender and what the frame said it was.
        ev = _refusal_event(clearinghouse, control)
        assert "incomplete MLLP frame" in ev["outcomeDesc"] and "ADT^A04" in ev["outcomeDesc"]

    def test_frame_larger_than_the_limit(self, clearinghouse, site):
        mrn, control = uid(), "L" + uid()[:15]
        limit = clearinghouse.settings.max_hl7_message_bytes
        big = adt("A04", site.cx(mrn), version="2.5", control=control)
        big = big.replace("PV1||O", "NTE|1||" + "x" * limit).encode()
        raw = RawMllp(clearinghouse.pix_port, clearinghouse.identities["edge"].context())
        try:
            raw.send(big)
            answer = raw.read()
            assert msa(answer) == "AR" and errors(answer)[0][0] == "207"
            assert hl7.parse_message(answer).get("MSA", 2) == control
            assert raw.read(timeout=5) is None  # and the connection is closed
        finally:
            raw.close()
        assert errors(query(clearinghouse, site.cx(mrn))) == [("204", "QPD^1^3^1^1")]
        ev = _refusal_event(clearinghouse, control)
        assert f"exceeds the {limit}-byte limit" in ev["outcomeDesc"] and "ADT^A04" in ev["outcomeDesc"]


def _refusal_event(clearinghouse, control: str) -> dict:
    """The Security Alert (Malformed request refused, DCM 110113 / our subtype) recorded for a frame the
    PIX port refused unread, found through ITI-81 by the control id its description names."""
    params = [("subtype", "malformed-request"), ("agent", "edge"), ("entity-id", f"mllp+tls://{socket.getfqdn()}/pix")]

    def found() -> dict | None:
        return next((ev for ev in resources(search(clearinghouse, params)) if control in ev["outcomeDesc"]), None)

    ev = wait_for(found, 15, f"the audit record of the refused frame {control}")
    assert ev["type"]["code"] == "110113" and ev["action"] == "E" and ev["outcome"] == "4"
    offender = agents_by_role(ev)["110153"]
    assert offender["name"].startswith("CN=edge,") and offender["network"]["address"] == "127.0.0.1"
    return ev


class TestCharacterSets:
    def test_latin1_declared_in_msh18(self, clearinghouse, site):
        mrn, rsna = "MÜLLER-" + uid(), uid()
        ack = send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(rsna)}", charset="8859/1"), encoding="latin-1")
        assert msa(ack) == "AA" and segments(ack)["MSH"][0][17] == "8859/1"
        latin = hl7.parse_message(
            send(clearinghouse, qbp(cx(rsna)).replace(b"|P|2.5", b"|P|2.5||||||8859/1"), who="phr")
        )
        assert latin.encoding == "iso8859-1" and latin.get("PID", 3) == mrn

    def test_utf8_declared_in_msh18(self, clearinghouse, site):
        mrn = "李-" + uid()
        ack = send(clearinghouse, adt("A04", site.cx(mrn), charset="UNICODE UTF-8", version="2.5"), encoding="utf-8")
        assert msa(ack) == "AA"
        q = qbp(site.cx(mrn)).replace(b"|P|2.5", b"|P|2.5||||||UNICODE UTF-8")
        answer = hl7.parse_message(send(clearinghouse, q.decode().encode("utf-8"), who="phr"))
        assert answer.get("QAK", 2) == "NF" and answer.get("QPD", 3) == mrn

    def test_bytes_that_break_the_declared_charset_are_refused(self, clearinghouse, site):
        message = adt("A04", site.cx("BAD\udcff"), charset="UNICODE UTF-8", version="2.5")
        answer = send(clearinghouse, message.encode("utf-8", "surrogateescape"))
        assert msa(answer) == "AR" and errors(answer) == [("102", "MSH^1^18")]

    def test_unknown_charset(self, clearinghouse, site):
        answer = send(clearinghouse, adt("A04", site.cx(uid()), charset="KLINGON", version="2.5"))
        assert msa(answer) == "AR" and errors(answer) == [("103", "MSH^1^18")]
