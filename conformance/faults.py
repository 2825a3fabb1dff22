"""Fault injection for the reference simulators: each switch breaks one rule a conformance scenario
checks, so the suite can be shown to fail for the right reason."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any, BinaryIO


class Fault(StrEnum):
    WRONG_RSNA_ID = "wrong-rsna-id"  # hash the wrong date of birth
    MISSING_SLOT = "missing-slot"  # leave creationTime out of the first DocumentEntry
    BAD_HASH = "bad-hash"  # declare a hash that is not the document's SHA-1
    NO_AUDIT = "no-audit"  # send no audit message for the transaction
    WRONG_QUERY = "wrong-query"  # a PHR that finds documents with GetAll instead of FindDocuments
    BAD_FEED = "bad-feed"  # an ITI-8 feed without its message structure (MSH-9 ADT^A04, not ADT^A04^ADT_A01)
    BAD_MTOM = "bad-mtom"  # an MTOM package without the start-info parameter
    PARTIAL_RETRIEVE = "partial-retrieve"  # a PHR that leaves the last document it found unretrieved


EDGE_FAULTS = (Fault.WRONG_RSNA_ID, Fault.MISSING_SLOT, Fault.BAD_HASH, Fault.NO_AUDIT, Fault.BAD_FEED, Fault.BAD_MTOM)
PHR_FAULTS = (Fault.WRONG_RSNA_ID, Fault.WRONG_QUERY, Fault.NO_AUDIT, Fault.PARTIAL_RETRIEVE)


def wrong_dob(dob: str) -> str:
    """A plausible but different date of birth (the day after), as a patient might mistype it."""
    import datetime as dt

    from clearinghouse.rsna_id import normalize_dob

    day = dt.datetime.strptime(normalize_dob(dob), "%Y%m%d").date() + dt.timedelta(days=1)
    return day.strftime("%Y%m%d")


class WithoutStartInfo:
    """A SOAP client transport that sends MTOM packages without the ``start-info`` parameter of their
    Content-Type (the BAD_MTOM fault); everything else passes through unchanged."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def post(self, headers: dict[str, str], body: Iterable[bytes], length: int | None) -> tuple[int, str, BinaryIO]:
        ctype = headers.get("Content-Type", "")
        kept = [p for p in ctype.split(";") if not p.strip().lower().startswith("start-info=")]
        return self.inner.post({**headers, "Content-Type": ";".join(kept)}, body, length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
