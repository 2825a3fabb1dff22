"""`clearinghouse purge [--dry-run] [--now TIMESTAMP]`: one retention purge run from the command line
(the same coordinator the scheduler inside `serve` runs; docs/retention.md)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from clearinghouse.config import Settings

EXIT_OK, EXIT_ERRORS = 0, 1


def parse_now(value: str) -> datetime:
    """An ISO 8601 instant (``2026-12-24T03:00:00Z``, ``2026-12-24``); without a zone it is UTC."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--now {value!r} is not an ISO 8601 date or date-time") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class _RecordNow:
    """Audit sink of a command: each event stored at once (atna.cli.record_now), not queued."""

    def __init__(self, settings: Settings, engine: Any) -> None:
        self.settings, self.engine = settings, engine

    def emit(self, message: Any) -> None:
        from atna.cli import record_now

        record_now(self.settings, self.engine, message)


def run_purge(settings: Settings, sessions: Any, *, now: datetime | None, dry_run: bool) -> Any:
    """Wire this node's registry and repository for one purge run, auditing like `serve` does."""
    from atna.cli import operator
    from clearinghouse.app import retention_coordinator
    from clearinghouse.audit import AuditNode
    from clearinghouse.audit_events import Auditor
    from clearinghouse.peer import INTERNAL_REPOSITORY
    from clearinghouse.soap.client import SoapClient, WsgiTransport
    from registry.service import registry_endpoint
    from repository.service import RegistryClient, repository_endpoint
    from repository.store_sealed import audit_alarm, build_sealed_store

    engine = sessions.kw["bind"]
    node = AuditNode(settings.audit_source_id, settings.audit_site_id, app_name="isn-clearinghouse-cli")
    auditor = Auditor(_RecordNow(settings, engine), node)
    store = build_sealed_store(settings, audit_alarm(auditor.emit, node))
    registry = registry_endpoint(settings, sessions)
    registry_client = SoapClient(WsgiTransport(registry, INTERNAL_REPOSITORY), settings.spool_dir)
    repository = repository_endpoint(settings, sessions, store, RegistryClient(registry_client))
    repository.audit_hook = auditor.soap_operation
    coordinator = retention_coordinator(settings, sessions, repository, auditor.emit, node)
    return coordinator.run(now, dry_run=dry_run, operator=operator())


def cmd_purge(args: argparse.Namespace, settings: Settings, sessions: Any) -> int:
    report = run_purge(settings, sessions, now=args.now, dry_run=args.dry_run)
    verb = "would purge" if report.dry_run else "purged"
    print(f"retention purge at {report.now.isoformat()}: {verb} {len(report.submissions)} submission set(s)")
    for s in report.submissions:
        print(
            f"  {s.submission_set_unique_id}  patient {s.patient_id}  expired {s.expires_at.isoformat()}  "
            f"{len(s.documents)} document(s), {s.objects} registry object(s)"
        )
        for d in s.documents:
            if not d.released:
                fate = "bytes kept: another DocumentEntry names them"
            else:
                fate = "bytes to remove" if report.dry_run else "bytes removed"
            print(f"    document {d.unique_id} @ {d.repository_unique_id}: {fate}")
    if not report.dry_run:
        print(f"documents removed from the repository (ITI-86): {report.documents_removed}")
        print(f"unreferenced stored documents swept: {report.swept}")
        if report.left_to_other_repositories:
            print(f"documents held by other repositories, left to them: {report.left_to_other_repositories}")
    for error in report.errors:
        print(f"error: {error}")
    return EXIT_OK if report.ok else EXIT_ERRORS


def register(
    sub: Any,
    common: Callable[[argparse.ArgumentParser], None],
    sessions_of: Callable[[argparse.Namespace], tuple[Settings, Any]],
) -> None:
    p = sub.add_parser("purge", help="remove the submissions whose retention has expired (documents and metadata)")
    common(p)
    p.add_argument("--dry-run", action="store_true", help="list what would be purged; change nothing")
    p.add_argument(
        "--now",
        type=parse_now,
        help="purge as of this instant (ISO 8601, UTC unless a zone is given; default: the current time)",
    )
    p.set_defaults(func=lambda args: cmd_purge(args, *sessions_of(args)))
