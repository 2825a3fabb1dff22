"""Deployment shapes: a repository that registers with a remote registry over HTTPS (ITI-42 on the
wire), and the ITI-8 feed's update and merge messages as they change what the registry accepts."""

from __future__ import annotations

import edge
from conftest import running_instance

from clearinghouse import db, participants, pki
from clearinghouse.xmlsafe import NS


def test_repository_registers_with_a_remote_registry(clearinghouse, tmp_path):
    # The remote repository authenticates to the registry with a certificate the registry issued.
    ca = pki.load_ca(clearinghouse.settings.pki_dir)
    repo_identity = pki.issue_certificate(ca, "remote-repository")
    with db.transaction(clearinghouse.ch.sessions) as session:
        participants.register(session, "remote-repository", ["source"], repo_identity.certificate, "issued")
    ident = clearinghouse.write_identity("remote-repository", repo_identity)

    with running_instance(
        tmp_path / "remote",
        registry_url=clearinghouse.url("/xds/registry"),
        registry_ca=str(clearinghouse.settings.ca_cert_path),
        client_cert=str(ident.cert),
        client_key=str(ident.key),
        repository_unique_id="1.3.6.1.4.1.21367.2026.1.99",
    ) as remote:
        patient = edge.patient_for(edge.new_access_code(), "19751010")
        feed = clearinghouse.feed_client()
        assert b"MSA|AA|" in feed.send(edge.feed_message(patient))
        feed.close()
        st = edge.study(patient, samples=["CT_small.dcm"])
        for d in st.documents:
            d.repository_unique_id = "1.3.6.1.4.1.21367.2026.1.99"
        reply = edge.submit(remote.soap("edge", "/xds/repository"), st)
        assert reply.body.get("status") == edge.SUCCESS, edge.errors_of(reply.body)

        # The metadata lives in the central registry, the bytes in the remote repository.
        found = edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), patient)
        entries = found.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)
        assert {edge.slot(e, "repositoryUniqueId")[0] for e in entries} == {"1.3.6.1.4.1.21367.2026.1.99"}
        got = edge.retrieve(remote.soap("phr", "/xds/repository"), st.unique_ids, "1.3.6.1.4.1.21367.2026.1.99")
        assert edge.retrieved_documents(got) == st.contents

        # A registry refusal travels back and the remote repository keeps nothing.
        stranger = edge.patient_for(edge.new_access_code(), "19751010")
        reply = edge.submit(remote.soap("edge", "/xds/repository"), edge.study(stranger, samples=["MR_small.dcm"]))
        assert "XDSUnknownPatientId" in [c for c, _ in edge.errors_of(reply.body)]
        assert not any(
            p.is_file()
            for p in remote.settings.effective_store_path.rglob("*")
            if p.stat().st_size == len(edge.dicom_bytes("MR_small.dcm"))
        )


def test_registry_unreachable_leaves_nothing(tmp_path):
    with running_instance(tmp_path / "lonely", registry_url="https://localhost:1/xds/registry") as lonely:
        patient = edge.patient_for(edge.new_access_code(), "19751010")
        reply = edge.submit(lonely.soap("edge", "/xds/repository"), edge.study(patient, samples=["CT_small.dcm"]))
        assert "XDSRegistryNotAvailable" in [c for c, _ in edge.errors_of(reply.body)]
        assert not [p for p in lonely.settings.effective_store_path.rglob("*") if p.is_file()]


def test_feed_events_over_tls_and_merge(clearinghouse):
    prior = edge.patient_for(edge.new_access_code(), "19600101")
    surviving = edge.patient_for(edge.new_access_code(), "19600101")
    client = clearinghouse.feed_client()
    try:
        for event in ("A01", "A05", "A08"):
            assert b"MSA|AA|" in client.send(edge.feed_message(prior, event=event, version="2.3.1"))
        st = edge.study(prior, samples=["CT_small.dcm"], report=False)
        assert edge.submit(clearinghouse.soap("edge", "/xds/repository"), st).body.get("status") == edge.SUCCESS

        pid_s, rest_s = surviving.split("^^^", 1)
        pid_p, rest_p = prior.split("^^^", 1)
        a40 = (
            "MSH|^~\\&|EDGE|SITE-A|CLEARINGHOUSE|ISN|20261123120000||ADT^A40^ADT_A39|M40|P|2.5\r"
            "EVN|A40|20261123120000\r"
            f"PID|||{pid_s}^^^{rest_s}\r"
            f"MRG|{pid_p}^^^{rest_p}\r"
        ).encode()
        assert b"MSA|AA|" in client.send(a40)
        unknown = edge.feed_message(prior, event="A99")
        assert b"MSA|AR|" in client.send(unknown)
    finally:
        client.close()

    # The merged-away id no longer accepts documents; the surviving id finds what was filed before.
    reply = edge.submit(clearinghouse.soap("edge", "/xds/repository"), edge.study(prior, samples=["MR_small.dcm"]))
    assert "XDSUnknownPatientId" in [c for c, _ in edge.errors_of(reply.body)]
    found = edge.find_documents(clearinghouse.soap("phr", "/xds/registry"), surviving)
    assert len(found.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)) == 1
