"""``clearinghouse audit search|export|verify``: the audit trail for auditors at the command line, and
the audit events of the other CLI commands (participant changes).

Search and export take the ITI-81 parameters (same names, same meaning as ``GET /fhir/AuditEvent``)
and read the database directly; each use is itself recorded as "Audit Log Used".
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine

from atna import fhir, search, store
from atna.record import Received, derive
from clearinghouse import audit
from clearinghouse.audit import AuditMessage, AuditNode, Party
from clearinghouse.config import Settings

EXPORT_BASE = "AuditEvent"
FILTERS = {
    "date": "date",
    "entity_id": "entity-id",
    "patient_identifier": "patient.identifier",
    "source": "source",
    "type": "type",
    "subtype": "subtype",
    "outcome": "outcome",
    "address": "address",
    "agent": "agent",
}
CSV_COLUMNS = (
    "id",
    "recorded",
    "received",
    "event_id",
    "event",
    "action",
    "outcome",
    "subtypes",
    "source",
    "agents",
    "addresses",
    "patients",
    "entities",
    "transport",
    "sender",
    "valid",
    "findings",
    "hash",
)


def operator() -> Party:
    """Who ran the command: the operating-system user on this host."""
    host = socket.getfqdn()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Party(f"{user}@{host}", host, user)


def record_now(settings: Settings, engine: Engine, message: AuditMessage) -> None:
    """Record an audit event from a command: sent to the external repository when one is configured,
    else stored directly (durably, in the chain) in this clearinghouse's repository."""
    node = AuditNode(settings.audit_source_id, settings.audit_site_id, app_name="isn-clearinghouse-cli")
    data = audit.syslog_message(message.to_xml(), node, message.when)
    if settings.audit_repository_url:
        from clearinghouse.tls import client_context

        host, port = audit.parse_repository_url(settings.audit_repository_url)
        ctx = client_context(
            settings.audit_repository_ca or settings.ca_cert_path,
            settings.client_cert or None,
            settings.client_key or None,
        )
        sink = audit.SyslogTlsSink(host, port, ctx, node)
        sink.emit(data)
        if not sink.flush(15):
            print(
                f"clearinghouse: warning: audit event not delivered to {settings.audit_repository_url}", file=sys.stderr
            )
        sink.close(1)
        return
    rec = Received(datetime.now(UTC), "local", "", f"cli:{operator().user_id}", data, len(data))
    store.store(engine, [derive(rec)])


