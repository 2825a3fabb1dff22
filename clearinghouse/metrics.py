"""Prometheus metrics of one ``serve`` process, served at ``/metrics`` on the HTTPS port.

Counted where the transports already report each exchange (the SOAP endpoints' and MLLP listeners'
observer lists) and in a WSGI wrapper around the HTTPS application, which also opens each request's
``request_scope`` (clearinghouse.logging_setup): transactions, failed transactions and latency per
IHE transaction, HTTP responses per route and status. Queue depths and stored totals are read when
scraped, from functions the composition registers (``gauge``), so nothing polls between scrapes.

Each process has its own registry: a deployment of several processes is scraped process by process
(docs/operations.md). Access needs a participant certificate with the ``monitor`` role, like every
other use of the HTTPS port.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from lxml import etree
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from clearinghouse import hl7, logging_setup
from clearinghouse.audit_events import outcome_of
from clearinghouse.xmlsafe import NS

if TYPE_CHECKING:
    from clearinghouse.peer import Peer
    from clearinghouse.soap.endpoint import Operation, SoapRequest, SoapResult

log = logging.getLogger("clearinghouse.metrics")

PATH = "/metrics"
STARTED_KEY = "clearinghouse.request_started"  # WSGI environ: perf_counter() when the request arrived
ROLE = "monitor"
# Latency buckets from a quick query to a multi-gigabyte submission.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
# HL7 v2 message type^trigger (MSH-9) to the IHE transaction it belongs to on a listener.
HL7_TRANSACTIONS = {"ADT": "ITI-8", "QBP^Q23": "ITI-9"}
ACCEPTED_ACKS = ("AA", "CA")
FORMAT_CODE_SCHEME = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"  # DocumentEntry.formatCode (ITI TF-3 4.2.5.2)
KOS_FORMAT = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document (RAD TF-3 4.68.4.1.2.3)

GaugeSource = Callable[[], Mapping[tuple[str, ...], float] | float]


class Metrics:
    """One process's metrics and the hooks that feed them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.transactions = Counter(
            "clearinghouse_transactions",
            "IHE transactions handled, by transaction",
            ["transaction"],
            registry=self.registry,
        )
        self.errors = Counter(
            "clearinghouse_transaction_errors",
            "IHE transactions that did not succeed (error status, negative acknowledgement, refusal, HTTP >= 400)",
            ["transaction"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "clearinghouse_transaction_duration_seconds",
            "Time from the start of a request to its answer, by transaction",
            ["transaction"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.http = Counter(
            "clearinghouse_http_responses",
            "HTTPS responses by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self._sources = _Sources()
        self.registry.register(self._sources)

    # --- recording ---

    def record(self, transaction: str, ok: bool, seconds: float | None) -> None:
        self.transactions.labels(transaction).inc()
        if not ok:
            self.errors.labels(transaction).inc()
        if seconds is not None:
            self.latency.labels(transaction).observe(seconds)

    def soap_observer(
        self, op: Operation, request: SoapRequest, result: SoapResult | None, error: BaseException | None
    ) -> None:
        """For SoapEndpoint.observers: one SOAP operation answered (or refused)."""
        ok = error is None and result is not None and outcome_of(result.body)[0] == 0
        # The start of this HTTPS request; an in-process call (the repository's ITI-42 to the local
        # registry) has none of its own and is counted without a latency, not with its caller's.
        started = request.environ.get(STARTED_KEY)
        transaction = submission_transaction(request.body) if op.transaction == "ITI-41" else op.transaction
        self.record(transaction, ok, None if started is None else time.perf_counter() - started)

    def hl7_observer(self, listener: str, peer: Peer, address: str, message: bytes, response: bytes) -> None:
        """For MllpServer.observers: one HL7 message answered."""
        self.record(hl7_transaction(message), hl7_accepted(response), _elapsed())

    def gauge(
        self, name: str, documentation: str, source: GaugeSource, labels: tuple[str, ...] = (), *, counter: bool = False
    ) -> None:
        """Read ``source()`` at each scrape: a number, or {label values: number} when ``labels`` are given.
        ``counter`` for totals that only grow (exposed as ``name_total``)."""
        self._sources.add(name, documentation, source, labels, counter)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # --- WSGI ---

    def wsgi(self, app: Callable[..., Iterable[bytes]], transactions: Mapping[str, str]) -> Callable[..., Any]:
        """``app`` wrapped: a request scope per request, HTTP counts, and the transaction metrics of
        the routes in ``transactions`` (path prefix -> transaction, for the non-SOAP ones)."""

        def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            scope = logging_setup.begin("http")
            environ[STARTED_KEY] = scope.started
            path = environ.get("PATH_INFO", "") or "/"
            route = _route(path, transactions)
            seen: dict[str, str] = {}

            def recording_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                seen["status"] = status.split(" ", 1)[0]
                headers = [*headers, ("X-Request-ID", scope.request_id)]
                return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

            def finished() -> None:
                status = seen.get("status", "500")
                self.http.labels(route, status).inc()
                transaction = transactions.get(route)
                if transaction is not None:
                    self.record(transaction, int(status) < 400, scope.elapsed())
                logging_setup.end()

            try:
                body = app(environ, recording_start)
            except BaseException:
                seen.setdefault("status", "500")
                finished()
                raise
            return _Closing(body, finished)

        return application

    def endpoint(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """``GET /metrics`` for a peer with the ``monitor`` role."""
        from clearinghouse.https import PEER_ENVIRON_KEY

        peer = environ.get(PEER_ENVIRON_KEY)
        if peer is None or not peer.has_role(ROLE):
            who = peer.subject if peer is not None else "unauthenticated peer"
            log.warning("refused: %s may not read /metrics: role %r required", who, ROLE)
            return _text(start_response, "403 Forbidden", f"role {ROLE!r} required\n".encode())
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", b"use GET\n")
        body = self.exposition()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]


def submission_transaction(body: etree._Element | None) -> str:
    """RAD-68 travels as ITI-41 (same action and message): a submission is RAD-68 when one of its
    DocumentEntries is a Key Object Selection manifest (formatCode 1.2.840.10008.5.1.4.1.1.88.59)."""
    if body is not None:
        for c in body.iter(f"{{{NS['rim']}}}Classification"):
            if c.get("classificationScheme") == FORMAT_CODE_SCHEME and c.get("nodeRepresentation") == KOS_FORMAT:
                return "RAD-68"
    return "ITI-41"


def hl7_transaction(message: bytes) -> str:
    """ITI-8 for a feed (ADT), ITI-9 for a PIX query (QBP^Q23); else HL7 TYPE^TRIGGER."""
    head = hl7.header_of(message)
    if head is None:
        return "HL7 unreadable"
    kind = head.message_type
    return (
        HL7_TRANSACTIONS.get(kind)
        or HL7_TRANSACTIONS.get(f"{kind}^{head.trigger_event}")
        or (f"HL7 {kind}^{head.trigger_event}")
    )


def hl7_accepted(response: bytes) -> bool:
    """Whether an acknowledgement accepts its message (MSA-1 AA or CA)."""
    try:
        ack = hl7.parse_message(response)
    except hl7.MalformedMessage:
        return False
    return ack.get("MSA", 1) in ACCEPTED_ACKS


def spool_backlog_bytes(durable: tuple[int, int], drained: tuple[int, int], segment_bytes: int) -> float:
    """Bytes between the drained and the durable (segment, offset) positions of a spool; segments after
    the first are counted as full, which they are but for the last one."""
    (d_seg, d_off), (p_seg, p_off) = durable, drained
    if (d_seg, d_off) <= (p_seg, p_off):
        return 0.0
    if d_seg == p_seg:
        return float(d_off - p_off)
    return float(max(0, segment_bytes - p_off) + (d_seg - p_seg - 1) * segment_bytes + d_off)


def _elapsed() -> float | None:
    scope = logging_setup.current()
    return scope.elapsed() if scope is not None else None


def _route(path: str, transactions: Mapping[str, str]) -> str:
    """The label for ``path``: a known route prefix, else "other" (paths are peer input: unbounded)."""
    for prefix in sorted(transactions, key=len, reverse=True):
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return prefix
    return _KNOWN_ROUTES.get(path.rstrip("/"), "other")


# Routes whose HTTP counts are worth a label of their own; the SOAP ones are counted per transaction too.
_KNOWN_ROUTES = {p: p for p in ("/xds/registry", "/xds/repository", "/pix/v3", PATH)}


class _Closing:
    """A WSGI response iterable that runs ``done`` once, when the server closes it (after the last byte)."""

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        self._body = body
        self._done: Callable[[], None] | None = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()


def _text(start_response: Callable[..., Any], status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


class _Sources(Collector):
    """Gauges and totals read at scrape time from the registered sources; a failing source is logged
    and left out of that scrape rather than failing the others."""

    def __init__(self) -> None:
        self._items: list[tuple[str, str, GaugeSource, tuple[str, ...], bool]] = []
        self._lock = threading.Lock()

    def add(self, name: str, documentation: str, source: GaugeSource, labels: tuple[str, ...], counter: bool) -> None:
        with self._lock:
            self._items.append((name, documentation, source, labels, counter))

    def describe(self) -> list[Any]:
        return []  # values are read only when scraped

    def collect(self) -> Iterator[Any]:
        with self._lock:
            items = list(self._items)
        for name, documentation, source, labels, counter in items:
            started = time.perf_counter()
            try:
                value = source()
            except Exception:  # noqa: BLE001 - one unreadable source (e.g. the database is down) must not hide the rest
                log.exception("metric %s could not be read", name)
                continue
            family_type = CounterMetricFamily if counter else GaugeMetricFamily
            family = family_type(name, documentation, labels=list(labels))
            if isinstance(value, Mapping):
                for key, v in sorted(value.items()):
                    family.add_metric(list(key), float(v))
            else:
                family.add_metric([], float(value))
            yield family
            log.debug("metric %s read in %.3fs", name, time.perf_counter() - started)
