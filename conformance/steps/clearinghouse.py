"""Steps for features/clearinghouse: the suite plays the edge and the PHR against the target."""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from lxml import etree
from pydicom.data import get_testdata_file
from pytest_bdd import given, parsers, then, when

from clearinghouse import pki
from clearinghouse.rsna_id import compute_rsna_id, patient_cx
from clearinghouse.soap.client import SoapClientError, SoapFault, SoapReply
from clearinghouse.tls import client_context
from clearinghouse.xmlsafe import NS, qname
from conformance import xds_builder as xb
from conformance.edge import new_access_code, registry_errors
from conformance.expect import expect
from conformance.phr import ITI18_ACTION, ITI43_ACTION, Entry, entries_of
from conformance.study import Study, collect
from conformance.target import Target

SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
SAMPLES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"]
REPORT_TEXT = b"FINDINGS: unremarkable.\nIMPRESSION: normal study.\n"


@dataclass
class World:
    tmp: Path
    access_code: str = ""
    dob: str = ""
    password: str | None = None
    patient_id: str = ""
    study: Study | None = None
    sent: dict[str, bytes] = field(default_factory=dict)  # uniqueId -> bytes
    reply: SoapReply | None = None
    message_id: str = ""
    phr_patient: str = ""
    entries: list[Entry] = field(default_factory=list)
    retrieved: SoapReply | None = None
    query_reply: SoapReply | None = None
    refusal: BaseException | None = None


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def _study(world: World, images: int, report: bool) -> Study:
    paths = [Path(get_testdata_file(n)) for n in SAMPLES[:images]]
    report_path = None
    if report:
        report_path = world.tmp / "report.txt"
        report_path.write_bytes(REPORT_TEXT)
    return collect(paths, report_path)


def _remember(world: World, study: Study, specs: list[xb.DocSpec]) -> None:
    files = [i.path for i in study.instances] + ([study.report.path] if study.report else [])
    world.study = study
    world.sent = {s.unique_id or "": f.read_bytes() for s, f in zip(specs, files, strict=True)}


# --- patient and feed -------------------------------------------------------------------------------


@given("a test patient with access code, date of birth and password")
def a_test_patient(world: World, target: Target) -> None:
    world.access_code, world.dob, world.password = new_access_code(), "19720815", "Secret-1"
    world.patient_id = patient_cx(
        compute_rsna_id(world.access_code, world.dob, world.password), target.affinity_domain_oid
    )


@given("the edge has fed the patient to the clearinghouse")
def fed(world: World, target: Target) -> None:
    ack = target.edge().feed(world.patient_id)
    expect(b"MSA|AA|" in ack, expected="an HL7 ACK with MSA-1 AA", actual=ack[:200], ref="ITI TF-2a 3.8.4.2")


# --- the edge submits -------------------------------------------------------------------------------


@when(
    parsers.re(
        r"the edge submits (?P<images>\d+) DICOM images? and (?P<report>a text report|no report) "
        r"(?P<mode>with MTOM|inline)"
    )
)
def submit(world: World, target: Target, images: str, report: str, mode: str) -> None:
    study = _study(world, int(images), report == "a text report")
    edge = target.edge()
    specs = edge.document_specs(study)
    _remember(world, study, specs)
    world.reply, world.message_id = edge.submit(world.patient_id, study, inline=mode == "inline", specs=specs)


DEFECTS = {
    "a hash that is not the document's SHA-1": lambda specs: setattr(specs[0], "hash", "0" * 40),
    "a size that is not the document's size": lambda specs: setattr(specs[0], "size", 1),
    "no classCode on a document entry": lambda specs: setattr(specs[0], "omit", frozenset({"classCode"})),
    "no uniqueId on a document entry": lambda specs: setattr(specs[0], "omit", frozenset({"uniqueId"})),
    "the same uniqueId on two documents": lambda specs: setattr(specs[1], "unique_id", specs[0].unique_id),
}


@when(parsers.parse("the edge submits a study with {defect}"))
def submit_defective(world: World, target: Target, defect: str) -> None:
    study = _study(world, 2, False)
    edge = target.edge()
    specs = edge.document_specs(study)
    if defect == "a document entry without its document":
        from conformance.edge import provide_and_register_request

        request, parts = provide_and_register_request(
            world.patient_id, study, specs, source_id=edge.source_id, inline=False
        )
        request.remove(request.findall("xdsb:Document", NS)[-1])
        world.reply = edge.repository.call(
            "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b", request, attachments=parts[:-1], mtom=True
        )
        world.reply.close()
        return
    DEFECTS[defect](specs)
    world.reply, world.message_id = edge.submit(world.patient_id, study, specs=specs)


