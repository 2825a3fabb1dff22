"""The study a PHR session preloads: submitted through the real ITI-8 and ITI-41 path by the reference
edge, as an internal participant of the clearinghouse (``conformance-preload``, role source)."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file

from clearinghouse import db, participants, pki
from clearinghouse.config import Settings
from conformance.edge import EdgeSimulator
from conformance.sessions import Preloader, TestPatient
from conformance.study import Study, collect

PRELOAD_PARTICIPANT = "conformance-preload"
SAMPLES = ("CT_small.dcm", "MR_small.dcm")
REPORT = b"FINDINGS: no acute abnormality.\nIMPRESSION: normal study (conformance test data).\n"


def sample_study(workdir: Path) -> Study:
    """Two DICOM images of pydicom's sample data and a text report."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "report.txt"
    report.write_bytes(REPORT)
    return collect([Path(get_testdata_file(n)) for n in SAMPLES], report)


def edge_preloader(edge: EdgeSimulator, workdir: Path) -> Preloader:
    def preload(patient: TestPatient) -> list[str]:
        sub = edge.send(
            sample_study(workdir), dob=patient.dob, password=patient.password, access_code=patient.access_code
        )
        return sub.unique_ids

    return preload


def preload_identity(settings: Settings, sessions) -> tuple[Path, Path]:  # noqa: ANN001 - a sessionmaker
    """Certificate and key of the internal preloading edge, issued from the clearinghouse CA once."""
    out = settings.home / "conformance"
    cert, key = out / f"{PRELOAD_PARTICIPANT}.cert.pem", out / f"{PRELOAD_PARTICIPANT}.key.pem"
    if cert.exists() and key.exists():
        return cert, key
    ca = pki.load_ca(settings.pki_dir)
    issued = pki.issue_certificate(ca, PRELOAD_PARTICIPANT, client=True)
    with db.transaction(sessions) as session:
        participants.register(session, PRELOAD_PARTICIPANT, ["source"], issued.certificate, "issued")
    out.mkdir(parents=True, exist_ok=True)
    pki.write_private(key, issued.key_pem)
    cert.write_bytes(issued.cert_pem)
    return cert, key
