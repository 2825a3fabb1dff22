"""The ``clearinghouse`` command."""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clearinghouse import db, logging_setup, participants, pki, rsna_id
from clearinghouse.config import Settings, load_settings

log = logging.getLogger("clearinghouse")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="data directory (env CLEARINGHOUSE_HOME, default ./clearinghouse-data)")
    parser.add_argument(
        "--database-url", help="SQLAlchemy URL (env CLEARINGHOUSE_DATABASE_URL; default SQLite in home)"
    )


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings({"home": args.home, "database_url": args.database_url, **extra})


def _sessions(settings: Settings):  # noqa: ANN202
    from clearinghouse.app import prepare_home

    prepare_home(settings)
    engine = db.engine_for(settings)
    db.upgrade(engine)
    return db.session_factory(engine)


def cmd_serve(args: argparse.Namespace) -> int:
    from clearinghouse.app import build

    settings = _settings(
        args, bind=args.bind, https_port=args.https_port, feed_port=args.feed_port, pix_port=args.pix_port
    )
    settings = settings.replace(
        **{
            k: v
            for k, v in (
                ("syslog_tls_port", args.syslog_tls_port),
                ("syslog_udp_port", args.syslog_udp_port),
                ("console_port", args.console_port),
            )
            if v is not None
        }
    )
    if args.log_format is not None:
        settings = settings.replace(log_format=args.log_format)
    logging_setup.configure(settings.log_level, settings.log_format)
    ch = build(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ch.start()
    print(f"ISN clearinghouse serving (data in {settings.home.resolve()})")
    for name, url in ch.endpoints.items():
        print(f"  {name}: {url}")
    print(f"  CA certificate: {settings.ca_cert_path.resolve()}")
    print("Register a participant: clearinghouse participants add NAME --role source --out DIR", flush=True)
    stop.wait()
    print("stopping", flush=True)
    ch.stop()
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _sessions(settings)
    print(f"database at {settings.effective_database_url.split('@')[-1]} is up to date")
    return 0


def cmd_participants_add(args: argparse.Namespace) -> int:
    settings = _settings(args)
    sessions = _sessions(settings)
    roles = participants.check_roles(args.role)
    ca = pki.load_ca(settings.pki_dir)
    identity = pki.issue_certificate(ca, args.name, client=True)
    with db.transaction(sessions) as session:
        view = participants.register(session, args.name, roles, identity.certificate, "issued")
        if args.retention_days is not None:
            view = participants.set_retention(session, args.name, args.retention_days)
    _audit_participant(settings, sessions, "add", view)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pki.write_private(out / f"{args.name}.key.pem", identity.key_pem)
    (out / f"{args.name}.cert.pem").write_bytes(identity.cert_pem)
    (out / "ca.cert.pem").write_bytes(ca.cert_pem)
    password = args.p12_password or secrets.token_urlsafe(12)
    pki.write_private(out / f"{args.name}.p12", pki.pkcs12_bundle(identity, ca.cert_pem, args.name, password.encode()))
    if not args.p12_password:
        pki.write_private(out / f"{args.name}.p12.password", password.encode() + b"\n")
    print(f"participant {view.name} ({', '.join(sorted(view.roles))}) registered")
    print(f"  certificate {out / (args.name + '.cert.pem')}  SHA-256 {view.fingerprint}")
    print(f"  key {out / (args.name + '.key.pem')}, CA {out / 'ca.cert.pem'}, PKCS#12 {out / (args.name + '.p12')}")
    return 0


def cmd_participants_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    sessions = _sessions(settings)
    cert = pki.load_certificate(Path(args.cert).read_bytes())
    with db.transaction(sessions) as session:
        view = participants.register(session, args.name, args.role, cert, "imported")
    _audit_participant(settings, sessions, "import", view)
    print(
        f"participant {view.name} ({', '.join(sorted(view.roles))}) imported: {view.subject}, "
        f"SHA-256 {view.fingerprint}"
    )
    return 0


def cmd_participants_list(args: argparse.Namespace) -> int:
    sessions = _sessions(_settings(args))
    with sessions() as session:
        rows = participants.list_all(session)
    print(f"{'NAME':24} {'ROLES':24} {'ORIGIN':9} {'STATUS':8} {'EXPIRES':20} SUBJECT")
    for p in rows:
        status = "revoked" if p.revoked else "active"
        print(
            f"{p.name:24} {','.join(sorted(p.roles)):24} {p.origin:9} {status:8} "
            f"{p.not_after:%Y-%m-%d %H:%M}Z{'':3} {p.subject}"
        )
    return 0


def cmd_participants_retention(args: argparse.Namespace) -> int:
    settings = _settings(args)
    sessions = _sessions(settings)
    with db.transaction(sessions) as session:
        view = participants.set_retention(session, args.name, None if args.default else args.retention_days)
    days = view.retention_days
    kept = f"{days} days" if days is not None else f"{settings.retention_days} days (default)"
    _audit_participant(settings, sessions, f"retention {kept}", view)
    print(f"participant {view.name}: submissions registered from now on are kept {kept}")
    return 0


def cmd_participants_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    sessions = _sessions(settings)
    with db.transaction(sessions) as session:
        view = participants.revoke(session, args.name)
    _audit_participant(settings, sessions, "revoke", view)
    print(f"participant {view.name} revoked: its certificate is refused from now on")
    return 0


def _audit_participant(settings: Settings, sessions: Any, change: str, view: participants.ParticipantView) -> None:
    from atna.cli import participant_changed

    engine = sessions.kw["bind"]
    participant_changed(settings, engine, change, view.name, view.roles, view.fingerprint, view.subject)


def _run_audit(handler: Any, args: argparse.Namespace) -> int:
    settings = _settings(args)
    sessions = _sessions(settings)
    return handler(args, settings, sessions.kw["bind"])


def _audit_security_configuration(settings: Settings, engine: Any, description: str) -> None:
    """A Security Alert (Security Configuration) for a change made by a command, e.g. key rotation."""
    from atna.cli import operator, record_now
    from clearinghouse import audit

    node = audit.AuditNode(settings.audit_source_id, settings.audit_site_id, app_name="isn-clearinghouse-cli")
    message = audit.security_alert(
        audit.Code("110129", "DCM", "Security Configuration"),
        node=node,
        subject="urn:isn-clearinghouse:encryption-keys",
        description=description,
        offender=operator(),
        outcome=audit.SUCCESS,
    )
    record_now(settings, engine, message)


def cmd_rsna_id(args: argparse.Namespace) -> int:
    settings = load_settings({"home": args.home})
    algorithm = args.algorithm or settings.rsna_id_algorithm
    value = rsna_id.compute_rsna_id(args.access_code, args.dob, args.password, algorithm=algorithm)
    print(value, rsna_id.patient_cx(value, args.oid or settings.affinity_domain_oid))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clearinghouse", description="ISN Image Clearinghouse")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="start every actor with the configured (or embedded) defaults")
    _common(s)
    s.add_argument("--bind", help="address to listen on (env CLEARINGHOUSE_BIND, default 127.0.0.1)")
    s.add_argument("--https-port", type=int, help="HTTPS port for the SOAP endpoints (default 8443)")
    s.add_argument("--feed-port", type=int, help="ITI-8 patient identity feed, MLLP/TLS (default 8890)")
    s.add_argument("--pix-port", type=int, help="PIX Manager ITI-8/ITI-9, MLLP/TLS (default 8888)")
    s.add_argument("--syslog-tls-port", type=int, help="ITI-20 audit records, syslog over TLS (default 6514)")
    s.add_argument("--syslog-udp-port", type=int, help="ITI-20 audit records, syslog over UDP (default 5514)")
    s.add_argument("--console-port", type=int, help="web console for browsers, HTTPS (default 9443; -1: not served)")
    s.add_argument(
        "--log-format", choices=logging_setup.LOG_FORMATS, help="text or json lines with request ids (default text)"
    )
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("db", help="database maintenance")
    dsub = d.add_subparsers(dest="db_command", required=True)
    u = dsub.add_parser("upgrade", help="apply Alembic migrations")
    _common(u)
    u.set_defaults(func=cmd_db_upgrade)

    pp = sub.add_parser("participants", help="sites, PHRs and people allowed to connect")
    psub = pp.add_subparsers(dest="participants_command", required=True)
    a = psub.add_parser("add", help="issue a client certificate from the clearinghouse CA and register it")
    _common(a)
    a.add_argument("name")
    a.add_argument("--role", action="append", required=True, help="source, consumer, auditor or admin (repeatable)")
    a.add_argument("--out", required=True, help="directory for NAME.key.pem, NAME.cert.pem, ca.cert.pem, NAME.p12")
    a.add_argument("--p12-password", help="password of the PKCS#12 bundle (default: random, written beside it)")
    a.add_argument("--retention-days", type=int, help="keep this participant's submissions N days (default: 30)")
    a.set_defaults(func=cmd_participants_add)
    rt = psub.add_parser("retention", help="how long a participant's future submissions are kept")
    _common(rt)
    rt.add_argument("name")
    rtv = rt.add_mutually_exclusive_group(required=True)
    rtv.add_argument("--retention-days", type=int, help="keep its submissions N days (1 to 3650)")
    rtv.add_argument("--default", action="store_true", help="back to CLEARINGHOUSE_RETENTION_DAYS")
    rt.set_defaults(func=cmd_participants_retention)
    i = psub.add_parser("import", help="register a certificate issued elsewhere")
    _common(i)
    i.add_argument("name")
    i.add_argument("--cert", required=True)
    i.add_argument("--role", action="append", required=True)
    i.set_defaults(func=cmd_participants_import)
    lst = psub.add_parser("list", help="list participants")
    _common(lst)
    lst.set_defaults(func=cmd_participants_list)
    r = psub.add_parser("revoke", help="refuse a participant's certificate from now on")
    _common(r)
    r.add_argument("name")
    r.set_defaults(func=cmd_participants_revoke)

    from atna.cli import register as register_audit_commands

    register_audit_commands(sub, _common, _run_audit)

    from pix_manager.cli import register as register_pix_commands

    register_pix_commands(sub, _common, lambda a: _sessions(_settings(a)))

    from console.cli import register as register_user_commands

    register_user_commands(sub, _common, lambda a: _sessions(_settings(a)))

    from repository.keys_cli import register as register_key_commands

    register_key_commands(sub, _common, _run_audit, _audit_security_configuration)

    from clearinghouse.retention_cli import register as register_purge_command

    register_purge_command(sub, _common, lambda a: (lambda s: (s, _sessions(s)))(_settings(a)))

    ri = sub.add_parser("rsna-id", help="compute the RSNA-ID and affinity-domain patient ID")
    ri.add_argument("--home", help=argparse.SUPPRESS)
    ri.add_argument("--access-code", required=True)
    ri.add_argument("--dob", required=True, help="date of birth, YYYYMMDD")
    ri.add_argument("--password")
    ri.add_argument("--algorithm", help=f"one of {', '.join(rsna_id.available_algorithms())}")
    ri.add_argument("--oid", help="assigning authority OID (default: configured affinity domain)")
    ri.set_defaults(func=cmd_rsna_id)

    from conformance.cli import add_simulator_commands

    add_simulator_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (participants.ParticipantError, ValueError, FileNotFoundError) as exc:
        print(f"clearinghouse: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:  # refused by a peer, or the peer could not be reached
        print(f"clearinghouse: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
