"""Signed-in browsers: server-side sessions behind an opaque cookie token.

The cookie carries 256 random bits; the table keeps only their SHA-256, the user, a per-session CSRF
token and the two expiries (idle and absolute). Every request that presents the cookie looks the
session up, refuses it when expired or when its account was disabled, and slides the idle expiry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.orm import Session

from console.accounts import Account, as_utc, get
from console.models import ConsoleSession

COOKIE = "__Host-console-session"
TOUCH_INTERVAL = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class SignedIn:
    token_sha256: str
    account: Account
    csrf_token: str
    expires_at: dt.datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start(
    session: Session, account: Account, remote_addr: str, *, idle_minutes: int, max_hours: int, now: dt.datetime
) -> tuple[str, SignedIn]:
    """A new session for ``account``: (the cookie token, the session)."""
    token = secrets.token_urlsafe(32)
    row = ConsoleSession(
        token_sha256=_digest(token),
        user_id=account.id,
        csrf_token=secrets.token_urlsafe(32),
        remote_addr=remote_addr[:128],
        created_at=now,
        last_seen_at=now,
        expires_at=min(now + dt.timedelta(minutes=idle_minutes), now + dt.timedelta(hours=max_hours)),
    )
    session.add(row)
    # Sessions that ended long ago are removed as new ones start: no background job needed.
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at < now - dt.timedelta(days=1)))
    session.flush()
    return token, SignedIn(row.token_sha256, account, row.csrf_token, row.expires_at)


def lookup(session: Session, token: str, *, idle_minutes: int, max_hours: int, now: dt.datetime) -> SignedIn | None:
    """The live session of this cookie token (its idle expiry moved on), or None."""
    if not token or len(token) > 128:
        return None
    row = session.get(ConsoleSession, _digest(token))
    if row is None:
        return None
    expires = as_utc(row.expires_at)
    account = get(session, row.user_id)
    if expires is None or expires <= now or account is None or account.disabled:
        session.delete(row)
        return None
    hard_limit = as_utc(row.created_at) + dt.timedelta(hours=max_hours)  # type: ignore[operator]
    # Slid at most once a minute: a page that polls must not write the database every time.
    if now - as_utc(row.last_seen_at) >= TOUCH_INTERVAL:  # type: ignore[operator]
        row.last_seen_at = now
        row.expires_at = min(now + dt.timedelta(minutes=idle_minutes), hard_limit)
    return SignedIn(row.token_sha256, account, row.csrf_token, as_utc(row.expires_at))  # type: ignore[arg-type]


def end(session: Session, token_sha256: str) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.token_sha256 == token_sha256))