@when("the edge submits a study for a patient that was never fed")
def submit_unfed(world: World, target: Target) -> None:
    stranger = patient_cx(compute_rsna_id(new_access_code(), "19500101"), target.affinity_domain_oid)
    world.reply, world.message_id = target.edge().submit(stranger, _study(world, 1, False))


@then("the submission succeeds")
def submission_succeeds(world: World) -> None:
    assert world.reply is not None
    status = world.reply.body.get("status")
    expect(
        status == SUCCESS,
        expected=f"RegistryResponse status {SUCCESS}",
        actual=f"{status} {registry_errors(world.reply.body)}",
        ref="ITI TF-2b 3.41.4.2.2",
    )


@then(parsers.parse("the submission fails with error {code}"))
def submission_fails(world: World, code: str) -> None:
    assert world.reply is not None
    status = world.reply.body.get("status")
    codes = [c for c, _ in registry_errors(world.reply.body)]
    expect(
        status == FAILURE and code in codes,
        expected=f"status Failure with error {code}",
        actual=f"{status} {registry_errors(world.reply.body)}",
        ref="ITI TF-3 4.2.4 / ITI TF-2b 3.41.4.1.3",
    )


@then("the response carries the ITI-41 response action and relates to the request")
def addressing(world: World) -> None:
    assert world.reply is not None
    action = world.reply.action
    expect(
        action == "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse",
        expected="wsa:Action urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse",
        actual=action,
        ref="ITI TF-2b 3.41.4.2.2; ITI TF-2x V.3.2.1",
    )
    expect(
        world.reply.relates_to == world.message_id,
        expected=f"wsa:RelatesTo {world.message_id}",
        actual=world.reply.relates_to,
        ref="ITI TF-2x V.3.2.1 (WS-Addressing)",
    )


# --- the PHR finds and retrieves --------------------------------------------------------------------


@when("the PHR computes the patient ID from the access code and date of birth")
def phr_patient(world: World, target: Target) -> None:
    typed = world.access_code.upper().replace("-", " ")  # as a patient might type it
    iso = f"{world.dob[:4]}-{world.dob[4:6]}-{world.dob[6:]}"
    world.phr_patient = patient_cx(compute_rsna_id(typed, iso, world.password), target.affinity_domain_oid)
    expect(
        world.phr_patient == world.patient_id,
        expected=world.patient_id,
        actual=world.phr_patient,
        ref="RSNA Image Share RSNA-ID (docs/rsna-id.md)",
    )


@when("the PHR computes the patient ID with a wrong password")
def phr_wrong_password(world: World, target: Target) -> None:
    world.phr_patient = patient_cx(
        compute_rsna_id(world.access_code, world.dob, "not-the-password"), target.affinity_domain_oid
    )


@when("the PHR finds the documents with FindDocuments")
def phr_find(world: World, target: Target) -> None:
    reply = target.soap("consumer", "/xds/registry").call(ITI18_ACTION, xb.find_documents(world.phr_patient))
    expect(
        reply.body.get("status") == SUCCESS,
        expected="AdhocQueryResponse status Success",
        actual=f"{reply.body.get('status')} {registry_errors(reply.body)}",
        ref="ITI TF-2a 3.18.4.1.3",
    )
    world.entries = entries_of(reply.body)


@then(parsers.parse("the PHR finds {count:d} documents"))
def phr_found(world: World, count: int) -> None:
    expect(
        len(world.entries) == count,
        expected=f"{count} DocumentEntries",
        actual=len(world.entries),
        ref="ITI TF-2a 3.18.4.1.2.3.7.1 FindDocuments",
    )


@then("every document entry carries size, hash and repositoryUniqueId matching what was sent")
def entries_match(world: World, target: Target) -> None:
    import hashlib

    for e in world.entries:
        data = world.sent.get(e.unique_id)
        expect(data is not None, expected="only documents the edge sent", actual=e.unique_id, ref="ITI TF-3 4.2.3.2")
        assert data is not None
        expect(e.size == len(data), expected=f"size {len(data)}", actual=e.size, ref="ITI TF-3 4.2.3.2.19")
        sha1 = hashlib.sha1(data).hexdigest()  # noqa: S324 - XDS hash is SHA-1
        expect((e.sha1 or "").lower() == sha1, expected=f"hash {sha1}", actual=e.sha1, ref="ITI TF-3 4.2.3.2.10")
        expect(
            bool(e.repository_unique_id),
            expected="a repositoryUniqueId",
            actual=e.repository_unique_id,
            ref="ITI TF-3 4.2.3.2.18",
        )


