"""Load control for the registry: how many transactions run at once, and which failures mean
"busy" or "out of resources" (XDSRegistryBusy, XDSRegistryOutOfResources; ITI TF-3 4.2.4.1).

A source that gets one of these two errors can simply try again later; every other error means its
request is wrong, except XDSRegistryError for a database that accepts no writes at all (a
read-only database or standby): the registry cannot do its job, and waiting will not fix it. The
mapping is a pure function of the exception so it can be tested without producing a full disk or a
lock storm (tests/test_registry_load.py provokes them on a live server too).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from clearinghouse.errors import XdsError, XDSRegistryBusy, XDSRegistryError, XDSRegistryOutOfResources

# PostgreSQL SQLSTATEs (Appendix A of its manual) that a retry can cure.
_PG_BUSY = {
    "55P03": "a lock is held by another transaction (lock_not_available)",
    "40001": "a concurrent transaction conflicted (serialization_failure)",
    "40P01": "a deadlock with a concurrent transaction was broken (deadlock_detected)",
    "57014": "the statement ran out of time (query_canceled)",
    "53300": "the database has no free connection (too_many_connections)",
}
# Class 53, insufficient resources, apart from connections.
_PG_OUT_OF_RESOURCES = {
    "53000": "the database lacks resources (insufficient_resources)",
    "53100": "the database disk is full (disk_full)",
    "53200": "the database is out of memory (out_of_memory)",
    "53400": "a database configuration limit was exceeded (configuration_limit_exceeded)",
}
# The database refuses every write (read_only_sql_transaction): not a lack of resources.
_PG_REFUSES_WRITES = {"25006": "the registry database accepts no writes (it is read-only)"}
_SQLITE_READ_ONLY = ("attempt to write a readonly database",)
_SQLITE_BUSY = ("database is locked", "database table is locked", "database schema is locked")
_SQLITE_FULL = ("database or disk is full", "out of memory")
_OS_OUT_OF_RESOURCES = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE}


def _sqlstate(exc: DBAPIError) -> str:
    orig = exc.orig
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def resource_error(exc: BaseException) -> XdsError | None:
    """XDSRegistryBusy / XDSRegistryOutOfResources for an exception that means the registry is
    overloaded or exhausted, XDSRegistryError for a database that refuses writes; None for anything
    else (a bug or a bad request)."""
    if isinstance(exc, PoolTimeout):
        return XDSRegistryBusy("every database connection is in use; try again shortly")
    if isinstance(exc, MemoryError):
        return XDSRegistryOutOfResources("the registry is out of memory; try again later")
    if isinstance(exc, OSError) and exc.errno in _OS_OUT_OF_RESOURCES:
        return XDSRegistryOutOfResources(f"the registry is out of resources ({exc.strerror}); try again later")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        # The database went away under a pooled connection (restart, cut): the pool reconnects for the
        # next request (clearinghouse.db pings only idle connections), so this one may simply retry.
        return XDSRegistryBusy("the database connection was lost; try again shortly")
    if isinstance(exc, DBAPIError):
        state = _sqlstate(exc)
        if state in _PG_BUSY:
            return XDSRegistryBusy(f"{_PG_BUSY[state]}; try again shortly")
        if state in _PG_OUT_OF_RESOURCES:
            return XDSRegistryOutOfResources(f"{_PG_OUT_OF_RESOURCES[state]}; try again later")
        if state in _PG_REFUSES_WRITES:
            return XDSRegistryError(f"{_PG_REFUSES_WRITES[state]}; nothing was stored")
        text = str(exc.orig).lower()
        if any(marker in text for marker in _SQLITE_READ_ONLY):
            return XDSRegistryError("the registry database accepts no writes (it is read-only); nothing was stored")
        if any(marker in text for marker in _SQLITE_BUSY):
            return XDSRegistryBusy("the database is locked by another transaction; try again shortly")
        if any(marker in text for marker in _SQLITE_FULL):
            return XDSRegistryOutOfResources("the database disk is full; try again later")
    return None


class Admission:
    """At most ``limit`` registry transactions at once; one more waits up to ``wait_seconds`` for a
    slot and is then refused with XDSRegistryBusy, so a burst cannot exhaust the database pool."""

    def __init__(self, limit: int, wait_seconds: float) -> None:
        if limit < 1:
            raise ValueError("the registry needs at least one transaction slot")
        self._slots = threading.BoundedSemaphore(limit)
        self.limit = limit
        self.wait_seconds = wait_seconds

    @contextmanager
    def slot(self, transaction: str) -> Iterator[None]:
        """Hold a slot for the duration of ``transaction``; failures that mean overload or
        exhaustion leave as the matching XdsError."""
        if not self._slots.acquire(timeout=self.wait_seconds):
            raise XDSRegistryBusy(
                f"{transaction}: the registry is handling {self.limit} transactions; try again shortly"
            )
        try:
            yield
        except (SQLAlchemyError, MemoryError, OSError) as exc:
            mapped = resource_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        finally:
            self._slots.release()
