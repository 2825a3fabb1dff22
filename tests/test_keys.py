"""Key rotation and documents from before encryption, across server restarts on one database (both
databases): `clearinghouse keys rotate` re-wraps data keys while documents exist and servers run,
without touching the stored objects, after which the old KEK can be removed; plaintext documents
stored before encryption was turned on are still served."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import edge
import pytest
from atna_client import entity_ids, resources, search, wait_for
from conftest import PG_URL, Running, _engine_for
from sqlalchemy import select, text

from clearinghouse.app import build, prepare_home
from clearinghouse.cli import main
from clearinghouse.config import Settings
from clearinghouse.xmlsafe import NS
from repository import crypto
from repository.keys import keys_dir
from repository.models import StoredDocument
from repository.store_sealed import build_sealed_store, build_store


class Cluster:
    """One home and one database; servers are started and stopped on it in turn."""

    def __init__(self, tmp: Path, backend: str) -> None:
        self.tmp = tmp
        self.engine, self.cleanup = _engine_for(backend)
        self.identities: dict = {}
        self.database_url = ""
        if self.cleanup:
            schema = self.cleanup[1]
            self.database_url = f"{PG_URL}?options=-csearch_path%3D{schema}"

    def settings(self, **overrides: object) -> Settings:
        # Every listener on an ephemeral port, so that parallel tests never compete for a default one.
        ports = {f.name: 0 for f in dataclasses.fields(Settings) if f.name.endswith("_port")}
        base = {**ports, "database_url": self.database_url, "http_threads": 4}
        return Settings(home=self.tmp / "home", **{**base, **overrides})  # type: ignore[arg-type]

    @contextmanager
    def server(self, **overrides: object) -> Iterator[Running]:
        settings = self.settings(**overrides)
        prepare_home(settings)
        ch = build(settings, engine=self.engine)
        ch.start()
        running = Running(ch, settings, self.tmp, self.identities)
        if not self.identities:
            for name, roles in (("edge", ["source"]), ("phr", ["consumer"]), ("auditor", ["auditor"])):
                running.add_identity(name, roles)
        try:
            yield running
        finally:
            ch.stop()

    def cli(self, capsys, *args: str) -> tuple[int, str]:
        argv = [*args, "--home", str(self.tmp / "home")]
        if self.database_url:
            argv += ["--database-url", self.database_url]
        code = main(argv)
        return code, capsys.readouterr().out

    def close(self) -> None:
        if self.cleanup:
            admin, schema = self.cleanup
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


@pytest.fixture
def cluster(backend, tmp_path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, backend)
    try:
        yield c
    finally:
        c.close()


def _submit(running: Running) -> edge.Study:
    patient = edge.patient_for(edge.new_access_code(), "19811111")
    client = running.feed_client("edge")
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()
    study = edge.study(patient, samples=["CT_small.dcm"])
    reply = edge.submit(running.soap("edge", "/xds/repository"), study, mtom=True)
    assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)
    return study


def _retrieves(running: Running, *studies: edge.Study) -> None:
    uids = [u for s in studies for u in s.unique_ids]
    got = edge.retrieve(running.soap("phr", "/xds/repository"), uids)
    assert got.body.find("rs:RegistryResponse", NS).get("status") == edge.SUCCESS, edge.errors_of(got.body)
    assert edge.retrieved_documents(got) == {u: c for s in studies for u, c in s.contents.items()}
    got.close()


def _rows(running: Running, study: edge.Study) -> list[StoredDocument]:
    with running.ch.sessions() as session:
        rows = list(session.scalars(select(StoredDocument).where(StoredDocument.unique_id.in_(study.unique_ids))))
        for r in rows:
            session.expunge(r)
        return rows


def _raw(running: Running, rows: list[StoredDocument]) -> dict[str, bytes]:
    store = build_store(running.settings)
    return {r.unique_id: b"".join(store.chunks(r.store_key)) for r in rows}


def test_rotation_rewraps_without_touching_documents_and_the_old_kek_can_go(cluster, capsys):
    with cluster.server() as first:
        a = _submit(first)
        [k1] = {r.kek_id for r in _rows(first, a)}
        sealed_before = _raw(first, _rows(first, a))

        code, out = cluster.cli(capsys, "keys", "generate")
        assert code == 0, out
        k2 = (keys_dir(first.settings) / "current").read_text().strip()
        assert k2 != k1

        # Rotate while the server (which started before k2 existed) is running.
        code, out = cluster.cli(capsys, "keys", "rotate")
        assert code == 0, out
        assert f"re-wrapped {len(a.unique_ids)} data key(s) under KEK {k2}" in out
        rows = _rows(first, a)
        assert {r.kek_id for r in rows} == {k2}
        assert _raw(first, rows) == sealed_before  # the documents themselves were not re-encrypted
        _retrieves(first, a)  # the running server picks up the new KEK to unwrap

        b = _submit(first)  # wrapped under the KEK current when this server started
        assert {r.kek_id for r in _rows(first, b)} == {k1}
        code, out = cluster.cli(capsys, "keys", "status")
        assert f"{k1}: {len(b.unique_ids)} document(s)" in out and "keys rotate" in out

        def rotation_audited() -> bool:
            events = resources(search(first, [("type", "110113"), ("subtype", "110129"), ("_count", "100")]))
            return any("urn:isn-clearinghouse:encryption-keys" in entity_ids(ev) for ev in events)

        wait_for(rotation_audited, 15, "the Security Configuration audit record of the rotation")

    with cluster.server() as second:
        code, out = cluster.cli(capsys, "keys", "rotate")
        assert code == 0 and f"re-wrapped {len(b.unique_ids)} data key(s)" in out
        code, out = cluster.cli(capsys, "keys", "status")
        assert f"no document needs: {k1}" in out
        _retrieves(second, a, b)

    (keys_dir(cluster.settings()) / f"{k1}.key").unlink()
    with cluster.server() as third:
        _retrieves(third, a, b)
        code, out = cluster.cli(capsys, "keys", "status")
        assert code == 0 and k1 not in out


def test_a_document_whose_kek_was_removed_too_early_is_reported_not_lost(cluster, capsys):
    with cluster.server() as first:
        a = _submit(first)
        [k1] = {r.kek_id for r in _rows(first, a)}
    code, _ = cluster.cli(capsys, "keys", "generate")
    assert code == 0
    (keys_dir(cluster.settings()) / f"{k1}.key").unlink()  # removed before `keys rotate`
    code, out = cluster.cli(capsys, "keys", "rotate")
    assert code == 1 and f"{len(a.unique_ids)} data key(s) could not be unwrapped" in out
    code, out = cluster.cli(capsys, "keys", "status")
    assert code == 1 and f"{k1}: {len(a.unique_ids)} document(s) (NOT CONFIGURED)" in out
    with cluster.server() as second:
        got = edge.retrieve(second.soap("phr", "/xds/repository"), a.unique_ids[:1])
        [(code_, context)] = edge.errors_of(got.body)
        assert code_ == "XDSRepositoryError" and "cannot be decrypted" in context
        got.close()


def test_plaintext_documents_from_before_encryption_are_still_served(cluster, capsys):
    with cluster.server(encryption="none") as old:
        a = _submit(old)
        rows = _rows(old, a)
        assert {r.encryption for r in rows} == {"none"}
        assert _raw(old, rows) == {r.unique_id: a.contents[r.unique_id] for r in rows}
    with cluster.server() as new:
        b = _submit(new)
        assert {r.encryption for r in _rows(new, b)} == {crypto.SCHEME}
        _retrieves(new, a, b)
        code, out = cluster.cli(capsys, "keys", "status")
        assert f"plaintext documents (stored before encryption): {len(a.unique_ids)}" in out


def test_unknown_encryption_setting_is_refused(tmp_path):
    with pytest.raises(ValueError, match="encryption"):
        build_sealed_store(Settings(home=tmp_path, encryption="rot13"))