def _retrieve(target: Target, ids: list[tuple[str, str]]) -> SoapReply:
    request = etree.Element(qname("xdsb", "RetrieveDocumentSetRequest"), nsmap={"xdsb": NS["xdsb"]})
    for repo, uid in ids:
        dr = etree.SubElement(request, qname("xdsb", "DocumentRequest"))
        etree.SubElement(dr, qname("xdsb", "RepositoryUniqueId")).text = repo
        etree.SubElement(dr, qname("xdsb", "DocumentUniqueId")).text = uid
    return target.soap("consumer", "/xds/repository").call(ITI43_ACTION, request)


@when("the PHR retrieves every document")
def phr_retrieve(world: World, target: Target) -> None:
    world.retrieved = _retrieve(target, [(e.repository_unique_id, e.unique_id) for e in world.entries])


@when("the PHR retrieves every document and one that does not exist")
def phr_retrieve_missing(world: World, target: Target) -> None:
    ids = [(target.repository_unique_id, uid) for uid in world.sent]
    world.retrieved = _retrieve(target, ids + [(target.repository_unique_id, "1.2.3.4.5.6.7.404")])


@then("the retrieval succeeds as MTOM")
def retrieval_mtom(world: World) -> None:
    reply = world.retrieved
    assert reply is not None
    rr = reply.body.find("rs:RegistryResponse", NS)
    status = rr.get("status") if rr is not None else None
    expect(status == SUCCESS, expected="RegistryResponse status Success", actual=status, ref="ITI TF-2b 3.43.4.2.3")
    expect(
        reply.mtom is not None,
        expected="an MTOM (multipart/related) response",
        actual=reply.content_type,
        ref="ITI TF-2b 3.43.4.2.2",
    )


@then("the PHR receives exactly the bytes the edge sent")
def same_bytes(world: World) -> None:
    reply = world.retrieved
    assert reply is not None and reply.mtom is not None
    got = {}
    for dr in reply.body.findall("xdsb:DocumentResponse", NS):
        uid = dr.findtext("xdsb:DocumentUniqueId", namespaces=NS) or ""
        inc = dr.find("xdsb:Document/xop:Include", NS)
        expect(inc is not None, expected="xop:Include in each Document", actual=uid, ref="ITI TF-2b 3.43.4.2.2")
        assert inc is not None
        got[uid] = reply.mtom.resolve_cid(inc.get("href", "")).read_bytes()
    reply.close()
    expect(
        got == world.sent,
        expected=f"{len(world.sent)} documents byte for byte",
        actual=f"{len(got)} documents, differing: {sorted(k for k in world.sent if got.get(k) != world.sent[k])}",
        ref="ITI TF-2b 3.43.4.2.3",
    )


@then(parsers.parse("the retrieval status is PartialSuccess with error {code}"))
def partial(world: World, code: str) -> None:
    assert world.retrieved is not None
    rr = world.retrieved.body.find("rs:RegistryResponse", NS)
    status = rr.get("status") if rr is not None else None
    codes = [c for c, _ in registry_errors(world.retrieved.body)]
    world.retrieved.close()
    expect(
        status == PARTIAL and codes == [code],
        expected=f"PartialSuccess with one {code}",
        actual=f"{status} {codes}",
        ref="ITI TF-2b 3.43.4.2.3",
    )


@then("the patient has no documents at the clearinghouse")
def no_documents(world: World, target: Target) -> None:
    reply = target.soap("consumer", "/xds/registry").call(ITI18_ACTION, xb.find_documents(world.patient_id))
    found = entries_of(reply.body)
    expect(
        not found,
        expected="no DocumentEntry for the patient after a refused submission",
        actual=[e.unique_id for e in found],
        ref="ITI TF-2b 3.42.4.1.3 (all or nothing)",
    )


# --- stored query errors ----------------------------------------------------------------------------


@when("the PHR sends FindDocuments without a patient ID")
def query_without_patient(world: World, target: Target) -> None:
    request = xb.query(xb.FIND_DOCUMENTS, {"$XDSDocumentEntryStatus": xb.quoted_list([xb.APPROVED])})
    world.query_reply = target.soap("consumer", "/xds/registry").call(ITI18_ACTION, request)


@when("the PHR sends an unknown stored query")
def unknown_query(world: World, target: Target) -> None:
    request = xb.query("urn:uuid:00000000-0000-4000-8000-000000000000", {"$patientId": xb.quoted(world.patient_id)})
    world.query_reply = target.soap("consumer", "/xds/registry").call(ITI18_ACTION, request)


