"""Structured logs and the request id: one id per inbound transaction, in every log line written while it
is handled and in the audit records this node emits for it (ParticipantObjectDetail ISN-RequestID)."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import urllib.error
import urllib.request

import edge
import pytest
from atna_client import wait_for
from lxml import etree
from sqlalchemy import select

from atna.models import AuditRecord
from clearinghouse import logging_setup
from clearinghouse.audit import REQUEST_ID_DETAIL
from clearinghouse.soap.client import SoapFault

# --- formatting -----------------------------------------------------------------------------------


def _handler(fmt: str) -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logging_setup.RequestIdFilter())
    handler.setFormatter(
        logging_setup.JsonFormatter() if fmt == "json" else logging.Formatter(logging_setup.TEXT_FORMAT)
    )
    return handler, out


def test_json_lines_carry_the_request_id_of_the_scope_they_are_written_in():
    handler, out = _handler("json")
    logger = logging.getLogger("test.logging.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("outside")
        with logging_setup.request_scope("http") as scope:
            logger.info("inside %s", "formatted", extra={"participant": "site-a"})
            with logging_setup.request_scope("mllp") as inner:
                logger.warning("nested")
            logger.info("back")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["outside", "inside formatted", "nested", "back", "failed"]
    assert [line["request_id"] for line in lines] == ["", scope.request_id, inner.request_id, scope.request_id, ""]
    assert scope.request_id != inner.request_id and len(scope.request_id) == 32
    assert (
        lines[1]["participant"] == "site-a"
        and lines[1]["level"] == "INFO"
        and lines[1]["logger"] == "test.logging.json"
    )
    assert lines[2]["level"] == "WARNING"
    assert "ValueError: boom" in lines[4]["exception"]
    assert lines[0]["time"].endswith("+00:00")


def test_text_lines_show_the_request_id_and_other_threads_do_not_inherit_it():
    handler, out = _handler("text")
    logger = logging.getLogger("test.logging.text")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with logging_setup.request_scope("http") as scope:
            logger.info("in the request")
            t = threading.Thread(target=lambda: logger.info("in another thread"))
            t.start()
            t.join()
    finally:
        logger.removeHandler(handler)
    first, second = out.getvalue().splitlines()
    assert f"[{scope.request_id}]: in the request" in first
    assert "[-]: in another thread" in second


def test_configure_refuses_an_unknown_format():
    with pytest.raises(ValueError, match="log format 'xml'"):
        logging_setup.configure("INFO", "xml")


# --- through the real transports --------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.addFilter(logging_setup.RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured():
    handler = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _audit_xml_with_request_id(running, request_id: str) -> list[etree._Element]:
    """Stored audit records of this node that carry ``request_id`` (they are stored asynchronously)."""
    needle = base64.b64encode(request_id.encode())

    def found() -> list[etree._Element] | None:
        with running.ch.engine.connect() as conn:
            raws = conn.execute(select(AuditRecord.raw).where(AuditRecord.transport == "local")).scalars().all()
        hits = [etree.fromstring(r[r.index(b"<?xml") :]) for r in raws if needle in r]
        return hits or None

    return wait_for(found, 20, f"an audit record with request id {request_id}")


def _request_ids(root: etree._Element) -> list[str]:
    return [
        base64.b64decode(d.get("value")).decode()
        for d in root.iter("ParticipantObjectDetail")
        if d.get("type") == REQUEST_ID_DETAIL
    ]


def test_an_hl7_message_has_one_request_id_in_its_log_lines_and_its_audit_record(clearinghouse, captured):
    patient = edge.patient_for(edge.new_access_code(), "19810203")
    client = clearinghouse.feed_client()
    try:
        assert b"MSA|AA|" in client.send(edge.feed_message(patient))
    finally:
        client.close()
    line = next(r for r in captured.records if r.name.startswith("registry") and "ITI-8" in r.getMessage())
    rid = line.request_id
    assert rid and rid != "-"
    (record,) = _audit_xml_with_request_id(clearinghouse, rid)
    assert record.find("EventIdentification/EventTypeCode").get("csd-code") == "ITI-8"
    assert _request_ids(record) == [rid]
    # The object that carries it is the first one and still the patient the ITI-8 audit table requires.
    first = record.find("ParticipantObjectIdentification")
    assert first.get("ParticipantObjectTypeCodeRole") == "1" and patient.split("^")[0] in first.get(
        "ParticipantObjectID"
    )
    # Every line written while the message was handled carries the id; the connection's own lines do not.
    connection_lines = [r for r in captured.records if "connection from" in r.getMessage() and r.name.endswith("mllp")]
    assert connection_lines and all(r.request_id not in ("-", rid) for r in connection_lines)


def test_a_refused_soap_request_has_one_request_id_in_its_log_line_and_audit_record(clearinghouse, captured):
    # The PHR (consumer) may not submit: refused, logged and audited as Use of Restricted Function.
    patient = edge.patient_for(edge.new_access_code(), "19810203")
    with pytest.raises(SoapFault, match="role 'source' required"):
        edge.submit(clearinghouse.soap("phr", "/xds/repository"), edge.study(patient, samples=["CT_small.dcm"]))
    line = next(r for r in captured.records if r.getMessage().startswith("refused:") and "ITI-41" in r.getMessage())
    (record,) = _audit_xml_with_request_id(clearinghouse, line.request_id)
    assert record.find("EventIdentification/EventID").get("csd-code") == "110113"  # Security Alert
    assert _request_ids(record) == [line.request_id]


def test_every_https_answer_names_its_request_id(clearinghouse):
    ctx = clearinghouse.identities["phr"].context()
    seen = set()
    for _ in range(2):
        try:
            urllib.request.urlopen(clearinghouse.url("/no/such/path"), context=ctx, timeout=30)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            seen.add(exc.headers["X-Request-ID"])
    assert len(seen) == 2 and all(len(rid) == 32 for rid in seen)
