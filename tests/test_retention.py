"""Retention purge end to end (docs/retention.md): an edge submits over SOAP/HTTPS, the purge runs as of
an instant past the retention, and the PHR gets the spec's not-found answers (ITI-18: nothing found;
ITI-43: XDSDocumentUniqueIdError, PartialSuccess when some documents remain). Per-participant and
per-submission retention, documents another entry still names, the sweep of unreferenced bytes, the
scheduler inside `serve`, the audit trail (ITI-81), on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime, timedelta

import atna_client as arr
import edge
import pytest
import xds_samples as xs
from conftest import running_instance
from lxml import etree
from sqlalchemy import select

from clearinghouse import db, participants
from clearinghouse.retention_cli import run_purge
from clearinghouse.retention_policy import RETENTION_SLOT
from clearinghouse.xmlsafe import NS, qname
from registry.api import purge_expired_submissions
from registry.retention import RegistryRetentionRow
from repository.models import StoredDocument

DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def ch(backend, tmp_path_factory):
    # No scheduler here: each test runs the purge itself, as of the instant it chooses.
    with running_instance(
        tmp_path_factory.mktemp(f"retention-{backend}"), backend, retention_purge_interval_seconds=0
    ) as running:
        yield running


def fed_patient(running, who: str = "edge") -> str:
    patient = edge.patient_for(edge.new_access_code(), "19700412")
    client = running.feed_client(who)
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()
    return patient


def with_retention_slot(request: etree._Element, values: list[str]) -> etree._Element:
    """The SubmissionSet of an ITI-41 request asking for ``values`` in the retention slot."""
    ss_id = xs.submission_set_id(request)
    package = xs.find(request, "RegistryPackage", ss_id)
    slot = etree.Element(qname("rim", "Slot"), name=RETENTION_SLOT)
    value_list = etree.SubElement(slot, qname("rim", "ValueList"))
    for v in values:
        etree.SubElement(value_list, qname("rim", "Value")).text = v
    package.insert(0, slot)
    return request


def submit(running, st: edge.Study, *, who: str = "edge", retention: list[str] | None = None):
    request = xs.provide_and_register(st.patient_id, st.documents)
    if retention is not None:
        with_retention_slot(request, retention)
    ss_uid = xs.submission_set_unique_id(request)
    reply = running.soap(who, "/xds/repository").call(edge.ITI41, request, attachments=edge.to_mtom(request), mtom=True)
    return reply.body, ss_uid


def found_unique_ids(running, patient: str) -> set[str]:
    reply = edge.find_documents(running.soap("phr", "/xds/registry"), patient)
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    return {
        ei.get("value")
        for eo in reply.body.iter(qname("rim", "ExtrinsicObject"))
        for ei in eo.findall("rim:ExternalIdentifier", NS)
        if ei.get("identificationScheme") == xs._SCHEME["uniqueId"]
    }


def purge(running, now: datetime, **kwargs):
    return running.ch.retention.coordinator.run(now, **kwargs)


def purged_uids(report) -> set[str]:
    return {s.submission_set_unique_id for s in report.submissions}


def held(running, unique_ids) -> set[str]:
    with running.ch.sessions() as session:
        return set(session.scalars(select(StoredDocument.unique_id).where(StoredDocument.unique_id.in_(unique_ids))))


def test_expired_submission_is_purged_and_phr_gets_not_found(ch):
    patient = fed_patient(ch)
    st = edge.study(patient, samples=["CT_small.dcm"])
    body, ss_uid = submit(ch, st)
    assert body.get("status") == edge.SUCCESS, edge.errors_of(body)
    registered = datetime.now(UTC)  # after the submission's registration, before `keep`'s
    keep = edge.study(fed_patient(ch), samples=["MR_small.dcm"], report=False)
    assert submit(ch, keep, retention=["30"])[0].get("status") == edge.SUCCESS
    assert found_unique_ids(ch, patient) == set(st.unique_ids)

    # Not yet due one day before the default 30 days: nothing of it is touched.
    assert ss_uid not in purged_uids(purge(ch, registered + 29 * DAY))
    assert found_unique_ids(ch, patient) == set(st.unique_ids)

    # 30 days after its registration (the purge is of everything due by then; other tests'
    # submissions of this module may go too), but not `keep`, registered after that instant.
    report = purge(ch, registered + 30 * DAY)
    assert report.ok, report.errors
    mine = [s for s in report.submissions if s.submission_set_unique_id == ss_uid]
    assert len(mine) == 1 and mine[0].patient_id == patient
    assert {d.unique_id for d in mine[0].documents} == set(st.unique_ids)
    assert all(d.released and d.repository_unique_id == edge.REPOSITORY_ID for d in mine[0].documents)
    assert report.documents_removed >= len(st.unique_ids)

    # ITI-18: the patient's documents are simply not found any more.
    assert found_unique_ids(ch, patient) == set()
    # ITI-43: each purged document is XDSDocumentUniqueIdError, the request a Failure ...
    phr = ch.soap("phr", "/xds/repository")
    got = phr.call(edge.ITI43, edge.retrieve_request(st.unique_ids))
    rr = got.body.find("rs:RegistryResponse", NS)
    assert rr.get("status") == edge.FAILURE
    assert sorted(e.get("location") for e in rr.iter(qname("rs", "RegistryError"))) == sorted(st.unique_ids)
    assert {c for c, _ in edge.errors_of(rr)} == {"XDSDocumentUniqueIdError"}
    # ... and PartialSuccess next to a document still held.
    got = phr.call(edge.ITI43, edge.retrieve_request([st.unique_ids[0], keep.unique_ids[0]]))
    rr = got.body.find("rs:RegistryResponse", NS)
    assert rr.get("status") == edge.PARTIAL
    assert [c for c, _ in edge.errors_of(rr)] == ["XDSDocumentUniqueIdError"]
    assert edge.retrieved_documents(got) == keep.contents
    # The bytes are gone from the repository, its rows and its store.
    assert held(ch, st.unique_ids) == set()
    assert held(ch, keep.unique_ids) == set(keep.unique_ids)
    # Purging again finds nothing more of it.
    assert ss_uid not in purged_uids(purge(ch, registered + 31 * DAY))

    # The audit trail: one retention purge event naming the patient, the submission set and each
    # document (permanently erased), and the repository's ITI-86 event for the bytes.
    events = arr.events_for(ch, [("subtype", "retention-purge"), ("entity-id", ss_uid)])
    assert len(events) == 1
    ev = events[0]
    assert ev["action"] == "D" and ev["type"]["code"] == "110110"
    ids = arr.entity_ids(ev)
    assert patient in ids and ss_uid in ids and set(st.unique_ids) <= set(ids)
    assert all(
        e.get("lifecycle", {}).get("code") == "15" for e in ev["entity"] if e["what"]["identifier"]["value"] != patient
    )
    removal = arr.events_for(ch, [("subtype", "ITI-86"), ("entity-id", st.unique_ids[0])])
    assert removal[0]["action"] == "D" and removal[0]["outcome"] == "0"


def test_submission_slot_shortens_retention(ch):
    st = edge.study(fed_patient(ch), samples=["CT_small.dcm"], report=False)
    body, ss_uid = submit(ch, st, retention=["2"])
    assert body.get("status") == edge.SUCCESS, edge.errors_of(body)
    registered = datetime.now(UTC)
    assert ss_uid not in purged_uids(purge(ch, registered + DAY))
    report = purge(ch, registered + 2 * DAY + timedelta(seconds=1))
    assert ss_uid in purged_uids(report) and report.ok
    assert found_unique_ids(ch, st.patient_id) == set() and held(ch, st.unique_ids) == set()


@pytest.mark.parametrize(
    ("values", "why"),
    [
        (["31"], "more than the 30 days"),
        (["0"], "at least 1 day"),
        (["two"], "not a whole number"),
        (["3", "4"], "exactly one value"),
    ],
)
def test_invalid_retention_slot_is_refused(ch, values, why):
    st = edge.study(fed_patient(ch), samples=["CT_small.dcm"], report=False)
    body, ss_uid = submit(ch, st, retention=values)
    assert body.get("status") == edge.FAILURE
    errors = edge.errors_of(body)
    assert [c for c, _ in errors] == ["XDSRegistryMetadataError"]
    assert why in errors[0][1] and RETENTION_SLOT in errors[0][1] and "SubmissionSet" in errors[0][1]
    # Nothing was kept: no metadata, no bytes, no retention row.
    assert found_unique_ids(ch, st.patient_id) == set() and held(ch, st.unique_ids) == set()
    with ch.ch.sessions() as session:
        assert (
            session.scalar(select(RegistryRetentionRow).where(RegistryRetentionRow.submission_set_unique_id == ss_uid))
            is None
        )


def test_participant_retention(ch):
    ident = ch.add_identity("short-edge", ["source"])
    assert ident.name == "short-edge"
    with db.transaction(ch.ch.sessions) as session:
        view = participants.set_retention(session, "short-edge", 5)
    assert view.retention_days == 5
    st = edge.study(fed_patient(ch), samples=["CT_small.dcm"], report=False)
    assert submit(ch, st, who="short-edge")[0].get("status") == edge.SUCCESS
    registered = datetime.now(UTC)
    # The slot may shorten the participant's retention, not lengthen it.
    longer = edge.study(fed_patient(ch), samples=["CT_small.dcm"], report=False)
    body, _ = submit(ch, longer, who="short-edge", retention=["6"])
    assert [c for c, _ in edge.errors_of(body)] == ["XDSRegistryMetadataError"]
    assert "more than the 5 days" in edge.errors_of(body)[0][1]
    assert found_unique_ids(ch, st.patient_id) == set(st.unique_ids)
    purge(ch, registered + 5 * DAY + timedelta(seconds=1))
    assert found_unique_ids(ch, st.patient_id) == set() and held(ch, st.unique_ids) == set()
    with db.transaction(ch.ch.sessions) as session, pytest.raises(participants.ParticipantError):
        participants.set_retention(session, "short-edge", 0)


def test_document_named_by_a_later_submission_keeps_its_bytes(ch):
    """An identical resubmission registers the same document again: purging the first submission
    removes its metadata but not the bytes the second one still names."""
    patient = fed_patient(ch)
    st = edge.study(patient, samples=["CT_small.dcm"], report=False)
    first, first_uid = submit(ch, st, retention=["1"])
    assert first.get("status") == edge.SUCCESS
    again = edge.Study(patient, [copy.deepcopy(d) for d in st.documents], st.contents)
    second, second_uid = submit(ch, again)
    assert second.get("status") == edge.SUCCESS, edge.errors_of(second)
    registered = datetime.now(UTC)
    report = purge(ch, registered + DAY + timedelta(seconds=1))
    mine = [s for s in report.submissions if s.submission_set_unique_id == first_uid]
    assert len(mine) == 1 and [d.released for d in mine[0].documents] == [False]
    assert second_uid not in purged_uids(report)
    assert found_unique_ids(ch, patient) == set(st.unique_ids)
    got = edge.retrieve(ch.soap("phr", "/xds/repository"), st.unique_ids)
    assert edge.retrieved_documents(got) == st.contents
    # When the second submission expires too, the bytes go.
    purge(ch, registered + 30 * DAY + timedelta(seconds=1))
    assert held(ch, st.unique_ids) == set()


def test_dry_run_changes_nothing(ch):
    st = edge.study(fed_patient(ch), samples=["CT_small.dcm"], report=False)
    _, ss_uid = submit(ch, st, retention=["1"])
    when = datetime.now(UTC) + DAY + timedelta(seconds=1)
    report = purge(ch, when, dry_run=True)
    mine = [s for s in report.submissions if s.submission_set_unique_id == ss_uid]
    assert len(mine) == 1 and {d.unique_id for d in mine[0].documents} == set(st.unique_ids)
    assert found_unique_ids(ch, st.patient_id) == set(st.unique_ids) and held(ch, st.unique_ids) == set(st.unique_ids)
    assert ss_uid in purged_uids(purge(ch, when))


def test_sweep_removes_bytes_left_by_a_crash(ch):
    """Metadata purged but the process died before ITI-86: the next run's sweep removes the bytes
    (once older than the grace period), through ITI-86 too."""
    st = edge.study(fed_patient(ch), samples=["CT_small.dcm"], report=False)
    _, ss_uid = submit(ch, st, retention=["1"])
    when = datetime.now(UTC) + DAY + timedelta(seconds=1)
    # Only the registry's step, as a crash right after it would leave things.
    gone = purge_expired_submissions(ch.ch.sessions, ch.settings, now=when, limit=None)
    assert ss_uid in {s.submission_set_unique_id for s in gone}
    assert held(ch, st.unique_ids) == set(st.unique_ids)
    # Within the grace period after storage the bytes stay (an ITI-41 may still be registering).
    report = purge(ch, datetime.now(UTC) + timedelta(hours=ch.settings.retention_sweep_grace_hours - 1))
    assert held(ch, st.unique_ids) == set(st.unique_ids)
    report = purge(ch, when + timedelta(hours=ch.settings.retention_sweep_grace_hours))
    assert report.ok and report.swept >= 1
    assert held(ch, st.unique_ids) == set()
    # Documents that are still registered are never swept.
    live = edge.study(fed_patient(ch), samples=["CT_small.dcm"], report=False)
    assert submit(ch, live)[0].get("status") == edge.SUCCESS
    purge(ch, datetime.now(UTC) + 29 * DAY)
    assert held(ch, live.unique_ids) == set(live.unique_ids)


def test_concurrent_purgers_purge_each_submission_once(ch):
    """Two purgers, each with its own engine, registry and repository endpoint (as two servers
    sharing the database, wired as `clearinghouse purge` wires them), started together with batch
    size 1 so that they interleave: each submission is purged, audited and removed exactly once."""
    subs = []
    for _ in range(8):
        st = edge.study(fed_patient(ch), samples=["CT_small.dcm"], report=False)
        body, ss_uid = submit(ch, st, retention=["3"])
        assert body.get("status") == edge.SUCCESS
        subs.append((ss_uid, st))
    when = datetime.now(UTC) + 3 * DAY + timedelta(seconds=1)
    settings = ch.settings.replace(retention_purge_batch=1)
    url = ch.ch.engine.url.render_as_string(hide_password=False)
    schema = None
    if ch.ch.engine.dialect.name == "postgresql":
        with ch.ch.engine.connect() as conn:
            schema = conn.exec_driver_sql("SHOW search_path").scalar()
    engines = [db.make_engine(url, schema=schema) for _ in range(2)]
    reports: list = [None, None]
    start = threading.Barrier(2)

    def run(i: int) -> None:
        sessions = db.session_factory(engines[i])
        start.wait()
        reports[i] = run_purge(settings, sessions, now=when, dry_run=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for engine in engines:
        engine.dispose()
    assert all(r is not None and r.ok for r in reports), [r.errors for r in reports if r]
    mine = {uid for uid, _ in subs}
    got = [purged_uids(r) & mine for r in reports]
    assert got[0] | got[1] == mine and not (got[0] & got[1])
    for uid, st in subs:
        assert held(ch, st.unique_ids) == set()
        assert len(arr.events_for(ch, [("subtype", "retention-purge"), ("entity-id", uid)])) == 1


def test_scheduler_in_serve_purges(backend, tmp_path):
    with running_instance(tmp_path, backend, retention_purge_interval_seconds=1) as running:
        scheduler = running.ch.retention
        assert scheduler is not None
        st = edge.study(fed_patient(running), samples=["CT_small.dcm"], report=False)
        _, ss_uid = submit(running, st, retention=["1"])
        scheduler.clock = lambda: datetime.now(UTC) + DAY + timedelta(seconds=5)
        arr.wait_for(lambda: held(running, st.unique_ids) == set(), 20, "the scheduler's purge")
        assert found_unique_ids(running, st.patient_id) == set()
        assert arr.events_for(running, [("subtype", "retention-purge"), ("entity-id", ss_uid)])


def cli_database_url(running) -> str:
    url = running.ch.engine.url.render_as_string(hide_password=False)
    if running.ch.engine.dialect.name == "postgresql":
        with running.ch.engine.connect() as conn:
            schema = conn.exec_driver_sql("SHOW search_path").scalar()
        url += f"?options=-csearch_path%3D{schema}"
    return url


def cli(running, *args: str) -> int:
    from clearinghouse.cli import main

    return main([*args, "--home", str(running.settings.home), "--database-url", cli_database_url(running)])


def test_purge_command(ch, capsys, tmp_path):
    st = edge.study(fed_patient(ch), samples=["CT_small.dcm"], report=False)
    _, ss_uid = submit(ch, st, retention=["1"])
    when = (datetime.now(UTC) + DAY + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert cli(ch, "purge", "--dry-run", "--now", when) == 0
    out = capsys.readouterr().out
    assert "would purge" in out and ss_uid in out and st.unique_ids[0] in out and "bytes to remove" in out
    assert found_unique_ids(ch, st.patient_id) == set(st.unique_ids) and held(ch, st.unique_ids) == set(st.unique_ids)
    assert not arr.resources(arr.search(ch, [("subtype", "retention-purge"), ("entity-id", ss_uid)]))

    assert cli(ch, "purge", "--now", when) == 0
    out = capsys.readouterr().out
    assert "purged" in out and ss_uid in out and "bytes removed" in out
    assert found_unique_ids(ch, st.patient_id) == set() and held(ch, st.unique_ids) == set()
    ev = arr.events_for(ch, [("subtype", "retention-purge"), ("entity-id", ss_uid)])[0]
    assert "110151" in arr.agents_by_role(ev)  # the operator who ran the command (Application Launcher)
    assert arr.events_for(ch, [("subtype", "ITI-86"), ("entity-id", st.unique_ids[0])])

    with pytest.raises(SystemExit) as exc:
        cli(ch, "purge", "--now", "next tuesday")
    assert exc.value.code == 2
    assert "ISO 8601" in capsys.readouterr().err


def test_participant_retention_commands(ch, capsys, tmp_path):
    assert (
        cli(ch, "participants", "add", "site-r", "--role", "source", "--out", str(tmp_path), "--retention-days", "9")
        == 0
    )
    capsys.readouterr()
    with ch.ch.sessions() as session:
        assert participants.retention_days_of(session, "site-r") == 9
    assert cli(ch, "participants", "retention", "site-r", "--retention-days", "4") == 0
    assert "kept 4 days" in capsys.readouterr().out
    assert cli(ch, "participants", "retention", "site-r", "--default") == 0
    assert "30 days (default)" in capsys.readouterr().out
    with ch.ch.sessions() as session:
        assert participants.retention_days_of(session, "site-r") is None
    assert cli(ch, "participants", "retention", "site-r", "--retention-days", "0") == 2
    assert "1 to 3650 days" in capsys.readouterr().err
    assert cli(ch, "participants", "retention", "nobody", "--retention-days", "3") == 2
    # Each change is a participant change in the audit trail.
    assert arr.events_for(ch, [("entity-id", "site-r"), ("subtype", "110137")], n=2)


def test_new_version_keeps_the_bytes_until_it_expires(ch):
    """ITI-57 registers a new version under the same uniqueId in a SubmissionSet of its own, with
    its own expiry: purging the original submission removes version 1 and keeps the bytes."""
    patient = fed_patient(ch)
    st = edge.study(patient, samples=["CT_small.dcm"], report=False)
    assert submit(ch, st, retention=["1"])[0].get("status") == edge.SUCCESS
    registry = ch.soap("edge", "/xds/registry")
    found = edge.find_documents(ch.soap("phr", "/xds/registry"), patient).body
    (v1_uuid,) = [eo.get("id") for eo in found.iter(qname("rim", "ExtrinsicObject"))]
    v2 = copy.deepcopy(st.documents[0])
    v2.title = "Corrected title"
    update = xs.new_version(patient, v1_uuid, "1", document=v2)
    with_retention_slot(update, ["2"])
    reply = registry.call("urn:ihe:iti:2010:UpdateDocumentSet", update)
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    registered = datetime.now(UTC)
    report = purge(ch, registered + DAY + timedelta(seconds=1))
    assert report.ok, report.errors
    mine = [s for s in report.submissions if st.unique_ids[0] in {d.unique_id for d in s.documents}]
    assert len(mine) == 1 and [d.released for d in mine[0].documents] == [False]
    found = edge.find_documents(ch.soap("phr", "/xds/registry"), patient).body
    assert [eo.get("id") for eo in found.iter(qname("rim", "ExtrinsicObject"))] != [v1_uuid]
    assert found_unique_ids(ch, patient) == set(st.unique_ids)
    assert edge.retrieved_documents(edge.retrieve(ch.soap("phr", "/xds/repository"), st.unique_ids)) == st.contents
    # The new version's own expiry (2 days) ends it, and then the bytes go.
    purge(ch, registered + 2 * DAY + timedelta(seconds=1))
    assert found_unique_ids(ch, patient) == set() and held(ch, st.unique_ids) == set()
