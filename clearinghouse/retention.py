"""The retention purge (docs/retention.md): the coordinator that `clearinghouse purge` and the
scheduler inside `serve` run.

One run, for a given instant ``now``:

1. **Metadata first.** The registry removes, one batch per database transaction, the submissions
   whose expiry is at or before ``now`` (locked so that a concurrent purger on another server
   skips them) and says what went. From then on nobody can find those documents.
2. **Audit.** One Patient Record Delete event per purged submission: the patient (RSNA-ID), the
   submission set and each document uniqueId, permanently erased.
3. **Then the bytes**, through the transaction made for it: ITI-86 Remove Documents to the
   repository holding them, for the documents no other DocumentEntry still names.
4. **Sweep.** A crash between 1 and 3 (or an ITI-62 deletion, which removes metadata only) leaves
   bytes that no DocumentEntry names. Documents the repository has held longer than the grace
   period are checked against the registry and the unreferenced ones removed with ITI-86 too.

The actors stay separate: the composition (clearinghouse.app) hands the coordinator the registry's
purge and lookup functions (registry.api), the repository's listing (repository.remove) and an
ITI-86 client of the repository's SOAP endpoint. With a remote registry (``registry_url``) the lookup
is ``RemoteRegistryLookup``: ITI-18 GetDocuments by uniqueId, the interface any XDS registry offers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

from lxml import etree

from clearinghouse import audit
from clearinghouse.audit import AuditMessage, AuditNode, Party
from clearinghouse.config import Settings
from clearinghouse.xmlsafe import NS, qname

log = logging.getLogger("clearinghouse.retention")

STATUS_SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
# Answer of ITI-86 for a document the repository no longer holds: already gone, which is what we want.
ALREADY_GONE = "XDSDocumentUniqueIdError"
ITI86_BATCH = 1000


# ITI-18 GetDocuments (ITI TF-2a 3.18.4.1.2.3.7.5) and the DocumentEntry.uniqueId identification scheme.
ITI18_ACTION = "urn:ihe:iti:2007:RegistryStoredQuery"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
DOCUMENT_ENTRY_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
# Refusals of a GetDocuments naming many documents that a smaller one avoids: documents of several
# patients in one answer (this clearinghouse's registry refuses it), more than the registry returns.
SPLIT_ON = frozenset({"XDSResultNotSinglePatient", "XDSTooManyResults"})
ITI18_BATCH = 100


class RegistryLookupFailed(Exception):
    """The registry did not say which documents it names: the sweep removes nothing on a guess."""


class PurgedDocumentLike(Protocol):
    unique_id: str
    repository_unique_id: str
    released: bool


class PurgedSubmissionLike(Protocol):
    submission_set_uuid: str
    submission_set_unique_id: str
    patient_id: str
    submitted_by: str
    registered_at: datetime
    expires_at: datetime
    documents: Sequence[PurgedDocumentLike]
    objects: int


# (now, limit, dry_run) -> what the registry removed (or would remove).
PurgeRegistry = Callable[[datetime, "int | None", bool], Sequence[Any]]
# uniqueIds -> those a registered DocumentEntry still carries.
Registered = Callable[[list[str]], set[str]]
# (cutoff, after, limit) -> uniqueIds the repository has held since before cutoff, after ``after``.
HeldBefore = Callable[[datetime, str, int], list[str]]
# [(repositoryUniqueId, documentUniqueId)] -> the ITI-86 RegistryResponse.
RemoveDocuments = Callable[[list[tuple[str, str]]], etree._Element]


@dataclass
class PurgeReport:
    now: datetime
    dry_run: bool
    submissions: list[Any] = field(default_factory=list)
    documents_removed: int = 0
    swept: int = 0
    left_to_other_repositories: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def purge_event(
    node: AuditNode, purged: PurgedSubmissionLike, *, operator: Party | None = None, when: datetime | None = None
) -> AuditMessage:
    """The audit event of one purged submission (clearinghouse.audit.purge)."""
    days = (purged.expires_at - purged.registered_at).days
    return audit.purge(
        node=node,
        document_unique_ids=[d.unique_id for d in purged.documents],
        patient_ids=[purged.patient_id] if purged.patient_id else [],
        submission_set_uids=[purged.submission_set_unique_id],
        reason=(
            f"retention: submission set {purged.submission_set_unique_id} registered "
            f"{audit.format_datetime(purged.registered_at)}, kept {days} day(s), expired "
            f"{audit.format_datetime(purged.expires_at)}"
        ),
        operator=operator,
        when=when,
    )


def _errors_of(response: etree._Element) -> list[tuple[str, str, str]]:
    return [
        (e.get("errorCode", ""), e.get("location", ""), e.get("codeContext", ""))
        for e in response.iter(f"{{{NS['rs']}}}RegistryError")
    ]


def get_documents_request(unique_ids: Sequence[str]) -> etree._Element:
    """ITI-18 GetDocuments by $XDSDocumentEntryUniqueId, answered as LeafClass (ObjectRefs carry no
    uniqueId, and the answer must say which of several were found)."""
    request = etree.Element(qname("query", "AdhocQueryRequest"), nsmap={"query": NS["query"], "rim": NS["rim"]})
    etree.SubElement(request, qname("query", "ResponseOption"), returnType="LeafClass", returnComposedObjects="true")
    adhoc = etree.SubElement(request, qname("rim", "AdhocQuery"), id=GET_DOCUMENTS)
    slot = etree.SubElement(adhoc, qname("rim", "Slot"), name="$XDSDocumentEntryUniqueId")
    values = etree.SubElement(slot, qname("rim", "ValueList"))
    for uid in unique_ids:
        # ITI TF-2a 3.18.4.1.2.3.5: a multi-valued parameter is ('a','b'); a quote is doubled.
        etree.SubElement(values, qname("rim", "Value")).text = "('" + uid.replace("'", "''") + "')"
    return request


def found_unique_ids(response: etree._Element) -> set[str]:
    """The uniqueIds of the DocumentEntries of a LeafClass ITI-18 answer."""
    return {
        ei.get("value", "").strip()
        for eo in response.iter(qname("rim", "ExtrinsicObject"))
        for ei in eo.findall("rim:ExternalIdentifier", NS)
        if ei.get("identificationScheme") == DOCUMENT_ENTRY_UNIQUE_ID
    }


class RemoteRegistryLookup:
    """``Registered`` through a registry in another process: ITI-18 GetDocuments by uniqueId.

    A batch the registry refuses as a whole for spanning patients or results (SPLIT_ON) is halved
    until it answers; documents are listed by uniqueId, so a study's instances sit together and
    most batches name one patient. A single uniqueId still refused as spanning patients is named
    by DocumentEntries of two patients, so it is registered. Any other answer than Success (an
    error, a fault, no connection) raises RegistryLookupFailed: the sweep then removes nothing.
    Each query is audited as the Document Consumer's ITI-18 (the registry audits its side).
    """

    def __init__(
        self,
        query: Callable[[etree._Element], etree._Element],
        *,
        url: str,
        emit: Callable[[AuditMessage], None],
        node: AuditNode,
        batch: int = ITI18_BATCH,
    ) -> None:
        self.query = query
        self.url = url
        self.emit = emit
        self.node = node
        self.batch = max(1, batch)
        self.queries = 0

    def __call__(self, unique_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(unique_ids), self.batch):
            found |= self._lookup(unique_ids[i : i + self.batch])
        return found

    def _lookup(self, unique_ids: list[str]) -> set[str]:
        response = self._ask(unique_ids)
        status = response.get("status", "")
        errors = _errors_of(response)
        if status == STATUS_SUCCESS:  # warnings may come with it; the answer is complete
            return found_unique_ids(response) & set(unique_ids)
        codes = {code for code, _, _ in errors}
        if codes and codes <= SPLIT_ON:
            if len(unique_ids) > 1:
                half = len(unique_ids) // 2
                return self._lookup(unique_ids[:half]) | self._lookup(unique_ids[half:])
            if codes == {"XDSResultNotSinglePatient"}:
                return set(unique_ids)
        detail = "; ".join(f"{c}: {ctx}" for c, _, ctx in errors) or f"status {status or 'missing'}"
        raise RegistryLookupFailed(f"ITI-18 GetDocuments to {self.url} answered {detail}")

    def _ask(self, unique_ids: list[str]) -> etree._Element:
        request = get_documents_request(unique_ids)
        self.queries += 1
        try:
            response = self.query(request)
        except Exception as exc:
            self._audit(request, audit.MAJOR_FAILURE, f"{exc}" or type(exc).__name__)
            raise RegistryLookupFailed(f"ITI-18 GetDocuments to {self.url} failed: {exc}") from exc
        ok = response.get("status") == STATUS_SUCCESS
        self._audit(request, audit.SUCCESS if ok else audit.MINOR_FAILURE, "" if ok else response.get("status", ""))
        return response

    def _audit(self, request: etree._Element, outcome: int, description: str) -> None:
        try:
            self.emit(
                audit.registry_stored_query(
                    node=self.node,
                    consumer=Party(
                        f"{self.node.app_name}@{self.node.hostname}/retention",
                        self.node.hostname,
                        alt_user_id=self.node.process_id,
                    ),
                    registry=Party(self.url, urlsplit(self.url).hostname or ""),
                    query_id=GET_DOCUMENTS,
                    query=etree.tostring(request),
                    outcome=outcome,
                    outcome_description=description,
                )
            )
        except Exception:  # noqa: BLE001 - auditing never stops the sweep; the audit layer logs its own failures
            log.exception("retention sweep: the ITI-18 audit event could not be emitted")


class RetentionCoordinator:
    def __init__(
        self,
        settings: Settings,
        *,
        purge_registry: PurgeRegistry,
        registered: Registered,
        held_before: HeldBefore,
        remove_documents: RemoveDocuments,
        emit: Callable[[AuditMessage], None],
        node: AuditNode,
    ) -> None:
        """``registered`` says which of a page of uniqueIds the registry still names: this node's registry
        tables, or ``RemoteRegistryLookup`` when the registry is remote (docs/retention.md)."""
        self.settings = settings
        self.purge_registry = purge_registry
        self.registered = registered
        self.held_before = held_before
        self.remove_documents = remove_documents
        self.emit = emit
        self.node = node
        # One run at a time in this process; other processes are kept apart by the database.
        self._lock = threading.Lock()

    def run(self, now: datetime | None = None, *, dry_run: bool = False, operator: Party | None = None) -> PurgeReport:
        # UTC throughout: SQLite keeps times without a zone, so every instant compared must be UTC.
        now = (now or datetime.now(UTC)).astimezone(UTC)
        report = PurgeReport(now, dry_run)
        with self._lock:
            if dry_run:
                report.submissions = list(self.purge_registry(now, None, True))
                return report
            batch_size = max(1, self.settings.retention_purge_batch)
            while True:
                try:
                    batch = list(self.purge_registry(now, batch_size, False))
                except Exception as exc:  # noqa: BLE001 - reported; the next run retries what is left
                    log.exception("retention purge: the registry could not purge")
                    report.errors.append(f"registry purge failed: {exc}")
                    break
                report.submissions += batch
                for purged in batch:
                    self.emit(purge_event(self.node, purged, operator=operator))
                released = [
                    (d.repository_unique_id, d.unique_id) for purged in batch for d in purged.documents if d.released
                ]
                self._remove(released, report)
                if len(batch) < batch_size:
                    break
            if not report.errors:
                self._sweep(now, report)
        log.info(
            "retention purge at %s: %d submission(s), %d document(s) removed, %d unreferenced swept, %d error(s)",
            audit.format_datetime(now),
            len(report.submissions),
            report.documents_removed,
            report.swept,
            len(report.errors),
        )
        return report

    def _remove(self, documents: list[tuple[str, str]], report: PurgeReport, *, swept: bool = False) -> None:
        ours = [d for d in dict.fromkeys(documents) if d[0] == self.settings.repository_unique_id]
        # Documents held by another repository: that repository's own sweep removes them once no
        # DocumentEntry names them (this node has no administrator's route to it).
        report.left_to_other_repositories += len(set(documents)) - len(ours)
        for i in range(0, len(ours), ITI86_BATCH):
            chunk = ours[i : i + ITI86_BATCH]
            try:
                response = self.remove_documents(chunk)
            except Exception as exc:  # noqa: BLE001 - the sweep of the next run removes what is left
                log.exception("retention purge: ITI-86 Remove Documents failed")
                report.errors.append(f"ITI-86 failed: {exc}")
                continue
            problems = [e for e in _errors_of(response) if e[0] != ALREADY_GONE]
            removed = len(chunk) - len(_errors_of(response))
            for code, location, context in problems:
                report.errors.append(f"ITI-86 {code} for {location}: {context}")
            if swept:
                report.swept += removed
            else:
                report.documents_removed += removed

    def _sweep(self, now: datetime, report: PurgeReport) -> None:
        cutoff = now - timedelta(hours=self.settings.retention_sweep_grace_hours)
        after = ""
        while True:
            page = self.held_before(cutoff, after, ITI86_BATCH)
            if not page:
                return
            try:
                still = self.registered(page)
            except RegistryLookupFailed as exc:
                # Nothing is removed on a guess; the next run asks again.
                log.error("retention sweep stopped: %s", exc)
                report.errors.append(f"sweep: {exc}")
                return
            unreferenced = [u for u in page if u not in still]
            if unreferenced:
                log.info("retention sweep: %d stored document(s) no DocumentEntry names", len(unreferenced))
                self._remove([(self.settings.repository_unique_id, u) for u in unreferenced], report, swept=True)
            after = page[-1]


class RetentionScheduler:
    """Runs the coordinator inside `serve`: once soon after start, then every ``interval`` seconds."""

    def __init__(
        self,
        coordinator: RetentionCoordinator,
        interval: float,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        first_delay: float = 5.0,
    ) -> None:
        self.coordinator = coordinator
        self.interval = interval
        self.clock = clock
        self.first_delay = first_delay
        self.runs = 0
        self.last_report: PurgeReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="retention-purge", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        delay = min(self.first_delay, self.interval)
        while not self._stop.wait(delay):
            try:
                self.last_report = self.coordinator.run(self.clock())
            except Exception:  # noqa: BLE001 - the scheduler outlives a failed run; the next one retries
                log.exception("retention purge run failed")
            self.runs += 1
            delay = self.interval
