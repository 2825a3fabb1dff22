"""ITI-10 PIX Update Notification: a real MLLP/TLS consumer started by the test receives ADT^A31 for
the domains it subscribed to, sent with the server's certificate; failures are retried with backoff,
then kept as dead letters that the CLI lists and replays."""

from __future__ import annotations

import contextlib
import io
import time

import pytest
from conftest import running_instance
from pix_samples import PixConsumer, RawMllp, adt, cx, msa, new_oid, segments, uid

from clearinghouse import hl7
from clearinghouse.cli import main
from pix_manager import admin
from pix_manager.models import DEAD, DELIVERED
from pix_manager.notify import ITI10, _verdict, enqueue

RETRY_MS = 50


@pytest.fixture(scope="module")
def pix(backend, tmp_path_factory):
    with running_instance(
        tmp_path_factory.mktemp(f"pix-notify-{backend}"),
        backend,
        pix_notify_retry_ms=RETRY_MS,
        pix_notify_max_attempts=3,
    ) as running:
        yield running


def setup(pix, answer=lambda _m: "AA", domains=True):
    site_oid, ns = new_oid(), f"N{uid()}"
    consumer = PixConsumer(pix.settings.pki_dir, answer).start()
    name = f"consumer-{uid().lower()}"
    with pix.ch.engine.begin() as conn:
        admin.set_domain(conn, site_oid, ns)
        admin.subscribe(conn, name, consumer.url, [ns] if domains else [])
    return consumer, name, site_oid, ns


def feed(pix, message: str) -> bytes:
    client = pix.pix_client()
    try:
        return client.send(message.encode())
    finally:
        client.close()


def outbox(pix, destination: str) -> list[admin.OutboxEntry]:
    with pix.ch.engine.connect() as conn:
        return [e for e in admin.outbox(conn) if e.destination == destination]


def wait_outbox(pix, destination: str, status: str, count: int = 1, timeout: float = 10.0) -> list[admin.OutboxEntry]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [e for e in outbox(pix, destination) if e.status == status]
        if len(rows) >= count:
            return rows
        time.sleep(0.02)
    raise AssertionError(
        f"{destination}: {[(e.id, e.status, e.attempts, e.last_error) for e in outbox(pix, destination)]}"
    )


def test_consumer_receives_a31_for_its_domains_in_order(pix):
    consumer, name, oid, ns = setup(pix)
    try:
        mrn1, mrn2, rsna = uid(), uid(), uid()
        assert msa(feed(pix, adt("A04", f"{cx(mrn1, oid)}~{cx(rsna)}"))) == "AA"
        first = consumer.wait_for(1)[0]
        msg = hl7.parse_message(first.message)
        seg = segments(first.message)
        assert (msg.message_type, msg.trigger_event, msg.message_structure, msg.version) == (
            "ADT",
            "A31",
            "ADT_A05",
            "2.5",
        )
        assert msg.receiving_application == name
        assert seg["PID"][0][3] == f"{mrn1}^^^{ns}&{oid}&ISO"  # only the subscribed domain
        assert seg["PID"][0][5] == " " and seg["PV1"][0][2] == "N" and seg["EVN"][0][1] == "A31"
        assert first.peer_subject == "localhost"  # the clearinghouse's own certificate as client identity

        assert msa(feed(pix, adt("A08", f"{cx(mrn1, oid)}~{cx(rsna)}"))) == "AA"  # nothing changes
        assert msa(feed(pix, adt("A04", cx(uid())))) == "AA"  # another domain only
        assert msa(feed(pix, adt("A08", f"{cx(rsna)}~{cx(mrn2, oid)}"))) == "AA"  # a second MRN joins
        second = consumer.wait_for(2)[1]
        assert sorted(segments(second.message)["PID"][0][3].split("~")) == sorted(
            [f"{mrn1}^^^{ns}&{oid}&ISO", f"{mrn2}^^^{ns}&{oid}&ISO"]
        )
        time.sleep(0.3)
        assert len(consumer.received) == 2
        assert [e.status for e in outbox(pix, name)] == [DELIVERED, DELIVERED]
    finally:
        consumer.stop()


def test_merge_notifies_with_the_surviving_list(pix):
    consumer, name, oid, ns = setup(pix, domains=False)
    try:
        old, new, rsna = uid(), uid(), uid()
        feed(pix, adt("A04", f"{cx(old, oid)}~{cx(rsna)}"))
        feed(pix, adt("A04", cx(new, oid)))
        assert msa(feed(pix, adt("A40", cx(new, oid), mrg=cx(old, oid)))) == "AA"
        last = consumer.wait_for(3)[2]
        got = sorted(segments(last.message)["PID"][0][3].split("~"))
        assert got == sorted([f"{new}^^^{ns}&{oid}&ISO", f"{rsna}^^^ISN&1.3.6.1.4.1.19376.3.840.1.1.1&ISO"])
    finally:
        consumer.stop()


