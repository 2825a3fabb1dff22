"""What a PHR asks the registry (ITI-18, ITI TF-2a 3.18.4.1) and whether it retrieves what it found.

Stored queries a PHR may use: the RSNA Image Share PHR finds a patient's documents by patient ID and
then retrieves them, so the queries that find by patient (FindDocuments, FindSubmissionSets) and the
ones that expand what those found (GetSubmissionSetAndContents, GetSubmissionSets, GetDocuments,
GetAssociations, GetDocumentsAndAssociations). GetAll is not: it returns every object of the patient
(folders, associations, deprecated entries) to a consumer that only needs the current documents, and
the queries about folders and related documents have nothing to find in Image Share submissions.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from conformance.findings import Finding, check

REF = "ITI TF-2a 3.18.4.1.2.3.7; RSNA Image Share PHR (docs/conformance.md)"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
ALLOWED = {
    "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d": "FindDocuments",
    "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9": "FindSubmissionSets",
    "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83": "GetSubmissionSetAndContents",
    "urn:uuid:51224314-5390-4169-9b91-b1980040715a": "GetSubmissionSets",
    "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4": "GetDocuments",
    "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155": "GetAssociations",
    "urn:uuid:bab9529a-4a10-40b3-a01f-f68a615d247a": "GetDocumentsAndAssociations",
}
KNOWN = {**ALLOWED, "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3": "GetAll"}
# The parameters that name the patient, per query that takes one.
PATIENT_PARAMS = ("$XDSDocumentEntryPatientId", "$XDSSubmissionSetPatientId", "$patientId")


def unquote(value: str) -> str:
    """A stored-query parameter value as ITI-18 encodes it: 'text' or ('a','b')."""
    v = value.strip()
    if v.startswith("(") and v.endswith(")"):
        v = v[1:-1].split(",")[0].strip()
    return v[1:-1].replace("''", "'") if len(v) >= 2 and v[0] == v[-1] == "'" else v


def queried_patient(facts: dict[str, Any]) -> str:
    params = facts.get("params", {})
    for name in PATIENT_PARAMS:
        if params.get(name):
            return unquote(params[name][0])
    return ""


def check_query(facts: dict[str, Any]) -> list[Finding]:
    qid = facts.get("query_id", "")
    out = [
        check(
            "ITI18-STORED-QUERY",
            qid in ALLOWED,
            expected=f"a stored query the profile allows a PHR ({', '.join(ALLOWED.values())})",
            actual=KNOWN.get(qid, qid or "(no query id)"),
            ref=REF,
        )
    ]
    if ALLOWED.get(qid) == "FindDocuments":
        statuses = [
            unquote(s) for v in facts.get("params", {}).get("$XDSDocumentEntryStatus", []) for s in v.split(",")
        ]
        out.append(
            check(
                "ITI18-FIND-APPROVED",
                APPROVED in statuses,
                expected=f"$XDSDocumentEntryStatus including {APPROVED} (the current documents)",
                actual=statuses or "(none)",
                ref="ITI TF-2a 3.18.4.1.2.3.7.1",
            )
        )
    return out


def check_patient(facts: dict[str, Any], expected: Collection[str]) -> Finding | None:
    pid = queried_patient(facts)
    if not pid:
        return None
    return check(
        "RSNA-ID",
        pid in expected,
        expected=f"the ITI-18 patient ID to be the test patient's RSNA-ID ({' or '.join(sorted(expected))})",
        actual=pid,
        ref="RSNA Image Share RSNA-ID (docs/rsna-id.md); ITI TF-2a 3.18.4.1.2.3.7",
    )
