"""The recorder: for a participant with an open conformance session, what it sends is kept with the
facts its validators need. It observes the transports (``SoapEndpoint.observers``,
``MllpServer.observers``, ``SyslogTlsServer.observers``) beside the Auditor, so it sees exactly what a
remote peer sent, whether the clearinghouse accepted it or not.

Recording never fails or slows a transaction beyond one cached lookup: the set of participants with an
open session is read from the database at most once per ``refresh_seconds`` (so a session records
from at most that long after it was opened, also when another process opened it), and any error is
logged and swallowed.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.db import transaction as db_transaction
from clearinghouse.peer import Peer
from clearinghouse.soap import envelope as soapenv
from clearinghouse.xmlsafe import NS, qname
from conformance.models import ConformanceSession, ConformanceTransaction

log = logging.getLogger("conformance.recorder")

UNIQUE_ID_SCHEME = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
REFRESH_SECONDS = 1.0


def _text(el: etree._Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def _errors(body: etree._Element) -> list[list[str]]:
    return [[e.get("errorCode", ""), e.get("codeContext", "")] for e in body.iter(qname("rs", "RegistryError"))]


def _outcome(result: Any, error: BaseException | None) -> dict[str, Any]:
    if error is not None or result is None:
        return {"status": "", "errors": [], "error": str(error or "no response")}
    body = result.body
    return {"status": body.get("status", ""), "errors": _errors(body), "error": ""}


def _unique_id(eo: etree._Element) -> str:
    for ei in eo.findall("rim:ExternalIdentifier", NS):
        if ei.get("identificationScheme") == UNIQUE_ID_SCHEME:
            return ei.get("value", "")
    return ""


def _slot(eo: etree._Element, name: str) -> str:
    return _text(eo.find(f"rim:Slot[@name='{name}']/rim:ValueList/rim:Value", NS))


# --- facts of each transaction (pure: what arrived -> JSON-able facts and the text to keep) -----------


def provide_and_register_facts(request: Any, result: Any, error: BaseException | None) -> tuple[dict, str]:
    """ITI-41: addressing, the HTTP and MTOM framing, each Document's content (size and SHA-1 of what
    arrived), and the clearinghouse's answer. The kept envelope has inline document content removed."""
    mtom = request.mtom
    framing = None
    if mtom is not None:
        framing = {
            "root_content_type": mtom.root_content_type,
            "root_content_id": mtom.root_content_id,
            "parts": [
                {"content_id": a.content_id, "content_type": a.content_type, "size": a.size, "sha1": a.sha1}
                for a in mtom.attachments.values()
            ],
        }
    documents = []
    env = copy.deepcopy(request.envelope)
    body = soapenv.body_child(env)
    for doc in body.findall("xdsb:Document", NS) if body is not None else []:
        include = doc.find("xop:Include", NS)
        entry: dict[str, Any] = {"id": doc.get("id", ""), "href": None, "size": None, "sha1": None}
        if include is not None:
            entry["href"] = include.get("href", "")
            if mtom is not None:
                try:
                    att = mtom.resolve_cid(entry["href"])
                    entry["size"], entry["sha1"] = att.size, att.sha1
                except ValueError:
                    pass
        else:
            try:
                content = base64.b64decode("".join((doc.text or "").split()), validate=True)
                entry["size"], entry["sha1"] = len(content), hashlib.sha1(content).hexdigest()  # noqa: S324 - XDS hash
            except (binascii.Error, ValueError):
                entry["size"] = None
            doc.text = ""
        documents.append(entry)
    facts = {
        "message_id": request.message_id,
        "action": request.action,
        "content_type": request.environ.get("CONTENT_TYPE", ""),
        "mtom": framing,
        "documents": documents,
        **_outcome(result, error),
    }
    return facts, soapenv.to_bytes(env).decode("utf-8")


def stored_query_facts(request: Any, result: Any, error: BaseException | None) -> tuple[dict, str]:
    """ITI-18: the stored query and its parameters, and which documents the registry returned."""
    query = request.body.find("rim:AdhocQuery", NS)
    params: dict[str, list[str]] = {}
    for slot in query.findall("rim:Slot", NS) if query is not None else []:
        params.setdefault(slot.get("name", ""), []).extend(
            _text(v) for v in slot.findall("rim:ValueList/rim:Value", NS)
        )
    options = request.body.find("query:ResponseOption", NS)
    returned = []
    # An ITI-18 answer may travel serialised (SoapResult.body_xml): document() gives all of it.
    answer = result.document() if result is not None else None
    if answer is not None:
        for eo in answer.iter(qname("rim", "ExtrinsicObject")):
            returned.append(
                {
                    "unique_id": _unique_id(eo),
                    "repository_unique_id": _slot(eo, "repositoryUniqueId"),
                    "status": eo.get("status", ""),
                }
            )
    facts = {
        "message_id": request.message_id,
        "query_id": query.get("id", "") if query is not None else "",
        "return_type": options.get("returnType", "") if options is not None else "",
        "params": params,
        "returned": returned,
        "object_refs": [o.get("id", "") for o in answer.iter(qname("rim", "ObjectRef"))] if answer is not None else [],
        **_outcome(result, error),
    }
    return facts, etree.tostring(request.body, encoding="unicode")


