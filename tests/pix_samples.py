"""Real HL7 messages for the PIX Manager tests (v2.3.1 and v2.5 ADT/QBP, HL7 v3 PRPA), a raw MLLP/TLS
client that reads every answer frame, and a test consumer that receives ITI-10 over MLLP/TLS."""

from __future__ import annotations

import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from clearinghouse import hl7, mllp, pki
from pix_manager import admin

AFFINITY = "1.3.6.1.4.1.19376.3.840.1.1.1"
V3 = "urn:hl7-org:v3"


def uid() -> str:
    return uuid.uuid4().hex[:12].upper()


def new_oid() -> str:
    return f"1.2.826.0.1.3680043.10.1045.{uuid.uuid4().int % 10**12}"


def cx(value: str, oid: str = AFFINITY, namespace: str = "") -> str:
    return f"{value}^^^{namespace}&{oid}&ISO"


def adt(
    event: str,
    pid3: str,
    *,
    mrg: str | None = None,
    version: str = "2.3.1",
    control: str | None = None,
    msh15: str = "",
    msh16: str = "",
    charset: str = "",
    timestamp: str = "20261123120000",
    processing: str = "P",
) -> str:
    """An ITI-8 ADT message as text (encode it with the charset it declares)."""
    structure = "ADT_A39" if event == "A40" else "ADT_A01"
    msh = [
        "MSH",
        "^~\\&",
        "EDGE",
        "SITE-A",
        "PIX_MANAGER",
        "ISN",
        timestamp,
        "",
        f"ADT^{event}^{structure}",
        control or uid(),
        processing,
        version,
    ]
    if msh15 or msh16 or charset:
        msh += ["", "", msh15, msh16, "", charset]
    segments = ["|".join(msh).rstrip("|"), f"EVN|{event}|{timestamp}", f"PID|||{pid3}||DOE^JANE^Q||19800214|F"]
    segments.append(f"MRG|{mrg}" if mrg is not None else "PV1||O")
    return "\r".join(segments) + "\r"


def qbp(
    pid: str,
    *,
    domains: list[str] | None = None,
    version: str = "2.5",
    name: str = "IHE PIX Query",
    control: str | None = None,
    tag: str | None = None,
) -> bytes:
    qpd4 = "~".join(f"^^^{d}" for d in domains or [])
    segments = [
        f"MSH|^~\\&|PHR|HOME|PIX_MANAGER|ISN|20261123120000||QBP^Q23^QBP_Q21|{control or uid()}|P|{version}",
        f"QPD|{name}|{tag or 'Q' + uid()}|{pid}|{qpd4}".rstrip("|"),
        "RCP|I",
    ]
    return ("\r".join(segments) + "\r").encode()


def segments(data: bytes, encoding: str = "ascii") -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for line in data.decode(encoding).split("\r"):
        if line:
            out.setdefault(line[:3], []).append(line.split("|"))
    return out


def msa(data: bytes) -> str:
    return segments(data)["MSA"][0][1]


def errors(data: bytes) -> list[tuple[str, str]]:
    """(table 0357 code, location) of every error: ERR-3 and ERR-2 in v2.5, each ERR-1 repetition
    (segment^sequence^field^code&text&table) in v2.3.1."""
    out = []
    for err in segments(data).get("ERR", []):
        if len(err) > 3:
            out.append((err[3].split("^")[0], err[2]))
        else:
            for rep in err[1].split("~"):
                parts = rep.split("^")
                out.append((parts[3].split("&")[0], "^".join(p for p in parts[:3] if p)))
    return out


def pid3_of(data: bytes, encoding: str = "ascii") -> list[str]:
    pids = segments(data, encoding).get("PID", [])
    return pids[0][3].split("~") if pids else []


