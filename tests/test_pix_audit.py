"""The PIX Manager's transactions reach the audit record repository (read back over ITI-81): ITI-8 and
ITI-9 through the MLLP listener's audit hook, ITI-44/45, ITI-83 and ITI-10 through pix_manager.auditing."""

from __future__ import annotations

import http.client
from urllib.parse import urlencode

from atna_client import events_for
from pix_samples import AFFINITY, PixConsumer, add_domain, adt, cx, query, send, uid, v3_feed, v3_query

from pix_manager import admin


def subtypes(events) -> set[str]:
    return {c.get("code") for e in events for c in e.get("subtype", [])}


def test_feeds_queries_and_notifications_are_audited(clearinghouse):
    site = add_domain(clearinghouse)
    consumer = PixConsumer(clearinghouse.settings.pki_dir).start()
    name = "audit-" + uid().lower()
    with clearinghouse.ch.engine.begin() as conn:
        admin.subscribe(conn, name, consumer.url, [site.namespace])
    try:
        mrn, rsna, v3_id = uid(), uid(), uid()
        assert b"MSA|AA|" in send(clearinghouse, adt("A04", f"{site.cx(mrn)}~{cx(rsna)}"))
        assert b"QAK|" in query(clearinghouse, cx(rsna))
        clearinghouse.soap("edge", "/pix/v3").call(
            "urn:hl7-org:v3:PRPA_IN201301UV02", v3_feed("PRPA_IN201301UV02", [(site.oid, v3_id)])
        )
        clearinghouse.soap("phr", "/pix/v3").call("urn:hl7-org:v3:PRPA_IN201309UV02", v3_query(site.oid, v3_id))
        conn = http.client.HTTPSConnection(
            "localhost", clearinghouse.https_port, context=clearinghouse.identities["phr"].context()
        )
        conn.request("GET", "/fhir/Patient/$ihe-pix?" + urlencode({"sourceIdentifier": f"urn:oid:{AFFINITY}|{rsna}"}))
        assert conn.getresponse().status == 200
        conn.close()
        consumer.wait_for(1)

        # ITI-9 is recorded with the patients it found (the MRN), ITI-83 with the queried one too.
        about_mrn = events_for(clearinghouse, [("patient.identifier", f"{mrn}^^^{site.namespace}&{site.oid}&ISO")], n=2)
        assert {"ITI-8", "ITI-9"} <= subtypes(about_mrn)
        about_rsna = events_for(clearinghouse, [("patient.identifier", f"{rsna}^^^&{AFFINITY}&ISO")], n=2)
        assert {"ITI-8", "ITI-83"} <= subtypes(about_rsna)
        about_v3 = events_for(clearinghouse, [("patient.identifier", f"{v3_id}^^^&{site.oid}&ISO")], n=2)
        assert {"ITI-44", "ITI-45"} <= subtypes(about_v3)
        notified = events_for(
            clearinghouse, [("subtype", "ITI-10"), ("patient.identifier", f"{mrn}^^^&{site.oid}&ISO")]
        )
        assert notified and notified[0]["type"]["code"] == "110110"
    finally:
        consumer.stop()
        with clearinghouse.ch.engine.begin() as conn:
            admin.unsubscribe(conn, name)


def test_unlink_is_audited_for_both_patients(clearinghouse):
    site = add_domain(clearinghouse)
    a, b = uid(), uid()
    send(clearinghouse, adt("A04", f"{site.cx(a)}~{site.cx(b)}"))
    unlink = (
        f"MSH|^~\\&|EDGE|SITE-A|PIX_MANAGER|ISN|20261123120000||ADT^A37^ADT_A37|{uid()}|P|2.5\r"
        f"EVN|A37|20261123120000\rPID|||{site.cx(a)}||DOE^JANE\rPID|||{site.cx(b)}||DOE^JANE\r"
    )
    assert b"MSA|AA|" in send(clearinghouse, unlink)
    for value in (a, b):
        events = events_for(clearinghouse, [("patient.identifier", f"{value}^^^{site.namespace}&{site.oid}&ISO")], n=2)
        assert "ITI-8" in subtypes(events)
        assert {e.get("action") for e in events} == {"C", "U"}  # the A04 created, the A37 updated