def test_unlink_notifies_both_patients(pix):
    consumer, name, oid, ns = setup(pix, domains=False)
    try:
        a, b, r1, r2 = uid(), uid(), uid(), uid()
        feed(pix, adt("A04", f"{cx(a, oid)}~{cx(r1)}"))
        feed(pix, adt("A04", f"{cx(b, oid)}~{cx(r2)}"))
        feed(pix, adt("A08", f"{cx(r1)}~{cx(r2)}"))
        unlink = "\r".join(
            [
                f"MSH|^~\\&|EDGE|SITE-A|PIX_MANAGER|ISN|20261123120000||ADT^A37^ADT_A37|{uid()}|P|2.3.1",
                "EVN|A37|20261123120000",
                f"PID|||{cx(a, oid)}||DOE^JANE",
                f"PID|||{cx(b, oid)}||DOE^JANE",
            ]
        )
        assert msa(feed(pix, unlink + "\r")) == "AA"
        received = consumer.wait_for(5)
        assert [hl7.parse_message(r.message).trigger_event for r in received] == ["A31"] * 5
        lists = [sorted(v.split("^")[0] for v in segments(r.message)["PID"][0][3].split("~")) for r in received[3:]]
        # Identifiers the A37 does not list stay with the first patient.
        assert lists == [sorted([a, r1, r2]), [b]]
    finally:
        consumer.stop()


def test_application_errors_are_retried_with_backoff(pix):
    answers = iter(["AE", "AE"])
    consumer, name, oid, _ = setup(pix, answer=lambda _m: next(answers, "AA"))
    try:
        started = time.monotonic()
        feed(pix, adt("A04", cx(uid(), oid)))
        (entry,) = wait_outbox(pix, name, DELIVERED)
        assert entry.attempts == 3 and len(consumer.received) == 3
        assert time.monotonic() - started >= (RETRY_MS + 2 * RETRY_MS) / 1000  # 50 ms, then 100 ms
        assert len({r.message for r in consumer.received}) == 1  # the same message each time
    finally:
        consumer.stop()


def test_reject_is_a_dead_letter_at_once(pix):
    consumer, name, oid, _ = setup(pix, answer=lambda _m: "AR")
    try:
        feed(pix, adt("A04", cx(uid(), oid)))
        (entry,) = wait_outbox(pix, name, DEAD)
        assert entry.attempts == 1 and entry.last_error.startswith("AR")
    finally:
        consumer.stop()


def test_unreachable_consumer_becomes_a_dead_letter_and_is_replayed(pix):
    consumer, name, oid, ns = setup(pix)
    consumer.stop()  # nobody listens on its port any more
    mrn = uid()
    feed(pix, adt("A04", cx(mrn, oid)))
    (entry,) = wait_outbox(pix, name, DEAD)
    assert entry.attempts == 3 and "Error" in entry.last_error

    listing = cli(pix, "pix", "dead-letters", "list")
    if listing is not None:
        assert f"{entry.id:>6} {name:20} ITI-10" in listing
    consumer.start()  # back, on the same port
    if cli(pix, "pix", "dead-letters", "replay", str(entry.id)) is None:
        with pix.ch.engine.begin() as conn:
            admin.replay(conn, entry.id)
    delivered = wait_outbox(pix, name, DELIVERED)
    assert [e.id for e in delivered] == [entry.id]
    assert segments(consumer.wait_for(1)[0].message)["PID"][0][3] == f"{mrn}^^^{ns}&{oid}&ISO"
    consumer.stop()
    with pix.ch.engine.begin() as conn, pytest.raises(admin.PixAdminError, match="not a dead letter"):
        admin.replay(conn, entry.id)


def cli(pix, *args: str) -> str | None:
    """Run the real CLI (in process) against this instance's database, SQLite in its home, while the
    server runs; None on PostgreSQL, whose per-test schema the CLI cannot address."""
    if pix.settings.database_url or pix.ch.engine.dialect.name != "sqlite":
        return None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*args, "--home", str(pix.settings.home)]) == 0
    return out.getvalue()


def test_enhanced_and_raw_connections_do_not_notify_on_refusals(pix):
    consumer, name, oid, _ = setup(pix)
    try:
        raw = RawMllp(pix.pix_port, pix.identities["edge"].context())
        raw.send(adt("A04", f"{cx(uid(), oid)}~{cx('X', new_oid())}", msh15="AL", msh16="AL").encode())
        assert segments(raw.read())["MSA"][0][1] == "CA" and segments(raw.read())["MSA"][0][1] == "AE"
        raw.close()
        time.sleep(0.3)
        assert outbox(pix, name) == [] and consumer.received == []
    finally:
        consumer.stop()


def test_messages_for_a_removed_subscription_become_dead_letters(pix):
    """Several waiting at once (the batch path) and none deliverable: each is a dead letter, none blocks."""
    ghost = f"ghost-{uid().lower()}"
    message = adt("A04", cx(uid())).encode()
    with pix.ch.engine.begin() as conn:
        enqueue(conn, ghost, ITI10, message)
        enqueue(conn, ghost, ITI10, message)
    pix.ch.pix.manager.notifier.wake()
    dead = wait_outbox(pix, ghost, DEAD, count=2)
    assert all("no subscription named" in e.last_error for e in dead)


@pytest.mark.parametrize(
    ("version", "ack_code", "error_code", "verdict"),
    [
        ("2.5", "AE", "102", "dead"),  # the message itself is wrong: refused again on every retry
        ("2.3.1", "AE", "103", "dead"),
        ("2.5", "AE", "207", "retry"),  # internal error: may pass later
        ("2.5", "AE", "206", "retry"),  # record locked
        ("2.5", "AE", None, "retry"),  # no reason given
        ("2.5", "AR", None, "dead"),
        ("2.5", "AA", None, "delivered"),
    ],
)
def test_verdict_on_an_acknowledgement(version, ack_code, error_code, verdict):
    request = hl7.parse_message(adt("A04", cx(uid(), new_oid()), version=version).encode())
    error = hl7.HL7Error("refused", ack_code=ack_code, error_code=error_code, location="PID") if error_code else None
    assert _verdict(hl7.build_ack(request, ack_code, text="no", error=error))[0] == verdict
