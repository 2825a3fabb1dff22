"""/metrics on the HTTPS port: Prometheus text format, for participants with the monitor role only;
transactions, errors and latency per IHE transaction, stored totals and queue depths."""

from __future__ import annotations

import urllib.error
import urllib.request

import edge
import pix_samples
import pytest
from atna_client import EDGE_NODE, fhir_get, send_tls, wait_for
from prometheus_client.parser import text_string_to_metric_families

from clearinghouse import audit
from clearinghouse.metrics import hl7_accepted, hl7_transaction, spool_backlog_bytes
from tests import imaging_samples as im
from tests import xds_samples as xs

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _monitor(running):
    if "monitor" not in running.identities:
        running.add_identity("monitor", ["monitor"])
    return running.identities["monitor"]


def scrape(running) -> Samples:
    with urllib.request.urlopen(running.url("/metrics"), context=_monitor(running).context(), timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_only_the_monitor_role_reads_metrics(clearinghouse):
    for who in ("phr", "edge", "auditor"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(clearinghouse.url("/metrics"), context=clearinghouse.identities[who].context())
        assert refused.value.code == 403
    assert scrape(clearinghouse)  # and the monitor gets the figures


def test_xds_transactions_are_counted_with_their_errors_and_latency(clearinghouse):
    before = scrape(clearinghouse)
    patient = edge.patient_for(edge.new_access_code(), "19790101")
    feed = clearinghouse.feed_client()
    try:
        assert b"MSA|AA|" in feed.send(edge.feed_message(patient))
    finally:
        feed.close()
    st = edge.study(patient, samples=["CT_small.dcm"])
    assert edge.submit(clearinghouse.soap("edge", "/xds/repository"), st).body.get("status") == edge.SUCCESS
    edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), patient)
    got = edge.retrieve(clearinghouse.soap("phr", "/xds/repository"), st.unique_ids)
    assert edge.retrieved_documents(got) == st.contents
    # An error: a submission for a patient never fed.
    stranger = edge.patient_for(edge.new_access_code(), "19790101")
    reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), edge.study(stranger, samples=["MR_small.dcm"]))
    assert "XDSUnknownPatientId" in [c for c, _ in edge.errors_of(reply.body)]
    after = scrape(clearinghouse)

    total, errors = "clearinghouse_transactions_total", "clearinghouse_transaction_errors_total"
    # ITI-41 twice, each registered in process by ITI-42; the registry refused the stranger's, so both failed.
    assert delta(before, after, total, transaction="ITI-41") == 2
    assert delta(before, after, errors, transaction="ITI-41") == 1
    assert delta(before, after, total, transaction="ITI-42") == 2
    assert delta(before, after, errors, transaction="ITI-42") == 1
    # In process, ITI-42 has no request of its own to time: counted, but not given its caller's latency.
    assert delta(before, after, "clearinghouse_transaction_duration_seconds_count", transaction="ITI-42") == 0
    assert delta(before, after, "clearinghouse_transaction_duration_seconds_count", transaction="ITI-41") == 2
    for t in ("ITI-8", "ITI-18", "ITI-43"):
        assert delta(before, after, total, transaction=t) == 1, t
        assert delta(before, after, errors, transaction=t) == 0, t
        assert delta(before, after, "clearinghouse_transaction_duration_seconds_count", transaction=t) == 1, t
        assert delta(before, after, "clearinghouse_transaction_duration_seconds_sum", transaction=t) > 0, t
    # Latency buckets are cumulative: the +Inf one holds every observation.
    assert value(after, "clearinghouse_transaction_duration_seconds_bucket", transaction="ITI-41", le="+Inf") == value(
        after, "clearinghouse_transaction_duration_seconds_count", transaction="ITI-41"
    )
    # Stored totals grew by what was submitted (plaintext sizes).
    assert delta(before, after, "clearinghouse_stored", unit="documents") == len(st.contents)
    assert delta(before, after, "clearinghouse_stored", unit="bytes") == sum(len(b) for b in st.contents.values())
    assert delta(before, after, "clearinghouse_http_responses_total", route="/xds/repository", status="200") == 3


