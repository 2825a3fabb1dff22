"""Local console accounts: roles, Argon2id password hashes, sign-in with lock-out.

The rules (what a failed sign-in does to the lock-out state, which roles exist, what a name may be)
are pure functions; the rest reads and writes ``console_user`` inside the caller's session.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from console.models import ConsoleSession, ConsoleUser

ROLES = ("admin", "auditor", "integrator")
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

# argon2-cffi's defaults are RFC 9106's second recommended option (Argon2id, t=3, 64 MiB, p=4).
_HASHER = PasswordHasher()
# Verified against when the account does not exist, so that an unknown name costs as much as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class AccountError(ValueError):
    """An account operation that cannot be done; the message says why."""


class SignInRefused(Exception):
    """A refused sign-in. ``reason`` is for the audit trail and the log, never shown to the browser
    (which learns only that the sign-in failed, so names cannot be probed)."""

    def __init__(self, reason: str, user: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.user = user


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    roles: frozenset[str]
    disabled: bool
    locked_until: dt.datetime | None
    failed_count: int
    last_login_at: dt.datetime | None
    created_at: dt.datetime

    def has_any(self, roles: frozenset[str] | set[str] | tuple[str, ...]) -> bool:
        return bool(self.roles & set(roles))


def as_utc(when: dt.datetime | None) -> dt.datetime | None:
    # SQLite returns naive datetimes for timezone-aware columns; every stored time is UTC.
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=dt.UTC)


def _account(u: ConsoleUser) -> Account:
    return Account(
        u.id,
        u.name,
        frozenset(r for r in u.roles.split(",") if r),
        u.disabled_at is not None,
        as_utc(u.locked_until),
        u.failed_count,
        as_utc(u.last_login_at),
        as_utc(u.created_at),  # type: ignore[arg-type]
    )


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise AccountError(f"invalid user name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-'")
    return name


def check_roles(roles: list[str]) -> list[str]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise AccountError(f"unknown or missing role(s) {unknown}; console roles are {list(ROLES)}")
    return sorted(set(roles))


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    return password


def hash_password(password: str) -> str:
    return _HASHER.hash(check_password(password))


def after_failure(
    failed_count: int, *, attempts: int, lock_minutes: int, now: dt.datetime
) -> tuple[int, dt.datetime | None]:
    """The lock-out state after one more failed sign-in: (failures in a row, locked until). The
    ``attempts``-th failure in a row locks the account and starts the count again."""
    failed = failed_count + 1
    if failed >= attempts:
        return 0, now + dt.timedelta(minutes=lock_minutes)
    return failed, None


def add(session: Session, name: str, roles: list[str], password: str, *, now: dt.datetime | None = None) -> Account:
    check_name(name)
    roles = check_roles(roles)
    if session.scalar(select(ConsoleUser).where(ConsoleUser.name == name)) is not None:
        raise AccountError(f"user {name!r} already exists")
    now = now or dt.datetime.now(dt.UTC)
    user = ConsoleUser(
        name=name,
        roles=",".join(roles),
        password_hash=hash_password(password),
        failed_count=0,
        password_changed_at=now,
        created_at=now,
    )
    session.add(user)
    session.flush()
    return _account(user)


def _get(session: Session, name: str) -> ConsoleUser:
    user = session.scalar(select(ConsoleUser).where(ConsoleUser.name == name))
    if user is None:
        raise AccountError(f"no user named {name!r}")
    return user


def list_all(session: Session) -> list[Account]:
    return [_account(u) for u in session.scalars(select(ConsoleUser).order_by(ConsoleUser.name))]


def get(session: Session, user_id: int) -> Account | None:
    user = session.get(ConsoleUser, user_id)
    return _account(user) if user else None


def disable(session: Session, name: str, *, now: dt.datetime | None = None) -> Account:
    """Refuse the account's sign-ins from now on and end its sessions."""
    user = _get(session, name)
    if user.disabled_at is None:
        user.disabled_at = now or dt.datetime.now(dt.UTC)
    session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
    return _account(user)


def set_password(session: Session, name: str, password: str, *, now: dt.datetime | None = None) -> Account:
    """A new password; also clears a lock-out and re-enables a disabled account."""
    user = _get(session, name)
    user.password_hash = hash_password(password)
    user.password_changed_at = now or dt.datetime.now(dt.UTC)
    user.failed_count = 0
    user.locked_until = None
    user.disabled_at = None
    return _account(user)


def authenticate(
    session: Session, name: str, password: str, *, attempts: int, lock_minutes: int, now: dt.datetime | None = None
) -> Account:
    """The account if ``password`` is right and the account may sign in; else SignInRefused (the
    failure counted towards the lock-out). A locked account is refused without checking the password,
    and the failure does not extend the lock."""
    now = now or dt.datetime.now(dt.UTC)
    # FOR UPDATE (PostgreSQL): concurrent attempts on one account are counted one after the other.
    query = select(ConsoleUser).where(ConsoleUser.name == name).with_for_update()
    user = session.scalar(query) if _NAME.fullmatch(name) else None
    if user is None:
        _verify(_DUMMY_HASH, password)
        raise SignInRefused("unknown user", name)
    locked_until = as_utc(user.locked_until)
    if locked_until is not None and locked_until > now:
        raise SignInRefused(f"account locked until {locked_until:%Y-%m-%d %H:%M:%S}Z", name)
    if not _verify(user.password_hash, password):
        user.failed_count, user.locked_until = after_failure(
            user.failed_count, attempts=attempts, lock_minutes=lock_minutes, now=now
        )
        if user.locked_until is not None:
            raise SignInRefused(f"wrong password; account locked for {lock_minutes} minute(s)", name)
        raise SignInRefused(f"wrong password ({user.failed_count} failure(s) in a row)", name)
    if user.disabled_at is not None:
        raise SignInRefused("account disabled", name)
    user.failed_count = 0
    user.locked_until = None
    user.last_login_at = now
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(password)
    return _account(user)


def _verify(stored: str, password: str) -> bool:
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
