"""``clearinghouse users add|list|disable|passwd``: the web console's local accounts.

Passwords come from a prompt (asked twice), from standard input when it is not a terminal (first
line), or from ``--password-file``; never from the command line, where other users could see them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from clearinghouse.db import transaction
from console import accounts

SessionsFor = Callable[[argparse.Namespace], sessionmaker[Session]]


def read_password(args: argparse.Namespace) -> str:
    if args.password_file:
        text = Path(args.password_file).read_text(encoding="utf-8")
        return text.splitlines()[0] if text else ""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("password again: "):
        raise accounts.AccountError("the two passwords differ")
    return first


def _add(sessions: sessionmaker[Session], args: argparse.Namespace) -> int:
    password = read_password(args)
    with transaction(sessions) as session:
        account = accounts.add(session, args.name, args.role, password)
    print(f"console user {account.name} ({', '.join(sorted(account.roles))}) added")
    return 0


def _list(sessions: sessionmaker[Session], args: argparse.Namespace) -> int:
    with sessions() as session:
        rows = accounts.list_all(session)
    print(f"{'NAME':24} {'ROLES':28} {'STATUS':22} LAST SIGN-IN")
    for a in rows:
        if a.disabled:
            status = "disabled"
        elif a.locked_until is not None and a.locked_until > dt.datetime.now(dt.UTC):
            status = f"locked to {a.locked_until:%H:%M}Z"
        else:
            status = "active"
        last = f"{a.last_login_at:%Y-%m-%d %H:%M}Z" if a.last_login_at else "never"
        print(f"{a.name:24} {','.join(sorted(a.roles)):28} {status:22} {last}")
    return 0


def _disable(sessions: sessionmaker[Session], args: argparse.Namespace) -> int:
    with transaction(sessions) as session:
        account = accounts.disable(session, args.name)
    print(f"console user {account.name} disabled; its sessions have ended")
    return 0


def _passwd(sessions: sessionmaker[Session], args: argparse.Namespace) -> int:
    password = read_password(args)
    with transaction(sessions) as session:
        account = accounts.set_password(session, args.name, password)
    print(f"console user {account.name}: password set (lock-out cleared, account enabled)")
    return 0


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None], sessions_for: SessionsFor) -> None:
    """Add the ``users`` command group to the ``clearinghouse`` parser."""
    users = sub.add_parser("users", help="web console accounts: add, list, disable, set a password")
    usub = users.add_subparsers(dest="users_command", required=True)

    def command(name: str, help_text: str, action: Callable[[sessionmaker[Session], argparse.Namespace], int]):  # noqa: ANN202
        p = usub.add_parser(name, help=help_text)
        common(p)
        p.set_defaults(func=lambda a: _run(sessions_for, a, action))
        return p

    a = command("add", "add an account (password from the prompt, standard input or --password-file)", _add)
    a.add_argument("name")
    a.add_argument(
        "--role", action="append", required=True, choices=accounts.ROLES, help="admin, auditor, integrator (repeatable)"
    )
    a.add_argument("--password-file", help="read the password from the first line of this file")
    command("list", "list the accounts", _list)
    d = command("disable", "refuse an account's sign-ins from now on and end its sessions", _disable)
    d.add_argument("name")
    p = command("passwd", "set an account's password (also clears a lock-out and re-enables it)", _passwd)
    p.add_argument("name")
    p.add_argument("--password-file", help="read the password from the first line of this file")


def _run(sessions_for: SessionsFor, args: argparse.Namespace, action: Callable[..., int]) -> int:
    try:
        return action(sessions_for(args), args)
    except accounts.AccountError as exc:
        print(f"clearinghouse: error: {exc}", file=sys.stderr)
        return 2
