"""The ``clearinghouse keys`` commands: status, generate (embedded key directory) and rotate."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from clearinghouse import db
from clearinghouse.config import Settings
from repository.keys import KeyConfigError, KeyRing, generate_key, keys_dir, load_key_ring
from repository.keys_admin import rotate, status

# (settings, engine, description) -> records a Security Configuration audit event for the change.
AuditChange = Callable[[Settings, Engine, str], None]
Run = Callable[..., int]


def _ring(settings: Settings) -> KeyRing:
    ring = load_key_ring(settings, create=False)
    if ring is None:
        raise KeyConfigError(f"no key-encryption key is configured and none is in {keys_dir(settings)}")
    return ring


def cmd_status(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    ring = _ring(settings)
    st = status(db.session_factory(engine), ring)
    print(f"encryption of new documents: {settings.encryption}")
    print(f"KEKs ({st.source}); current: {st.current}")
    for kid in sorted(set(st.configured) | set(st.by_kek)):
        marks = [m for m, on in (("current", kid == st.current), ("NOT CONFIGURED", kid in st.missing)) if on]
        note = f" ({', '.join(marks)})" if marks else ""
        print(f"  {kid}: {st.by_kek.get(kid, 0)} document(s){note}")
    print(f"plaintext documents (stored before encryption): {st.plaintext}")
    if st.removable:
        print(f"no document needs: {', '.join(st.removable)} (may be removed)")
    pending = sum(n for k, n in st.by_kek.items() if k != st.current)
    if pending:
        print(f"{pending} document(s) not under the current KEK: run `clearinghouse keys rotate`")
    return 1 if st.missing else 0


def cmd_generate(args: argparse.Namespace, settings: Settings, engine: Engine, audit_change: AuditChange) -> int:
    if settings.kek_files or settings.kek_keys:
        raise KeyConfigError("KEKs come from configuration (kek_files/kek_keys): add the new one there")
    kid = generate_key(keys_dir(settings), make_current=not args.not_current)
    audit_change(settings, engine, f"key-encryption key {kid} generated{'' if args.not_current else ' (current)'}")
    print(f"generated KEK {kid} in {keys_dir(settings)}{'' if args.not_current else ' and made it current'}")
    if not args.not_current:
        print("new documents use it now (after a restart of running servers); run `clearinghouse keys rotate`")
    return 0


def cmd_rotate(args: argparse.Namespace, settings: Settings, engine: Engine, audit_change: AuditChange) -> int:
    ring = _ring(settings)
    report = rotate(db.session_factory(engine), ring)
    audit_change(
        settings,
        engine,
        f"data keys re-wrapped under KEK {report.current}: {report.rewrapped} re-wrapped, "
        f"{len(report.failed)} could not be unwrapped",
    )
    print(f"re-wrapped {report.rewrapped} data key(s) under KEK {report.current}")
    print(f"documents under the current KEK: {report.under_current}; plaintext documents: {report.plaintext}")
    for uid, reason in report.failed[:20]:
        print(f"  NOT re-wrapped {uid}: {reason}")
    if report.failed:
        print(f"{len(report.failed)} data key(s) could not be unwrapped: configure their KEK and run again")
        return 1
    return 0


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None], run: Run, audit_change: AuditChange) -> None:
    """Add the ``keys`` command group; ``run(handler, args)`` calls handler(args, settings, engine)."""
    keys = sub.add_parser("keys", help="encryption at rest: key-encryption keys and data-key rotation")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    st = ksub.add_parser("status", help="configured KEKs, and how many documents each one wraps")
    common(st)
    st.set_defaults(func=lambda a: run(cmd_status, a))
    gen = ksub.add_parser("generate", help="generate a new KEK in home/keys (embedded key directory only)")
    common(gen)
    gen.add_argument("--not-current", action="store_true", help="add the key without making it current")
    gen.set_defaults(func=lambda a: run(lambda *x: cmd_generate(*x, audit_change), a))
    rot = ksub.add_parser("rotate", help="re-wrap every data key under the current KEK (documents untouched)")
    common(rot)
    rot.set_defaults(func=lambda a: run(lambda *x: cmd_rotate(*x, audit_change), a))