def test_imaging_submissions_count_as_rad68_and_image_retrievals_as_rad69(clearinghouse):
    before = scrape(clearinghouse)
    patient = edge.patient_for(edge.new_access_code(), "19720304")
    feed = clearinghouse.feed_client()
    try:
        assert b"MSA|AA|" in feed.send(edge.feed_message(patient))
    finally:
        feed.close()
    study = im.imaging_study({"CT_small.dcm": 1})
    request = xs.provide_and_register(patient, im.rad68_documents(study, im.manifest(study, edge.REPOSITORY_ID)))
    reply = clearinghouse.soap("edge", "/xds/repository").call(
        edge.ITI41, request, attachments=edge.to_mtom(request), mtom=True
    )
    assert reply.body.get("status") == edge.SUCCESS
    wanted = [(i.study_uid, i.series_uid, i.sop_instance_uid) for i in study.instances]
    clearinghouse.soap("phr", "/xds/repository").call(
        im.RAD69, im.rad69_request(wanted, edge.REPOSITORY_ID), mtom=True
    ).close()
    after = scrape(clearinghouse)
    assert delta(before, after, "clearinghouse_transactions_total", transaction="RAD-68") == 1
    assert delta(before, after, "clearinghouse_transactions_total", transaction="ITI-41") == 0
    assert delta(before, after, "clearinghouse_transactions_total", transaction="RAD-69") == 1
    assert delta(before, after, "clearinghouse_transaction_errors_total", transaction="RAD-69") == 0


def test_pix_transactions_and_outbox_depth(clearinghouse):
    before = scrape(clearinghouse)
    value_id = pix_samples.uid()
    assert pix_samples.msa(pix_samples.send(clearinghouse, pix_samples.adt("A01", pix_samples.cx(value_id)))) == "AA"
    assert pix_samples.msa(pix_samples.query(clearinghouse, pix_samples.cx(value_id))) == "AA"
    # ITI-83 over HTTPS (PIXm): a bad request is an error of that transaction.
    status, _ = fhir_get(clearinghouse.url("/fhir/Patient/$ihe-pix"), clearinghouse.identities["phr"].context())
    assert status == 400
    after = scrape(clearinghouse)
    assert delta(before, after, "clearinghouse_transactions_total", transaction="ITI-8") == 1
    assert delta(before, after, "clearinghouse_transactions_total", transaction="ITI-9") == 1
    assert delta(before, after, "clearinghouse_transactions_total", transaction="ITI-83") == 1
    assert delta(before, after, "clearinghouse_transaction_errors_total", transaction="ITI-83") == 1
    for t in ("ITI-10", "ITI-8"):
        for st in ("pending", "dead"):
            assert ("clearinghouse_pix_outbox_messages", frozenset({("transaction", t), ("status", st)})) in after


def test_audit_records_and_queues(clearinghouse):
    before = scrape(clearinghouse)
    message = audit.syslog_message(audit.application_activity(node=EDGE_NODE, start=True).to_xml(), EDGE_NODE)
    send_tls(clearinghouse.ch.audit.syslog_tls.port, clearinghouse.identities["edge"], [message, message])
    status, _ = fhir_get(
        clearinghouse.url("/fhir/AuditEvent"), clearinghouse.identities["auditor"].context(), [("_count", "1")]
    )
    assert status == 200

    def stored() -> Samples | None:
        now = scrape(clearinghouse)
        return now if delta(before, now, "clearinghouse_audit_records_stored_total") >= 2 else None

    after = wait_for(stored, 20, "the audit records to be stored")
    assert delta(before, after, "clearinghouse_audit_records_received_total") >= 2
    assert delta(before, after, "clearinghouse_transactions_total", transaction="ITI-81") == 1
    assert ("clearinghouse_audit_spool_backlog_bytes", frozenset()) in after
    assert ("clearinghouse_audit_sink_queue", frozenset()) in after
    assert ("clearinghouse_db_pool_connections_in_use", frozenset()) in after


def test_hl7_classification_and_spool_arithmetic():
    adt = pix_samples.adt("A01", pix_samples.cx("1")).encode()
    assert hl7_transaction(adt) == "ITI-8"
    assert hl7_transaction(pix_samples.qbp(pix_samples.cx("1"))) == "ITI-9"
    assert hl7_transaction(b"not hl7") == "HL7 unreadable"
    assert hl7_accepted(b"MSH|^~\\&|A|B|C|D|20260101||ACK|1|P|2.5\rMSA|AA|1\r")
    assert not hl7_accepted(b"MSH|^~\\&|A|B|C|D|20260101||ACK|1|P|2.5\rMSA|AE|1\r")
    assert not hl7_accepted(b"")
    assert spool_backlog_bytes((1, 500), (1, 200), 1000) == 300
    assert spool_backlog_bytes((3, 100), (1, 900), 1000) == 100 + 1000 + 100
    assert spool_backlog_bytes((1, 200), (1, 200), 1000) == 0
