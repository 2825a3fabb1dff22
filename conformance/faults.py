"""Fault injection for the reference simulators: each switch breaks one rule a conformance scenario
checks, so the suite can be shown to fail for the right reason."""

from __future__ import annotations

from enum import StrEnum


class Fault(StrEnum):
    WRONG_RSNA_ID = "wrong-rsna-id"  # hash the wrong date of birth
    MISSING_SLOT = "missing-slot"  # leave creationTime out of the first DocumentEntry
    BAD_HASH = "bad-hash"  # declare a hash that is not the document's SHA-1
    NO_AUDIT = "no-audit"  # send no audit message for the transaction
    WRONG_QUERY = "wrong-query"  # a PHR that finds documents with GetAll instead of FindDocuments


EDGE_FAULTS = (Fault.WRONG_RSNA_ID, Fault.MISSING_SLOT, Fault.BAD_HASH, Fault.NO_AUDIT)
PHR_FAULTS = (Fault.WRONG_RSNA_ID, Fault.WRONG_QUERY, Fault.NO_AUDIT)


def wrong_dob(dob: str) -> str:
    """A plausible but different date of birth (the day after), as a patient might mistype it."""
    import datetime as dt

    from clearinghouse.rsna_id import normalize_dob

    day = dt.datetime.strptime(normalize_dob(dob), "%Y%m%d").date() + dt.timedelta(days=1)
    return day.strftime("%Y%m%d")
