"""ITI-86 Remove Documents (RMD, ITI TF-2b 3.86) on the repository's SOAP endpoint over HTTPS: a
Document Administrator (role admin) removes stored documents; Success, PartialSuccess and Failure
with XDSDocumentUniqueIdError / XDSUnknownRepositoryId located at the uniqueId; the role check;
the audit event; the WSDL. On SQLite and PostgreSQL."""

from __future__ import annotations

import ssl
import urllib.request

import atna_client as arr
import edge
import pytest
from conftest import running_instance
from sqlalchemy import select

from clearinghouse.soap.client import SoapFault
from clearinghouse.xmlsafe import NS, qname
from repository.models import StoredDocument
from repository.remove import ITI86_ACTION, RMD_NS, DocumentRequest, build_request


@pytest.fixture(scope="module")
def ch(backend, tmp_path_factory):
    with running_instance(
        tmp_path_factory.mktemp(f"iti86-{backend}"), backend, retention_purge_interval_seconds=0
    ) as running:
        running.add_identity("administrator", ["admin"])
        yield running


def stored_study(running, samples: list[str]) -> edge.Study:
    patient = edge.patient_for(edge.new_access_code(), "19800101")
    client = running.feed_client()
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()
    st = edge.study(patient, samples=samples, report=False)
    assert edge.submit(running.soap("edge", "/xds/repository"), st).body.get("status") == edge.SUCCESS
    return st


def remove(running, unique_ids: list[str], repository_id: str = edge.REPOSITORY_ID, who: str = "administrator"):
    request = build_request([DocumentRequest(repository_id, u) for u in unique_ids])
    return running.soap(who, "/xds/repository").call(ITI86_ACTION, request).body


def store_keys(running, unique_ids: list[str]) -> dict[str, str]:
    with running.ch.sessions() as session:
        rows = session.execute(
            select(StoredDocument.unique_id, StoredDocument.store_key).where(StoredDocument.unique_id.in_(unique_ids))
        )
        return dict(rows.all())


def test_remove_documents_success_then_not_found(ch):
    st = stored_study(ch, ["CT_small.dcm", "MR_small.dcm"])
    keys = store_keys(ch, st.unique_ids)
    assert len(keys) == 2
    body = remove(ch, st.unique_ids)
    assert body.tag == qname("rs", "RegistryResponse")
    assert body.get("status") == edge.SUCCESS and edge.errors_of(body) == []
    assert store_keys(ch, st.unique_ids) == {}
    # The bytes are gone from the store as well as the rows.
    store_root = ch.settings.effective_store_path
    assert not any(p.name in keys.values() for p in store_root.rglob("*") if p.is_file())
    # The consumer now gets ITI-43's answer for a document that is not available.
    got = edge.retrieve(ch.soap("phr", "/xds/repository"), st.unique_ids)
    rr = got.body.find("rs:RegistryResponse", NS)
    assert rr.get("status") == edge.FAILURE
    assert {c for c, _ in edge.errors_of(rr)} == {"XDSDocumentUniqueIdError"}
    # Removing again: nothing is held any more, so Failure, each document located.
    body = remove(ch, st.unique_ids)
    assert body.get("status") == edge.FAILURE
    errors = list(body.iter(qname("rs", "RegistryError")))
    assert [e.get("errorCode") for e in errors] == ["XDSDocumentUniqueIdError"] * 2
    assert sorted(e.get("location") for e in errors) == sorted(st.unique_ids)
    # Audited by the repository as ITI TF-2b 3.86.5 says: Patient Record, Delete, each document.
    ev = arr.events_for(ch, [("subtype", "ITI-86"), ("entity-id", st.unique_ids[0]), ("outcome", "0")])[0]
    assert ev["type"]["code"] == "110110" and ev["action"] == "D"
    assert set(st.unique_ids) <= set(arr.entity_ids(ev))
    agents = arr.agents_by_role(ev)
    assert agents["110153"]["requestor"] is True and "administrator" in str(agents["110153"])


def test_partial_success_and_unknown_repository(ch):
    st = stored_study(ch, ["CT_small.dcm"])
    body = remove(ch, [st.unique_ids[0], "1.2.3.4.5.86404"])
    assert body.get("status") == "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
    errors = list(body.iter(qname("rs", "RegistryError")))
    assert [(e.get("errorCode"), e.get("location")) for e in errors] == [
        ("XDSDocumentUniqueIdError", "1.2.3.4.5.86404")
    ]
    other = stored_study(ch, ["CT_small.dcm"])
    body = remove(ch, other.unique_ids, repository_id="1.2.3.999")
    assert body.get("status") == edge.FAILURE
    assert [c for c, _ in edge.errors_of(body)] == ["XDSUnknownRepositoryId"]
    assert store_keys(ch, other.unique_ids) != {}
    # One answer for every problem of a request: an empty one is a Failure too.
    empty = ch.soap("administrator", "/xds/repository").call(ITI86_ACTION, build_request([])).body
    assert empty.get("status") == edge.FAILURE and [c for c, _ in edge.errors_of(empty)] == ["XDSRepositoryError"]


@pytest.mark.parametrize("who", ["edge", "phr"])
def test_only_an_administrator_may_remove(ch, who):
    st = stored_study(ch, ["CT_small.dcm"])
    with pytest.raises(SoapFault) as exc:
        remove(ch, st.unique_ids, who=who)
    assert exc.value.status == 403 and "role 'admin'" in exc.value.reason
    assert store_keys(ch, st.unique_ids) != {}
    arr.events_for(ch, [("subtype", "110132"), ("agent", who)])


def test_wsdl_lists_remove_documents(ch):
    ident = ch.identities["phr"]
    ctx = ssl.create_default_context(cafile=str(ident.ca))
    ctx.load_cert_chain(str(ident.cert), str(ident.key))
    with urllib.request.urlopen(ch.url("/xds/repository?wsdl"), context=ctx) as resp:
        wsdl = resp.read().decode()
    assert "DocumentRepository_RemoveDocuments" in wsdl and ITI86_ACTION in wsdl and RMD_NS in wsdl
    assert "RemoveDocumentsRequest" in wsdl
