"""``clearinghouse pix ...``: domains, ITI-10 subscriptions and the dead-letter list."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from clearinghouse import hl7
from clearinghouse.config import load_settings
from pix_manager import admin
from pix_manager.manager import AFFINITY_DESCRIPTION, AFFINITY_NAMESPACE

SessionsFor = Callable[[argparse.Namespace], sessionmaker[Session]]


def _run(sessions_for: SessionsFor, args: argparse.Namespace, action: Callable[[Connection], int]) -> int:
    sessions = sessions_for(args)
    settings = load_settings({"home": args.home, "database_url": args.database_url})
    with sessions.begin() as session:
        conn = session.connection()
        # The affinity domain is always served; make it visible before the server first starts.
        admin.ensure_domain(conn, settings.affinity_domain_oid, AFFINITY_NAMESPACE, description=AFFINITY_DESCRIPTION)
        return action(conn)


def register(
    sub: Any,
    common: Callable[[argparse.ArgumentParser], None],
    sessions_for: SessionsFor,
) -> None:
    """Add the ``pix`` command group to the ``clearinghouse`` parser."""
    pix = sub.add_parser("pix", help="PIX Manager: identifier domains, ITI-10 subscriptions, dead letters")
    psub = pix.add_subparsers(dest="pix_command", required=True)

    domains = psub.add_parser("domains", help="the Patient Identification Domains this PIX Manager serves")
    dsub = domains.add_subparsers(dest="domains_command", required=True)
    add = dsub.add_parser("add", help="add a domain, or change the one with this OID")
    common(add)
    add.add_argument("oid", help="the assigning authority's ISO OID (PID-3.4.2)")
    add.add_argument("--namespace", required=True, help="its namespace id (PID-3.4.1)")
    add.add_argument("--source", help="the one participant allowed to feed it (default: any with role source)")
    add.add_argument("--description", default="")
    add.set_defaults(func=lambda a: _run(sessions_for, a, lambda c: _domains_add(c, a)))
    lst = dsub.add_parser("list", help="list the domains")
    common(lst)
    lst.set_defaults(func=lambda a: _run(sessions_for, a, _domains_list))

    s = psub.add_parser("subscribe", help="send ITI-10 PIX Update Notifications to a consumer")
    common(s)
    s.add_argument("name")
    s.add_argument("--url", required=True, help="mllp+tls://HOST:PORT of the consumer")
    s.add_argument("--domain", action="append", default=[], help="OID or namespace of interest (repeatable; none: all)")
    s.add_argument("--ca", default="", help="CA of the consumer's server certificate (default: the clearinghouse CA)")
    s.set_defaults(func=lambda a: _run(sessions_for, a, lambda c: _subscribe(c, a)))
    u = psub.add_parser("unsubscribe", help="stop notifying a consumer")
    common(u)
    u.add_argument("name")
    u.set_defaults(func=lambda a: _run(sessions_for, a, lambda c: _unsubscribe(c, a)))
    ls = psub.add_parser("subscriptions", help="list the subscribed consumers")
    common(ls)
    ls.set_defaults(func=lambda a: _run(sessions_for, a, _subscriptions))

    dl = psub.add_parser("dead-letters", help="notifications and registry feeds that could not be delivered")
    common(dl)
    dl.add_argument("action", nargs="?", choices=["list", "replay", "show"], default="list")
    dl.add_argument("id", nargs="?", type=int, help="outbox entry id (replay, show)")
    dl.set_defaults(func=lambda a: _run(sessions_for, a, lambda c: _dead_letters(c, a)))


def _domains_add(conn: Connection, args: argparse.Namespace) -> int:
    d = admin.set_domain(conn, args.oid, args.namespace, source=args.source, description=args.description)
    print(f"domain {d.namespace} ({d.oid}) fed by {d.source or 'any source participant'}")
    return 0


def _domains_list(conn: Connection) -> int:
    print(f"{'NAMESPACE':20} {'OID':40} {'SOURCE':24} DESCRIPTION")
    for d in admin.list_domains(conn):
        print(f"{d.namespace:20} {d.oid:40} {d.source or '(any source)':24} {d.description}")
    return 0


def _subscribe(conn: Connection, args: argparse.Namespace) -> int:
    sub = admin.subscribe(conn, args.name, args.url, args.domain, ca_file=args.ca)
    domains = ", ".join(sorted(sub.domains)) or "all domains"
    print(f"subscription {sub.name}: ITI-10 to {sub.url} for {domains}")
    return 0


def _unsubscribe(conn: Connection, args: argparse.Namespace) -> int:
    admin.unsubscribe(conn, args.name)
    print(f"subscription {args.name} removed")
    return 0


def _subscriptions(conn: Connection) -> int:
    print(f"{'NAME':24} {'URL':40} DOMAINS")
    for s in admin.load_config(conn).subscriptions:
        print(f"{s.name:24} {s.url:40} {' '.join(sorted(s.domains)) or '(all)'}")
    return 0


def _dead_letters(conn: Connection, args: argparse.Namespace) -> int:
    if args.action in ("replay", "show") and args.id is None:
        raise admin.PixAdminError(f"dead-letters {args.action} needs the entry id (see 'dead-letters list')")
    if args.action == "replay":
        entry = admin.replay(conn, args.id)
        print(f"outbox entry {entry.id} to {entry.destination} queued again; it is sent within a second")
        return 0
    if args.action == "show":
        entry = next((e for e in admin.dead_letters(conn) if e.id == args.id), None)
        if entry is None:
            raise admin.PixAdminError(f"no dead letter {args.id}")
        print(f"# {entry.transaction} to {entry.destination}, {entry.attempts} attempt(s): {entry.last_error}")
        print(entry.message.decode("utf-8", "replace").replace("\r", "\n"), end="")
        return 0
    print(
        f"{'ID':>6} {'DESTINATION':20} {'TRANSACTION':11} {'ATTEMPTS':>8} {'CREATED':20} {'CONTROL ID':22} LAST ERROR"
    )
    for e in admin.dead_letters(conn):
        try:
            control = hl7.parse_message(e.message).control_id
        except hl7.MalformedMessage:
            control = "?"
        created = e.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{e.id:>6} {e.destination:20} {e.transaction:11} {e.attempts:>8} {created:20} {control:22} {e.last_error}"
        )
    return 0