def retrieve_facts(request: Any, result: Any, error: BaseException | None) -> tuple[dict, str]:
    """ITI-43: the documents asked for and the ones the repository answered with."""
    requested = [
        {
            "repository_unique_id": dr.findtext("xdsb:RepositoryUniqueId", "", NS).strip(),
            "unique_id": dr.findtext("xdsb:DocumentUniqueId", "", NS).strip(),
        }
        for dr in request.body.findall("xdsb:DocumentRequest", NS)
    ]
    returned = []
    if result is not None:
        returned = [
            dr.findtext("xdsb:DocumentUniqueId", "", NS).strip()
            for dr in result.body.findall("xdsb:DocumentResponse", NS)
        ]
    outcome = _outcome(result, error)
    response = result.body.find("rs:RegistryResponse", NS) if result is not None else None
    if response is not None:
        outcome["status"] = response.get("status", "")
    facts = {"message_id": request.message_id, "requested": requested, "returned": returned, **outcome}
    return facts, etree.tostring(request.body, encoding="unicode")


def generic_soap_facts(request: Any, result: Any, error: BaseException | None) -> tuple[dict, str]:
    return {"message_id": request.message_id, "action": request.action, **_outcome(result, error)}, etree.tostring(
        request.body, encoding="unicode"
    )


SOAP_FACTS: dict[str, Callable[[Any, Any, BaseException | None], tuple[dict, str]]] = {
    "ITI-41": provide_and_register_facts,
    "ITI-18": stored_query_facts,
    "ITI-43": retrieve_facts,
}


HL7_TRANSACTIONS = {"ADT": "ITI-8", "QBP": "ITI-9"}


def hl7_transaction(message: bytes) -> str:
    """ITI-8 for an ADT feed, ITI-9 for a PIX query (by MSH-9), else HL7."""
    msh = message.lstrip().split(b"\r", 1)[0].split(b"\n", 1)[0].decode("latin-1")
    fields = msh.split(msh[3:4]) if msh.startswith("MSH") and len(msh) > 8 else []
    kind = fields[8].split(msh[4:5] or "^")[0] if len(fields) > 8 else ""
    return HL7_TRANSACTIONS.get(kind, "HL7")


def hl7_facts(listener: str, message: bytes, response: bytes) -> tuple[dict, str]:
    ack = ""
    for segment in response.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA"):
            fields = segment.decode("latin-1").split(segment.decode("latin-1")[3:4] or "|")
            ack = fields[1] if len(fields) > 1 else ""
    # latin-1 keeps every byte, so validators re-read exactly what arrived.
    return {"listener": listener, "ack": ack}, message.decode("latin-1")


# --- the recorder ------------------------------------------------------------------------------------


class Recorder:
    """Observes the transports and records, for participants with an open session, what they send."""

    def __init__(self, sessions: sessionmaker[Session], *, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self._sessions = sessions
        self._refresh = refresh_seconds
        self._lock = threading.Lock()
        self._open: dict[str, str] = {}  # participant -> open session id
        self._read_at = float("-inf")

    def session_for(self, participant: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            if now - self._read_at >= self._refresh:
                stamp = dt.datetime.now(dt.UTC)
                with self._sessions() as session:
                    rows = session.execute(
                        select(ConformanceSession.participant, ConformanceSession.id).where(
                            ConformanceSession.closed_at.is_(None), ConformanceSession.expires_at > stamp
                        )
                    ).all()
                self._open = {participant: sid for participant, sid in rows}
                self._read_at = now
            return self._open.get(participant)

    def record(self, session_id: str, transaction: str, facts: dict, payload: str) -> None:
        with db_transaction(self._sessions) as session:
            session.add(
                ConformanceTransaction(
                    session_id=session_id,
                    transaction=transaction,
                    received_at=dt.datetime.now(dt.UTC),
                    facts=json.dumps(facts, sort_keys=True),
                    payload=payload,
                )
            )

    def _guarded(self, what: str, participant: str, work: Callable[[str], None]) -> None:
        try:
            sid = self.session_for(participant)
            if sid is not None:
                work(sid)
        except Exception:  # noqa: BLE001 - recording never fails the transaction it records
            log.exception("conformance recorder: %s from %r not recorded", what, participant)

    # --- observers ---

    def soap(self, op: Any, request: Any, result: Any, error: BaseException | None) -> None:
        """SoapEndpoint observer."""

        def work(sid: str) -> None:
            facts, payload = SOAP_FACTS.get(op.transaction, generic_soap_facts)(request, result, error)
            self.record(sid, op.transaction, facts, payload)

        self._guarded(op.transaction, request.peer.participant, work)

    def hl7(self, listener: str, peer: Peer, address: str, message: bytes, response: bytes) -> None:
        """MllpServer observer (ITI-8 feed port and PIX port)."""

        def work(sid: str) -> None:
            facts, payload = hl7_facts(listener, message, response)
            self.record(sid, hl7_transaction(message), facts, payload)

        self._guarded("HL7 message", peer.participant, work)

    def syslog(self, peer: Peer, records: Iterable[Any]) -> None:
        """SyslogTlsServer observer: ITI-20 audit messages the participant sends."""

        def work(sid: str) -> None:
            for rec in records:
                facts = {"transport": rec.transport, "declared_length": rec.declared_length, "note": rec.note}
                self.record(sid, "ITI-20", facts, rec.data.decode("utf-8", errors="replace"))

        self._guarded("audit message", peer.participant, work)


def attach(recorder: Recorder, *, endpoints: Iterable[Any], listeners: Iterable[Any], syslog: Any = None) -> None:
    """Put the recorder beside the Auditor on the composition's transports."""
    for endpoint in endpoints:
        endpoint.observers.append(recorder.soap)
    for listener in listeners:
        if listener is not None:
            listener.observers.append(recorder.hl7)
    if syslog is not None:
        syslog.observers.append(recorder.syslog)
