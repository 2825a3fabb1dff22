"""A clearinghouse started in process for the suite to test when no remote target is given: this
project's own, with a fresh home, a development PKI and two participants."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clearinghouse import db, participants, pki
from clearinghouse.app import build, prepare_home
from clearinghouse.config import Settings
from conformance.target import Identity, Target


def _issue(settings: Settings, out: Path, name: str, role: str, sessions) -> Identity:  # noqa: ANN001
    ca = pki.load_ca(settings.pki_dir)
    issued = pki.issue_certificate(ca, name)
    with db.transaction(sessions) as session:
        participants.register(session, name, [role], issued.certificate, "issued")
    (out / f"{name}.cert.pem").write_bytes(issued.cert_pem)
    pki.write_private(out / f"{name}.key.pem", issued.key_pem)
    return Identity(out / f"{name}.cert.pem", out / f"{name}.key.pem")


@contextmanager
def local_clearinghouse(tmp: Path) -> Iterator[Target]:
    settings = Settings(home=tmp / "home", https_port=0, feed_port=0, http_threads=8)
    prepare_home(settings)
    ch = build(settings)
    ch.start()
    try:
        out = tmp / "participants"
        out.mkdir(exist_ok=True)
        yield Target(
            base_url=f"https://localhost:{ch.https.port}",
            feed_url=f"mllp+tls://localhost:{ch.feed.port}",
            ca=settings.ca_cert_path,
            source=_issue(settings, out, "conformance-edge", "source", ch.sessions),
            consumer=_issue(settings, out, "conformance-phr", "consumer", ch.sessions),
            affinity_domain_oid=settings.affinity_domain_oid,
            repository_unique_id=settings.repository_unique_id,
            spool=tmp / "spool",
        )
    finally:
        ch.stop()