def participant_changed(
    settings: Settings, engine: Engine, change: str, name: str, roles: Iterable[str], fingerprint: str, subject: str
) -> None:
    node = AuditNode(settings.audit_source_id, settings.audit_site_id, app_name="isn-clearinghouse-cli")
    record_now(
        settings,
        engine,
        audit.participant_change(
            node=node,
            change=change,
            participant=name,
            roles=sorted(roles),
            fingerprint=fingerprint,
            subject=subject,
            operator=operator(),
        ),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", action="append", help="FHIR date with prefix, e.g. ge2026-01-01 (repeat to AND)")
    parser.add_argument("--entity-id", action="append", help="[system|]id of a participant object")
    parser.add_argument("--patient-identifier", action="append", help="[urn:oid:OID|]id, or ID^^^&OID&ISO")
    parser.add_argument("--source", action="append", help="AuditSourceID")
    parser.add_argument("--type", action="append", help="[system|]EventID code, e.g. 110112")
    parser.add_argument("--subtype", action="append", help="[system|]EventTypeCode, e.g. ITI-18")
    parser.add_argument("--outcome", action="append", help="0, 4, 8 or 12")
    parser.add_argument("--address", action="append", help="NetworkAccessPointID")
    parser.add_argument("--agent", action="append", help="UserID, AlternativeUserID or UserName")


def search_of(args: argparse.Namespace) -> fhir.Search:
    params = [(FILTERS[k], v) for k in FILTERS for v in (getattr(args, k, None) or [])]
    return fhir.parse_search(params, strict=True)


def _resource(row: dict[str, Any]) -> dict[str, Any]:
    return fhir.to_audit_event(row, search.parsed_of(row), EXPORT_BASE)


def csv_row(row: dict[str, Any]) -> dict[str, str]:
    p = search.parsed_of(row)
    return {
        "id": str(row["id"]),
        "recorded": row["event_time"],
        "received": row["received_at"],
        "event_id": row["event_id"],
        "event": p.event_id.display if p.event_id else "",
        "action": row["event_action"],
        "outcome": "" if row["event_outcome"] is None else str(row["event_outcome"]),
        "subtypes": ";".join(t.code for t in p.event_types),
        "source": row["audit_source_id"],
        "agents": ";".join(a.user_id for a in p.participants),
        "addresses": ";".join(a.address for a in p.participants if a.address),
        "patients": ";".join(p.patients()),
        "entities": ";".join(o.object_id for o in p.objects),
        "transport": row["transport"],
        "sender": row["peer_subject"] or row["peer_address"],
        "valid": "true" if row["valid"] else "false",
        "findings": row["findings"].replace("\n", " | "),
        "hash": row["hash"],
    }


def write_csv(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    n = 0
    for row in rows:
        writer.writerow(csv_row(row))
        n += 1
    return n


def write_json(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    """A FHIR collection Bundle of AuditEvents, written as it is read (exports may be large)."""
    out.write('{"resourceType":"Bundle","type":"collection","entry":[')
    n = 0
    for row in rows:
        out.write(
            ("," if n else "") + json.dumps({"fullUrl": f"{EXPORT_BASE}/{row['id']}", "resource": _resource(row)})
        )
        n += 1
    out.write("]}\n")
    return n


def _used(settings: Settings, engine: Engine, query: str) -> None:
    node = AuditNode(settings.audit_source_id, settings.audit_site_id, app_name="isn-clearinghouse-cli")
    record_now(
        settings, engine, audit.audit_log_used(node=node, auditor=operator(), log_uri="cli:audit", query=query.encode())
    )


def cmd_search(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    query = search_of(args)
    query.count, query.offset = max(1, min(args.count, fhir.MAX_COUNT)), args.offset
    with engine.connect() as conn:
        total, rows = search.run(conn, query)
    _used(settings, engine, "search " + " ".join(f"{k}={v}" for k, v in query.echo()))
    if args.format == "json":
        resources = [_resource(r) for r in rows]
        json.dump(fhir.bundle(EXPORT_BASE, query, total, resources, []), sys.stdout, indent=1)
        print()
    elif args.format == "csv":
        write_csv(iter(rows), sys.stdout)
    else:
        print(f"{total} record(s); showing {len(rows)} from offset {query.offset}")
        print(f"{'ID':>8} {'RECORDED':27} {'EVENT':22} {'SUBTYPE':10} {'OUT':>3} {'SOURCE':20} AGENTS")
        for r in rows:
            c = csv_row(r)
            flag = "" if r["valid"] else "  [invalid: " + c["findings"][:80] + "]"
            print(
                f"{c['id']:>8} {c['recorded']:27} {(c['event'] or c['event_id'])[:22]:22} "
                f"{c['subtypes'][:10]:10} {c['outcome']:>3} {c['source'][:20]:20} {c['agents'][:60]}{flag}"
            )
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    query = search_of(args)
    writer: Callable[[Iterator[dict[str, Any]], IO[str]], int] = write_csv if args.format == "csv" else write_json
    path = Path(args.out)
    with engine.connect() as conn, open(path, "w", newline="", encoding="utf-8") as out:
        n = writer(search.iterate(conn, query), out)
    _used(settings, engine, "export " + " ".join(f"{k}={v}" for k, v in query.echo()))
    print(f"{n} record(s) written to {path} ({args.format})")
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    report = store.verify(engine)
    _used(settings, engine, "verify")
    if report.intact:
        print(f"audit chain intact: {report.checked} record(s) verified")
        return 0
    print(
        f"audit chain BROKEN at record {report.broken_at}: {report.reason} "
        f"({report.checked} record(s) before it verified)"
    )
    return 1


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None], run: Callable[..., int]) -> None:
    """Add ``audit search|export|verify`` to the ``clearinghouse`` command; ``run(handler, args)`` calls
    a handler with the settings and engine of the command line."""
    a = sub.add_parser("audit", help="the audit trail: search, export, verify the hash chain")
    asub = a.add_subparsers(dest="audit_command", required=True)
    s = asub.add_parser("search", help="search audit records with the ITI-81 parameters")
    common(s)
    add_arguments(s)
    s.add_argument("--count", type=int, default=50, help="records per page (default 50, at most 1000)")
    s.add_argument("--offset", type=int, default=0, help="skip this many matches (paging)")
    s.add_argument("--format", choices=("table", "json", "csv"), default="table")
    s.set_defaults(func=lambda args: run(cmd_search, args))
    e = asub.add_parser("export", help="export every matching record as CSV or JSON (FHIR AuditEvents)")
    common(e)
    add_arguments(e)
    e.add_argument("--format", choices=("csv", "json"), required=True)
    e.add_argument("--out", required=True, help="file to write")
    e.set_defaults(func=lambda args: run(cmd_export, args))
    v = asub.add_parser("verify", help="check the hash chain; report the first broken link")
    common(v)
    v.set_defaults(func=lambda args: run(cmd_verify, args))
