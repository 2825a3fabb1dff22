"""Configuration: one immutable Settings object, built from defaults, environment and CLI flags.

Every setting has a ``CLEARINGHOUSE_*`` environment variable; CLI flags win over the environment.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "CLEARINGHOUSE_"

# The RSNA Image Share network's assigning authority for RSNA-IDs (see docs/rsna-id.md).
DEFAULT_AFFINITY_DOMAIN_OID = "1.3.6.1.4.1.19376.3.840.1.1.1"


@dataclass(frozen=True)
class Settings:
    home: Path = Path("clearinghouse-data")
    bind: str = "127.0.0.1"
    https_port: int = 8443
    feed_port: int = 8890
    database_url: str = ""  # empty: SQLite file in home
    store_path: str = ""  # empty: home/documents
    # Registry the repository registers with (ITI-42). Empty: the in-process registry.
    registry_url: str = ""
    # CA that issued the remote registry's server certificate; empty: this server's CA.
    registry_ca: str = ""
    repository_unique_id: str = "1.3.6.1.4.1.21367.2026.1.1"
    home_community_id: str = "urn:oid:1.3.6.1.4.1.21367.2026.1"
    affinity_domain_oid: str = DEFAULT_AFFINITY_DOMAIN_OID
    rsna_id_algorithm: str = "rsna-sha256-v1"
    # Paths of this server's TLS identity; empty: the development PKI under home/pki.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # Client identity used when the repository calls a remote registry.
    client_cert: str = ""
    client_key: str = ""
    # Limits on hostile input.
    max_envelope_bytes: int = 16 * 1024 * 1024
    max_inline_document_bytes: int = 64 * 1024 * 1024
    max_request_bytes: int = 64 * 1024 * 1024 * 1024
    max_xml_depth: int = 64
    max_hl7_message_bytes: int = 1024 * 1024
    query_max_results: int = 1000
    # Registry load limits: transactions running at once (more wait up to registry_busy_wait_ms, then
    # XDSRegistryBusy), and how long a registry write waits for a PostgreSQL row/table lock.
    registry_max_concurrent: int = 12
    registry_busy_wait_ms: int = 2000
    registry_lock_timeout_ms: int = 10000
    http_threads: int = 16
    log_level: str = "INFO"
    # Audit Record Repository (atna): ITI-20 syslog over TLS (RFC 5425) and UDP (RFC 5426).
    syslog_tls_port: int = 6514
    syslog_udp_port: int = 5514
    max_syslog_message_bytes: int = 1024 * 1024
    # Where this node's audit events go: empty for the built-in repository, or syslog+tls://HOST:PORT
    # (identity: client_cert/client_key; trust: audit_repository_ca, default this server's CA).
    audit_repository_url: str = ""
    audit_repository_ca: str = ""
    audit_source_id: str = "ISN-CLEARINGHOUSE"
    audit_site_id: str = ""
    # PIX Manager (pix_manager): ITI-8/9/10 over MLLP/TLS on its own port; ITI-10 and registry
    # deliveries retried from pix_notify_retry_ms (doubling) up to pix_notify_max_attempts, then
    # dead letters; accepted messages remembered for duplicate control for this many hours.
    pix_port: int = 8888
    pix_notify_max_attempts: int = 5
    pix_notify_retry_ms: int = 2000
    pix_duplicate_window_hours: int = 168
    # Where merges of affinity-domain identifiers are fed (ITI-8); empty: the in-process registry.
    pix_registry_feed_url: str = ""
    # Web console (console): HTTPS for browsers on its own port (server certificate only; -1: not
    # served). A sign-in session ends after console_session_minutes without use and after
    # console_session_max_hours in any case; console_lockout_attempts failed sign-ins in a row lock
    # the account for console_lockout_minutes.
    console_port: int = 9443
    console_session_minutes: int = 30
    console_session_max_hours: int = 12
    console_lockout_attempts: int = 5
    console_lockout_minutes: int = 15
    # Retention (docs/retention.md): submissions are kept retention_days from registration unless the
    # participant or the submission says less; `serve` purges every retention_purge_interval_seconds
    # (0: no scheduler), in batches of retention_purge_batch submission sets; bytes the registry no
    # longer references are swept once older than retention_sweep_grace_hours.
    retention_days: int = 30
    retention_purge_interval_seconds: int = 3600
    retention_purge_batch: int = 100
    retention_sweep_grace_hours: int = 24
    # Document storage (docs/storage.md): empty store_url is the filesystem store at store_path;
    # s3://BUCKET/PREFIX is an S3-compatible service at s3_endpoint (http(s)://HOST:PORT, empty: AWS),
    # trusting s3_ca (empty: the public CAs), uploading in parts of s3_part_size bytes.
    store_url: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = ""
    s3_ca: str = ""
    s3_part_size: int = 16 * 1024 * 1024
    # Encryption at rest: aes-256-gcm (default) or none (new documents stored as they came). KEKs:
    # kek_files "ID=PATH,...", kek_keys "ID=BASE64,..." (secrets in the environment), kek_current the
    # one new data keys are wrapped under; none configured: generated into home/keys. Documents of at
    # most encryption_preverify_bytes are verified whole before an ITI-43/RAD-69 response starts.
    encryption: str = "aes-256-gcm"
    kek_files: str = ""
    kek_keys: str = ""
    kek_current: str = ""
    encryption_preverify_bytes: int = 16 * 1024 * 1024
    # PostgreSQL connection pool of each process (clearinghouse.db.PoolSettings; SQLite ignores them):
    # connections kept, extra ones under load, seconds to wait for one, test before use, replace after.
    db_pool_size: int = 10
    db_pool_max_overflow: int = 20
    db_pool_timeout_seconds: int = 30
    db_pool_pre_ping: bool = True
    db_pool_recycle_seconds: int = 1800
    # pre_ping tests only a connection idle in the pool at least this long (0: every check-out);
    # see clearinghouse.db.PoolSettings and docs/decisions.md.
    db_pool_pre_ping_idle_ms: int = 1000
    # This process's ITI-20 spool (empty: home/audit-spool). One process owns a spool: several `serve`
    # processes sharing a home each need their own, on local disk (docs/operations.md).
    audit_spool_path: str = ""
    # Log lines as text or as one JSON object per line, each with the request id (clearinghouse.logging_setup).
    log_format: str = "text"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pki_dir(self) -> Path:
        return self.home / "pki"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def audit_spool_dir(self) -> Path:
        return Path(self.audit_spool_path) if self.audit_spool_path else self.home / "audit-spool"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'clearinghouse.db').resolve()}"

    @property
    def effective_store_path(self) -> Path:
        return Path(self.store_path) if self.store_path else self.home / "documents"

    @property
    def server_cert_path(self) -> Path:
        return Path(self.tls_cert) if self.tls_cert else self.pki_dir / "server.cert.pem"

    @property
    def server_key_path(self) -> Path:
        return Path(self.tls_key) if self.tls_key else self.pki_dir / "server.key.pem"

    @property
    def ca_cert_path(self) -> Path:
        return Path(self.tls_ca) if self.tls_ca else self.pki_dir / "ca.cert.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.pki_dir / "ca.key.pem"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _coerce(kind: Any, raw: str) -> Any:
    if kind in (int, "int"):
        return int(raw)
    if kind in (bool, "bool"):
        word = raw.strip().lower()
        if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError("expected true or false")
        return word in ("1", "true", "yes", "on")
    if kind in (Path, "Path"):
        return Path(raw)
    return raw


def load_settings(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults, then ``CLEARINGHOUSE_*`` variables, then explicit overrides (CLI flags; None = unset)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name == "extra":
            continue
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw != "":
            try:
                values[f.name] = _coerce(f.type, raw)
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: {exc}") from exc
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = Path(value) if key == "home" else value
    return Settings(**values)
