"""``clearinghouse conformance session new|list|show|close``: sessions on the command line
(conformance.sessions is the API behind them)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from clearinghouse import db
from clearinghouse.config import Settings, load_settings
from conformance import sessions as api


def _database(args: argparse.Namespace) -> tuple[Settings, Any]:
    from clearinghouse.app import prepare_home

    settings = load_settings({"home": args.home, "database_url": args.database_url})
    prepare_home(settings)
    engine = db.make_engine(settings.effective_database_url)
    db.upgrade(engine)
    return settings, db.session_factory(engine)


def _preloader(args: argparse.Namespace, settings: Settings, sessions: Any) -> api.Preloader:
    from clearinghouse.soap.client import https_client
    from clearinghouse.tls import client_context
    from conformance.edge import EdgeSimulator
    from conformance.preload import edge_preloader, preload_identity

    server = args.server or f"https://localhost:{settings.https_port}"
    feed = args.feed or f"mllp+tls://localhost:{settings.feed_port}"
    ca = args.ca or settings.ca_cert_path
    cert, key = (args.edge_cert, args.edge_key) if args.edge_cert else preload_identity(settings, sessions)
    edge = EdgeSimulator(
        https_client(server.rstrip("/") + "/xds/repository", ca, cert, key, settings.spool_dir),
        feed,
        client_context(ca, cert, key),
        affinity_domain_oid=settings.affinity_domain_oid,
        repository_unique_id=settings.repository_unique_id,
    )
    return edge_preloader(edge, settings.home / "conformance" / "preload")


def cmd_session_new(args: argparse.Namespace) -> int:
    settings, sessions = _database(args)
    preload = _preloader(args, settings, sessions) if args.role == "phr" else None
    view = api.open_session(
        sessions, settings, role=args.role, participant=args.participant, timeout=args.timeout, preload=preload
    )
    print(api.render_test_data(view))
    print(f"\nJudge it: clearinghouse conformance run --role {view.role} --session {view.id}")
    return 0


def cmd_session_list(args: argparse.Namespace) -> int:
    _, sessions = _database(args)
    print(f"{'ID':14} {'ROLE':5} {'STATE':7} {'CREATED':20} PARTICIPANT")
    for v in api.list_sessions(sessions, open_only=args.open):
        state = "open" if v.is_open() else "closed"
        print(f"{v.id:14} {v.role:5} {state:7} {v.created_at:%Y-%m-%d %H:%M:%S}Z  {v.participant}")
    return 0


def cmd_session_show(args: argparse.Namespace) -> int:
    _, sessions = _database(args)
    view = api.get_session(sessions, args.id)
    recorded = api.transactions(sessions, args.id)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "transaction": r.transaction,
                        "received_at": r.received_at.isoformat(),
                        "facts": r.facts,
                        "findings": [f.as_dict() for f in r.findings],
                    }
                    for r in recorded
                ],
                indent=2,
            )
        )
        return 0
    print(api.render_test_data(view))
    print(f"\n{len(recorded)} transaction(s) recorded")
    for r in recorded:
        failed = [f for f in r.findings if not f.passed]
        verdict = "ok" if not failed else f"{len(failed)} rule(s) broken"
        print(f"  #{r.id} {r.received_at:%H:%M:%S} {r.transaction:7} {verdict}")
        for f in failed:
            print(f"      {f}")
    return 0


def cmd_session_close(args: argparse.Namespace) -> int:
    _, sessions = _database(args)
    view = api.close_session(sessions, args.id)
    print(f"session {view.id} closed; what it recorded stays readable (conformance session show {view.id})")
    return 0


def add_session_commands(csub: Any) -> None:
    session = csub.add_parser("session", help="sessions that record and judge an edge or a PHR under test")
    ssub = session.add_subparsers(dest="session_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--home", help="data directory (env CLEARINGHOUSE_HOME)")
        p.add_argument("--database-url", help="database (env CLEARINGHOUSE_DATABASE_URL)")

    new = ssub.add_parser("new", help="open a session for a participant and print its test data")
    common(new)
    new.add_argument("--role", required=True, choices=sorted(api.ROLES))
    new.add_argument("--participant", required=True, help="the registered participant under test")
    new.add_argument("--timeout", type=float, default=api.DEFAULT_TIMEOUT_S, help="seconds the session records")
    new.add_argument("--server", help="phr: the running clearinghouse's HTTPS URL, to preload the study through")
    new.add_argument("--feed", help="phr: its ITI-8 feed, mllp+tls://host:port")
    new.add_argument("--ca", help="phr: CA of its server certificate (default: the clearinghouse CA)")
    new.add_argument("--edge-cert", help="phr: preload as this registered source (default: an internal one)")
    new.add_argument("--edge-key")
    new.set_defaults(func=cmd_session_new)
    lst = ssub.add_parser("list", help="list sessions")
    common(lst)
    lst.add_argument("--open", action="store_true", help="only the open ones")
    lst.set_defaults(func=cmd_session_list)
    show = ssub.add_parser("show", help="a session's test data and what it recorded, with the findings")
    common(show)
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="the recorded transactions and findings as JSON")
    show.set_defaults(func=cmd_session_show)
    close = ssub.add_parser("close", help="stop recording")
    common(close)
    close.add_argument("id")
    close.set_defaults(func=cmd_session_close)
