"""The reference edge and PHR against the real clearinghouse: the CLI as a site and a patient use it,
and each fault switch producing the failure it is meant to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from conformance.edge import EdgeError, EdgeSimulator
from conformance.faults import Fault
from conformance.phr import PhrError, PhrSimulator
from conformance.study import StudyError, collect

OID = "1.3.6.1.4.1.19376.3.840.1.1.1"
REPO = "1.3.6.1.4.1.21367.2026.1.1"


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    d = tmp_path / "study"
    d.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        (d / name).write_bytes(Path(get_testdata_file(name)).read_bytes())
    (tmp_path / "report.txt").write_text("IMPRESSION: normal.\n")
    return d


def _edge(ch, faults=()) -> EdgeSimulator:
    return EdgeSimulator(
        ch.soap("edge", "/xds/repository"),
        f"mllp+tls://localhost:{ch.feed_port}",
        ch.identities["edge"].context(),
        affinity_domain_oid=OID,
        repository_unique_id=REPO,
        faults=faults,
    )


def _phr(ch, faults=()) -> PhrSimulator:
    return PhrSimulator(
        ch.soap("phr", "/xds/registry"),
        lambda _r: ch.soap("phr", "/xds/repository"),
        affinity_domain_oid=OID,
        faults=faults,
    )


def test_edge_sends_and_phr_fetches_a_study(clearinghouse, study_dir, tmp_path):
    study = collect([study_dir], tmp_path / "report.txt")
    sub = _edge(clearinghouse).send(study, dob="19800101", password="pw")
    fetched = _phr(clearinghouse).fetch(sub.access_code.upper(), "1980-01-01", "pw", tmp_path / "out")
    got = {f.path.name: f.path.read_bytes() for f in fetched}
    originals = [p.read_bytes() for p in sorted(study_dir.iterdir())] + [(tmp_path / "report.txt").read_bytes()]
    assert sorted(got.values()) == sorted(originals)
    assert sum(n.endswith(".dcm") for n in got) == 2 and sum(n.endswith(".txt") for n in got) == 1


@pytest.mark.parametrize(
    "fault, message",
    [
        (Fault.WRONG_RSNA_ID, "XDSUnknownPatientId"),
        (Fault.MISSING_SLOT, "creationTime"),
        (Fault.BAD_HASH, "XDSRepositoryMetadataError"),
    ],
)
def test_edge_faults_are_refused_by_the_clearinghouse(clearinghouse, study_dir, fault, message):
    with pytest.raises(EdgeError, match=message):
        _edge(clearinghouse, [fault]).send(collect([study_dir]), dob="19800101")


def test_phr_with_the_wrong_rsna_id_finds_nothing(clearinghouse, study_dir, tmp_path):
    sub = _edge(clearinghouse).send(collect([study_dir]), dob="19800101")
    with pytest.raises(PhrError, match="no documents found"):
        _phr(clearinghouse, [Fault.WRONG_RSNA_ID]).fetch(sub.access_code, "19800101", None, tmp_path / "o")


def test_study_errors(tmp_path):
    (tmp_path / "notdicom.dcm").write_text("hello")
    with pytest.raises(StudyError, match="not a readable DICOM"):
        collect([tmp_path / "notdicom.dcm"])
    with pytest.raises(StudyError, match="no such file"):
        collect([tmp_path / "missing"])
    with pytest.raises(StudyError, match="nothing to send"):
        collect([])


def test_simulator_cli(clearinghouse, study_dir, tmp_path):
    ident_e, ident_p = clearinghouse.identities["edge"], clearinghouse.identities["phr"]
    base = f"https://localhost:{clearinghouse.https_port}"
    cli = [sys.executable, "-m", "clearinghouse.cli"]
    edge_send = [
        *cli, "edge", "send", "--server", base, "--feed", f"mllp+tls://localhost:{clearinghouse.feed_port}",
        "--ca", str(ident_e.ca), "--cert", str(ident_e.cert), "--key", str(ident_e.key), "--dob", "19700101",
    ]  # fmt: skip

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=120)

    sent = run(*edge_send, "--report", str(tmp_path / "report.txt"), str(study_dir))
    assert sent.returncode == 0, sent.stderr
    code = next(line.split(":", 1)[1].strip() for line in sent.stdout.splitlines() if "Access code:" in line)
    fetched = run(
        *cli, "phr", "fetch", "--server", base, "--ca", str(ident_p.ca), "--cert", str(ident_p.cert),
        "--key", str(ident_p.key), "--access-code", code, "--dob", "19700101", "--out", str(tmp_path / "dl"),
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert "3 document(s) saved" in fetched.stdout
    refused = run(*edge_send, "--fault", "bad-hash", str(study_dir))
    assert refused.returncode == 1 and "XDSRepositoryMetadataError" in refused.stderr


def _sink(ch, who: str, source_id: str):
    from clearinghouse.audit import AuditNode, SyslogTlsSink

    return SyslogTlsSink(
        "localhost", ch.ch.audit.syslog_tls.port, ch.identities[who].context(), AuditNode(source_id=source_id)
    )


@pytest.mark.parametrize("faults", [(), (Fault.NO_AUDIT,)])
def test_simulators_audit_their_side_unless_told_not_to(clearinghouse, study_dir, tmp_path, faults):
    import uuid

    from atna_client import search

    from clearinghouse.rsna_id import compute_rsna_id, patient_cx

    tag = uuid.uuid4().hex[:8]
    edge_sink, phr_sink = _sink(clearinghouse, "edge", f"EDGE-{tag}"), _sink(clearinghouse, "phr", f"PHR-{tag}")
    edge = _edge(clearinghouse, faults)
    edge.audit, edge.node = edge_sink, edge_sink.node
    sub = edge.send(collect([study_dir]), dob="19800101")
    phr = PhrSimulator(
        clearinghouse.soap("phr", "/xds/registry"),
        lambda _r: clearinghouse.soap("phr", "/xds/repository"),
        affinity_domain_oid=OID,
        faults=faults,
        audit=phr_sink,
        node=phr_sink.node,
    )
    phr.fetch(sub.access_code, "19800101", None, tmp_path / "o")
    assert edge_sink.flush(15) and phr_sink.flush(15)
    patient = patient_cx(compute_rsna_id(sub.access_code, "19800101"), OID)
    assert patient == sub.patient_id

    def events(source: str) -> list:
        return [
            e
            for e in search(clearinghouse, [("source", source), ("_count", "100")]).get("entry", [])
            if e.get("search", {}).get("mode") == "match"
        ]

    import time

    deadline = time.monotonic() + (3 if faults else 15)
    while time.monotonic() < deadline and not (events(f"EDGE-{tag}") and events(f"PHR-{tag}")):
        time.sleep(0.1)
    expected = 0 if faults else 1
    assert len(events(f"EDGE-{tag}")) == expected  # ITI-41 Export by the edge
    assert len(events(f"PHR-{tag}")) == expected  # ITI-43 Import by the PHR
    edge_sink.close()
    phr_sink.close()