@then(parsers.parse("the query fails with error {code}"))
def query_fails(world: World, code: str) -> None:
    assert world.query_reply is not None
    body = world.query_reply.body
    codes = [c for c, _ in registry_errors(body)]
    expect(
        body.get("status") == FAILURE and code in codes,
        expected=f"AdhocQueryResponse Failure with {code}",
        actual=f"{body.get('status')} {codes}",
        ref="ITI TF-2a 3.18.4.1.3",
    )


# --- security -----------------------------------------------------------------------------------------


def _attempt(target: Target, ctx: ssl.SSLContext) -> BaseException | None:
    parts = urlsplit(target.base_url)
    try:
        with (
            socket.create_connection((parts.hostname, parts.port or 443), timeout=15) as raw,
            ctx.wrap_socket(raw, server_hostname=parts.hostname) as tls,
        ):
            tls.sendall(b"GET /xds/registry?wsdl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if not tls.recv(64):
                return ConnectionResetError("closed without an answer")
    except (ssl.SSLError, OSError) as exc:
        return exc
    return None


@when("a client connects without a client certificate")
def no_certificate(world: World, target: Target) -> None:
    world.refusal = _attempt(target, client_context(target.ca)) or AssertionError("accepted")


@when("a client connects with a certificate from an unknown CA")
def unknown_ca(world: World, target: Target) -> None:
    rogue_ca = pki.create_ca("Conformance Rogue CA")
    rogue = pki.issue_certificate(rogue_ca, "rogue-client")
    (world.tmp / "rogue.cert.pem").write_bytes(rogue.cert_pem)
    pki.write_private(world.tmp / "rogue.key.pem", rogue.key_pem)
    ctx = client_context(target.ca, world.tmp / "rogue.cert.pem", world.tmp / "rogue.key.pem")
    world.refusal = _attempt(target, ctx) or AssertionError("accepted")


@then("the connection is refused")
def refused(world: World) -> None:
    expect(
        not isinstance(world.refusal, AssertionError),
        expected="the TLS connection refused",
        actual="the connection was accepted and answered",
        ref="ITI TF-2a 3.19.6 (mutual authentication)",
    )


@when("the PHR tries to submit a study")
def consumer_submits(world: World, target: Target) -> None:
    if target.source == target.consumer:
        pytest.skip("judging authorization by role needs separate source and consumer certificates")
    try:
        target.edge(as_role="consumer").submit(world.patient_id, _study(world, 1, False))
        world.refusal = None
    except SoapClientError as exc:
        world.refusal = exc


@when("the edge tries to query for documents")
def source_queries(world: World, target: Target) -> None:
    try:
        target.soap("source", "/xds/registry").call(ITI18_ACTION, xb.find_documents(world.patient_id))
        world.refusal = None
    except SoapClientError as exc:
        world.refusal = exc


@then("the request is refused as not authorized")
def not_authorized(world: World) -> None:
    exc = world.refusal
    expect(
        isinstance(exc, SoapFault) and exc.code == "Sender",
        expected="a SOAP Sender fault (not authorized)",
        actual=repr(exc),
        ref="ITI TF-1 9.4 (access control by role)",
    )


@when("the PHR sends a query with an external entity declaration")
def xxe(world: World, target: Target) -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://www.w3.org/2005/08/addressing">'
        b"<s:Header><a:Action>urn:ihe:iti:2007:RegistryStoredQuery</a:Action><a:MessageID>urn:uuid:x</a:MessageID>"
        b"</s:Header><s:Body>&x;</s:Body></s:Envelope>"
    )
    parts = urlsplit(target.base_url)
    ident = target.consumer
    conn = http.client.HTTPSConnection(
        parts.hostname, parts.port, timeout=30, context=client_context(target.ca, ident.cert, ident.key)
    )
    conn.request("POST", "/xds/registry", body=body, headers={"Content-Type": "application/soap+xml"})
    resp = conn.getresponse()
    world.refusal = _FaultAnswer(resp.status, resp.read())
    conn.close()


@dataclass
class _FaultAnswer(Exception):
    status: int
    body: bytes


@then("the answer is a SOAP Sender fault")
def sender_fault(world: World) -> None:
    answer: Any = world.refusal
    ok = isinstance(answer, _FaultAnswer) and answer.status == 400 and b"Sender" in answer.body
    expect(
        ok and b"root:" not in answer.body,
        expected="HTTP 400 with a SOAP 1.2 Sender fault, nothing resolved",
        actual=f"HTTP {getattr(answer, 'status', '?')} {getattr(answer, 'body', b'')[:200]!r}",
        ref="W3C SOAP 1.2 part 1, 5.4.6; ITI TF-2x V.3",
    )