class RawMllp:
    """A TLS MLLP connection that sends frames and reads any number of answers (enhanced mode)."""

    def __init__(self, port: int, context: ssl.SSLContext, timeout: float = 10.0) -> None:
        sock = socket.create_connection(("localhost", port), timeout=timeout)
        self.sock = context.wrap_socket(sock, server_hostname="localhost")
        self.reader = mllp.FrameReader(self.sock.recv, 1 << 24)

    def send(self, message: bytes) -> None:
        self.sock.sendall(mllp.frame(message))

    def read(self, timeout: float | None = None) -> bytes | None:
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            return self.reader.read()
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


@dataclass
class Received:
    message: bytes
    peer_subject: str


@dataclass
class PixConsumer:
    """A Patient Identifier Cross-reference Consumer listening on MLLP/TLS: it requires a client
    certificate from the clearinghouse CA, records each message and answers with ``answer(msg)``."""

    pki_dir: Path
    answer: Callable[[hl7.Message], str] = lambda _m: "AA"
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        ca = pki.load_ca(self.pki_dir)
        issued = pki.issue_certificate(ca, "consumer.test", server_names=["localhost"], client=False)
        folder = self.pki_dir.parent / f"consumer-{uid()}"
        folder.mkdir()
        (folder / "cert.pem").write_bytes(issued.cert_pem)
        pki.write_private(folder / "key.pem", issued.key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")
        ctx.load_verify_locations(self.pki_dir / "ca.cert.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.context = ctx
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()

    def start(self) -> PixConsumer:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        self._listener.settimeout(0.2)
        self._stop.clear()
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    @property
    def url(self) -> str:
        return f"mllp+tls://localhost:{self.port}"

    def _accept(self) -> None:
        listener = self._listener
        while not self._stop.is_set() and listener is not None:
            try:
                sock, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(10)
            tls = self.context.wrap_socket(sock, server_side=True)
            subject = dict(x[0] for x in tls.getpeercert()["subject"]).get("commonName", "")
            reader = mllp.FrameReader(tls.recv, 1 << 20)
            while not self._stop.is_set() and (data := reader.read()) is not None:
                msg = hl7.parse_message(data)
                code = self.answer(msg)
                with self._cond:
                    self.received.append(Received(data, subject))
                    self._cond.notify_all()
                tls.sendall(mllp.frame(hl7.build_ack(msg, code, text="" if code == "AA" else "consumer says no")))
        except (OSError, ssl.SSLError, mllp.MllpFrameError):
            pass
        finally:
            sock.close()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)


# --- HL7 v3 (ITI-44, ITI-45) ---


def _el(parent: etree._Element | None, local: str, **attrs: str) -> etree._Element:
    tag = f"{{{V3}}}{local}"
    return etree.Element(tag, attrs, nsmap={None: V3}) if parent is None else etree.SubElement(parent, tag, attrs)


def _wrapper(interaction: str, message_id: str | None = None) -> etree._Element:
    root = _el(None, interaction, ITSVersion="XML_1.0")
    _el(root, "id", root="1.2.840.114350.1.13.99998.8734", extension=message_id or uid())
    _el(root, "creationTime", value="20261123120000")
    _el(root, "interactionId", root="2.16.840.1.113883.1.6", extension=interaction)
    _el(root, "processingCode", code="P")
    _el(root, "processingModeCode", code="T")
    _el(root, "acceptAckCode", code="AL")
    _el(
        _el(_el(root, "receiver", typeCode="RCV"), "device", classCode="DEV", determinerCode="INSTANCE"),
        "id",
        root="1.2.840.114350.1.13.99999.4567",
    )
    _el(
        _el(_el(root, "sender", typeCode="SND"), "device", classCode="DEV", determinerCode="INSTANCE"),
        "id",
        root="1.2.840.114350.1.13.99997.2.7788",
    )
    return root


def v3_feed(
    interaction: str,
    ids: list[tuple[str, str]],
    *,
    others: list[tuple[str, str]] = (),  # type: ignore[assignment]
    prior: list[tuple[str, str]] = (),  # type: ignore[assignment]
    message_id: str | None = None,
) -> etree._Element:
    """PRPA_IN201301UV02 / 302 / 304 with patient ids (root, extension), asOtherIDs and prior ids."""
    root = _wrapper(interaction, message_id)
    cap = _el(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    _el(cap, "code", code=interaction.replace("_IN", "_TE"), codeSystem="2.16.840.1.113883.1.6")
    event = _el(_el(cap, "subject", typeCode="SUBJ"), "registrationEvent", classCode="REG", moodCode="EVN")
    _el(event, "id", nullFlavor="NA")
    _el(event, "statusCode", code="active")
    patient = _el(_el(event, "subject1", typeCode="SBJ"), "patient", classCode="PAT")
    for r, e in ids:
        _el(patient, "id", root=r, extension=e)
    _el(patient, "statusCode", code="active")
    person = _el(patient, "patientPerson", classCode="PSN", determinerCode="INSTANCE")
    name = _el(person, "name")
    _el(name, "given").text = "Jane"
    _el(name, "family").text = "Doe"
    for r, e in others:
        other = _el(person, "asOtherIDs", classCode="PAT")
        _el(other, "id", root=r, extension=e)
        _el(_el(other, "scopingOrganization", classCode="ORG", determinerCode="INSTANCE"), "id", root=r)
    custodian = _el(_el(event, "custodian", typeCode="CST"), "assignedEntity", classCode="ASSIGNED")
    _el(custodian, "id", root="1.2.840.114350.1.13.99998.8734")
    if prior:
        reg = _el(_el(event, "replacementOf", typeCode="RPLC"), "priorRegistration", classCode="REG", moodCode="EVN")
        _el(reg, "statusCode", code="obsolete")
        role = _el(_el(reg, "subject1", typeCode="SBJ"), "priorRegisteredRole", classCode="PAT")
        for r, e in prior:
            _el(role, "id", root=r, extension=e)
    return root


def v3_query(root_oid: str, extension: str, data_sources: list[str] = ()) -> etree._Element:  # type: ignore[assignment]
    root = _wrapper("PRPA_IN201309UV02")
    cap = _el(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    _el(cap, "code", code="PRPA_TE201309UV02", codeSystem="2.16.840.1.113883.1.6")
    qbp_el = _el(cap, "queryByParameter")
    _el(qbp_el, "queryId", root="1.2.840.114350.1.13.28.1.18.5.999", extension=uid())
    _el(qbp_el, "statusCode", code="new")
    _el(qbp_el, "responsePriorityCode", code="I")
    params = _el(qbp_el, "parameterList")
    for ds in data_sources:
        d = _el(params, "dataSource")
        _el(d, "value", root=ds)
        _el(d, "semanticsText").text = "DataSource.id"
    p = _el(params, "patientIdentifier")
    _el(p, "value", root=root_oid, extension=extension)
    _el(p, "semanticsText").text = "Patient.Id"
    return root


# --- the PIX Manager of a running test instance ---


@dataclass
class Site:
    oid: str
    namespace: str

    def cx(self, value: str) -> str:
        return cx(value, self.oid, self.namespace)

    def full(self, value: str) -> str:
        """As the PIX Manager answers: every subcomponent of the assigning authority."""
        return f"{value}^^^{self.namespace}&{self.oid}&ISO"


def add_domain(ch, namespace: str | None = None, source: str | None = None) -> Site:
    oid, namespace = new_oid(), namespace or f"S{uid()}"
    with ch.ch.engine.begin() as conn:
        admin.set_domain(conn, oid, namespace, source=source)
    return Site(oid, namespace)


def affinity_full(value: str) -> str:
    return f"{value}^^^ISN&{AFFINITY}&ISO"


def send(ch, message: str | bytes, who: str = "edge", encoding: str = "ascii") -> bytes:
    client = ch.pix_client(who)
    try:
        return client.send(message.encode(encoding) if isinstance(message, str) else message)
    finally:
        client.close()


def query(ch, pid: str, domains: list[str] | None = None, **kw) -> bytes:
    return send(ch, qbp(pid, domains=domains, **kw), who="phr")
