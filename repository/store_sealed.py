"""Documents at rest: the one way the repository writes and reads stored bytes.

New documents are sealed (repository/crypto.py) under a fresh data key wrapped by the current KEK
(repository/keys.py) before they reach the store, unless encryption is off; documents stored before
encryption existed (encryption "none") are read as they are. Every read is verified: a sealed
document per segment before any byte of that segment is released, a plaintext one against the
size and SHA-1 the registry holds, its last chunk held back until the hash matches. What does not
verify raises UnreadableDocument, after ``alarm`` (log and audit) has been told.

Before an ITI-43 or RAD-69 response starts, ``open`` checks what is cheap: the data key unwraps,
the object has exactly the length its plaintext size implies, and the first and last segments
verify; documents up to ``preverify_bytes`` are verified whole. A later segment that fails while
the response streams ends the stream with an exception, which aborts the HTTP connection short of
its Content-Length, so a client never takes a tampered document for a complete one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from clearinghouse import audit
from clearinghouse.config import Settings
from clearinghouse.soap.spool import SpoolFile, iter_plaintext
from repository import crypto
from repository.keys import DekUnwrapFailed, KeyConfigError, KeyRing, UnknownKek, load_key_ring
from repository.models import StoredDocument
from repository.store import DocumentStore, FilesystemStore, read_exact

log = logging.getLogger("repository.store_sealed")

ENCRYPTION_MODES = ("aes-256-gcm", "none")
# DICOM CID 403 has no code for a failed integrity check of stored data; like the retention purge
# event type, this one is the clearinghouse's own.
INTEGRITY_FAILURE = audit.Code(
    "stored-document-integrity", "urn:isn-clearinghouse:audit", "Stored document integrity failure"
)

Alarm = Callable[[str, str], None]  # (document uniqueId, reason)


class UnreadableDocument(Exception):
    """A stored document that cannot be served. ``tampered``: its bytes (or wrapped key) do not
    verify; otherwise a configuration problem (its KEK is not configured)."""

    def __init__(self, unique_id: str, reason: str, *, tampered: bool) -> None:
        super().__init__(f"document {unique_id}: {reason}")
        self.unique_id = unique_id
        self.reason = reason
        self.tampered = tampered


@dataclass(frozen=True)
class AtRest:
    """How one document was stored: what its repository row records."""

    key: str
    encryption: str
    kek_id: str | None
    wrapped_dek: bytes | None


def _oid_uri(unique_id: str) -> str:
    return f"urn:oid:{unique_id}" if unique_id.replace(".", "").isdigit() else unique_id


def audit_alarm(emit: Callable[[audit.AuditMessage], None], node: audit.AuditNode) -> Alarm:
    """An alarm that logs the failure and records a Security Alert for the document."""

    def alarm(unique_id: str, reason: str) -> None:
        log.error("stored document %s failed its integrity check and was not served: %s", unique_id, reason)
        try:
            emit(
                audit.security_alert(
                    INTEGRITY_FAILURE,
                    node=node,
                    subject=_oid_uri(unique_id),
                    description=f"stored document {unique_id} failed its integrity check: {reason}",
                    outcome=audit.SERIOUS_FAILURE,
                )
            )
        except Exception:  # noqa: BLE001 - auditing never breaks the refusal it records
            log.exception("could not audit the integrity failure of %s", unique_id)

    return alarm


def _log_alarm(unique_id: str, reason: str) -> None:
    log.error("stored document %s failed its integrity check and was not served: %s", unique_id, reason)


class SealedStore:
    def __init__(
        self,
        store: DocumentStore,
        ring: KeyRing | None,
        *,
        encrypt: bool = True,
        preverify_bytes: int = 16 * 1024 * 1024,
        alarm: Alarm | None = None,
        reload: Callable[[], KeyRing | None] | None = None,
    ) -> None:
        if encrypt and ring is None:
            raise ValueError("encryption at rest needs a key-encryption key")
        self.store = store
        self.ring = ring
        self.encrypt = encrypt
        self.preverify_bytes = preverify_bytes
        self.alarm = alarm or _log_alarm
        self.reload = reload

    # --- writing ---

    def put(self, source: Path, size: int, *, spool: SpoolFile | None = None) -> AtRest:
        """Store the ``size``-byte document at ``source`` (consumed) and say how it is held: a
        plaintext file, or the sealed spool file ``spool`` (read through its in-memory key)."""
        if not self.encrypt and spool is None:
            return AtRest(self.store.put(source), crypto.PLAINTEXT, None, None)
        if not self.encrypt:
            assert spool is not None
            key = self.store.put_stream(iter_plaintext(spool), size)
            source.unlink(missing_ok=True)
            return AtRest(key, crypto.PLAINTEXT, None, None)
        assert self.ring is not None
        dek = crypto.new_dek()
        kek_id, wrapped = self.ring.wrap(dek)
        with spool.open() if spool is not None else open(source, "rb") as fh:
            key = self.store.put_stream(crypto.seal(fh, size, dek), crypto.sealed_size(size))
        source.unlink(missing_ok=True)
        return AtRest(key, crypto.SCHEME, kek_id, wrapped)

    def delete(self, key: str) -> None:
        self.store.delete(key)

    def exists(self, key: str) -> bool:
        return self.store.exists(key)

    # --- reading ---

    def _fail(self, doc: StoredDocument, reason: str, *, tampered: bool = True) -> UnreadableDocument:
        if tampered:
            self.alarm(doc.unique_id, reason)
        else:
            log.error("stored document %s cannot be read: %s", doc.unique_id, reason)
        return UnreadableDocument(doc.unique_id, reason, tampered=tampered)

    def _dek(self, doc: StoredDocument) -> bytes:
        if doc.encryption != crypto.SCHEME:
            raise self._fail(doc, f"unknown at-rest encoding {doc.encryption!r}", tampered=False)
        if self.ring is None or doc.kek_id is None or doc.wrapped_dek is None:
            raise self._fail(doc, "no key-encryption key is configured", tampered=False)
        try:
            return self.ring.unwrap(doc.kek_id, doc.wrapped_dek)
        except UnknownKek as exc:
            # `keys rotate` may have re-wrapped this DEK under a KEK added since this process started.
            try:
                fresh = self.reload() if self.reload is not None else None
            except KeyConfigError as reload_error:
                log.error("could not reload the key-encryption keys: %s", reload_error)
                fresh = None
            if fresh is None or doc.kek_id not in fresh.keys:
                raise self._fail(doc, str(exc), tampered=False) from None
            self.ring = KeyRing(fresh.keys, self.ring.current, fresh.source)
            return self._dek(doc)
        except DekUnwrapFailed as exc:
            raise self._fail(doc, str(exc)) from None

    def open(self, doc: StoredDocument) -> Callable[[], Iterator[bytes]]:
        """Check ``doc`` before a response names it and return the source of its verified plaintext.
        StoredObjectMissing when the store has no object; UnreadableDocument when it does not verify."""
        size = self.store.size(doc.store_key)
        if doc.encryption == crypto.PLAINTEXT:
            if size != doc.size:
                raise self._fail(doc, f"stored object has {size} bytes, the document {doc.size}")
            if size <= self.preverify_bytes:
                for _ in self._plain(doc):
                    pass
            return lambda: self._plain(doc)
        dek = self._dek(doc)
        try:
            self._check_sealed(doc, dek, size)
        except crypto.TamperedDocument as exc:
            raise self._fail(doc, str(exc)) from None
        return lambda: self._sealed(doc, dek)

    def _check_sealed(self, doc: StoredDocument, dek: bytes, size: int) -> None:
        header_raw = read_exact(self.store, doc.store_key, 0, crypto.HEADER.size)
        header = crypto.Header.unpack(header_raw)
        expected = crypto.sealed_size(doc.size, header.segment)
        if size != expected:
            raise crypto.TamperedDocument(f"sealed object has {size} bytes where {expected} were written")
        if size <= self.preverify_bytes:
            for _ in crypto.open_stream(self.store.chunks(doc.store_key), dek, doc.size):
                pass
            return
        count = crypto.segment_count(doc.size, header.segment)
        for index in {0, count - 1}:
            offset, length = crypto.segment_span(index, doc.size, header.segment)
            sealed = read_exact(self.store, doc.store_key, offset, length)
            crypto.open_segment(dek, header_raw, index, index == count - 1, sealed)

    def _sealed(self, doc: StoredDocument, dek: bytes) -> Iterator[bytes]:
        try:
            yield from crypto.open_stream(self.store.chunks(doc.store_key), dek, doc.size)
        except crypto.TamperedDocument as exc:
            raise self._fail(doc, str(exc)) from None

    def _plain(self, doc: StoredDocument) -> Iterator[bytes]:
        sha, size, held = hashlib.sha1(), 0, b""
        for block in self.store.chunks(doc.store_key):
            if held:
                yield held
            sha.update(block)
            size += len(block)
            held = block
        if size != doc.size or sha.hexdigest() != doc.sha1:
            raise self._fail(doc, "stored plaintext does not match the size and SHA-1 registered")
        if held:
            yield held

    def plaintext(self, doc: StoredDocument) -> Iterator[bytes]:
        """The verified plaintext of ``doc`` (UnreadableDocument / StoredObjectMissing as ``open``)."""
        return self.open(doc)()

    def to_file(self, doc: StoredDocument, directory: Path) -> Path:
        """The verified plaintext in a new 0600 file in ``directory`` (the caller deletes it), for
        readers that need a file, such as DICOM transcoding."""
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix="plain-")
        try:
            with os.fdopen(fd, "wb") as fh:
                for block in self.plaintext(doc):
                    fh.write(block)
        except BaseException:
            os.unlink(name)
            raise
        return Path(name)


def build_store(settings: Settings) -> DocumentStore:
    """The configured raw store: S3-compatible for an s3:// store_url, else the filesystem."""
    if settings.store_url:
        from repository.store_s3 import S3Store

        return S3Store(settings)
    return FilesystemStore(settings.effective_store_path)


def build_sealed_store(settings: Settings, alarm: Alarm | None = None) -> SealedStore:
    """The repository's document storage as configured (generating the embedded KEK on first start)."""
    if settings.encryption not in ENCRYPTION_MODES:
        raise ValueError(f"encryption {settings.encryption!r} must be one of {', '.join(ENCRYPTION_MODES)}")
    encrypt = settings.encryption != "none"
    # With encryption off, configured KEKs still serve the documents sealed before it was turned off.
    ring = load_key_ring(settings, create=encrypt)
    return SealedStore(
        build_store(settings),
        ring,
        encrypt=encrypt,
        preverify_bytes=settings.encryption_preverify_bytes,
        alarm=alarm,
        reload=lambda: load_key_ring(settings, create=False),
    )
