"""Rules across the transactions of one session: what a participant did as a whole (each export
audited, every document found retrieved, each import audited). Pure functions of the recorded list."""

from __future__ import annotations

from collections.abc import Iterable

from conformance.findings import Finding, check
from conformance.sessions import Recorded, TestData
from conformance.validators import audit, submission

SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"


def of(recorded: Iterable[Recorded], transaction: str) -> list[Recorded]:
    return [r for r in recorded if r.transaction == transaction]


def edge_audits(recorded: list[Recorded]) -> list[Finding]:
    """Each ITI-41 the edge sent has its Export audit message (ITI TF-2b 3.41.5.1)."""
    audits = [audit.read_audit(r.payload) for r in of(recorded, "ITI-20")]
    exports = [a for a in audits if audit.is_event(a, audit.EXPORT, "ITI-41")]
    out: list[Finding] = []
    for sub in of(recorded, "ITI-41"):
        uid = submission.submission_set_unique_id(sub.payload)
        patients = {pid for _, pid in submission.patient_ids(sub.payload)}
        mine = [a for a in exports if uid in [o.object_id for o in a.objects_of("2", "20")]]
        if not mine:
            out.append(
                check(
                    "AUDIT-ITI41",
                    False,
                    expected=f"an ITI-41 Export audit message (EventID 110106) for submission set {uid}",
                    actual=f"none among {len(audits)} audit message(s) received",
                    ref=audit.ITI41_REF,
                )
            )
            continue
        out += audit.check_export(
            mine[0],
            patient_id=next(iter(patients)) if len(patients) == 1 else "",
            submission_set_uid=uid,
            succeeded=sub.facts.get("status") == SUCCESS,
        )
    return out


def found_documents(recorded: list[Recorded], data: TestData) -> set[str]:
    """uniqueIds of the preloaded study that the registry returned to the PHR's queries."""
    study = set(data.study)
    return {d["unique_id"] for r in of(recorded, "ITI-18") for d in r.facts.get("returned", [])} & study


def retrieved_documents(recorded: list[Recorded]) -> set[str]:
    return {uid for r in of(recorded, "ITI-43") for uid in r.facts.get("returned", [])}


def phr_retrievals(recorded: list[Recorded], data: TestData) -> list[Finding]:
    """Every document of the study the PHR found, it retrieved (ITI-43 covering every uniqueId)."""
    found, got = found_documents(recorded, data), retrieved_documents(recorded)
    missing = sorted(found - got)
    return [
        check(
            "ITI43-EVERY-DOCUMENT",
            not missing,
            expected=f"ITI-43 retrieving every document the PHR found ({len(found)})",
            actual=f"not retrieved: {missing}" if missing else f"all {len(found)} retrieved",
            ref="ITI TF-2b 3.43.4.1; RSNA Image Share PHR",
        )
    ]


def phr_imports(recorded: list[Recorded]) -> list[Finding]:
    """Each ITI-43 that returned documents has its Import audit message listing them (ITI TF-2b 3.43.5.1)."""
    imports = [
        a
        for a in (audit.read_audit(r.payload) for r in of(recorded, "ITI-20"))
        if audit.is_event(a, audit.IMPORT, "ITI-43")
    ]
    out: list[Finding] = []
    for r in of(recorded, "ITI-43"):
        docs = r.facts.get("returned", [])
        if not docs:
            continue
        mine = [a for a in imports if set(docs) <= {o.object_id for o in a.objects_of("2", "3")}]
        if not mine:
            out.append(
                check(
                    "AUDIT-ITI43",
                    False,
                    expected=f"an ITI-43 Import audit message (EventID 110107) listing documents {sorted(docs)}",
                    actual=f"none among {len(imports)} import audit message(s) received",
                    ref=audit.ITI43_REF,
                )
            )
            continue
        out += audit.check_import(mine[0], documents=docs, patient_id="")
    return out
