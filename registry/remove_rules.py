"""ITI-62 Delete Document Set (Remove Metadata, ITI TF-2b 3.62.4.1.3), as pure functions.

The objects named are removed together or not at all, and the registry stays a consistent graph:
every object named exists (UnresolvedReferenceException); no Association that stays may point at
an object that goes (ReferencesExistException); and no object that stays may lose the last
Association that links it into the graph (XDSUnreferencedObjectException), which would leave, say,
a DocumentEntry in no SubmissionSet.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from clearinghouse.errors import (
    ReferencesExistException,
    RegistryErrorItem,
    UnresolvedReferenceException,
    XDSRegistryError,
    XDSUnreferencedObjectException,
)
from registry import metadata as md
from registry.rules import KnownObject


def _label(obj: KnownObject) -> str:
    return f"{obj.object_type} {obj.entry_uuid}" + (f" (uniqueId {obj.unique_id})" if obj.unique_id else "")


def check_exist(ids: Collection[str], existing: Mapping[str, KnownObject]) -> list[RegistryErrorItem]:
    return [
        RegistryErrorItem(UnresolvedReferenceException.code, f"ObjectRef {i!r} is not a registered object", i)
        for i in ids
        if not md.is_uuid_urn(i) or i not in existing
    ]


def check_owner(ids: Collection[str], existing: Mapping[str, KnownObject], participant: str) -> list[RegistryErrorItem]:
    """A source removes only what it submitted."""
    return [
        RegistryErrorItem(
            XDSRegistryError.code,
            f"{_label(obj)} was not submitted by {participant}; only the participant that submitted an "
            "object may remove it",
            obj.entry_uuid,
        )
        for i in ids
        if (obj := existing.get(i)) is not None and (obj.submitted_by is None or obj.submitted_by != participant)
    ]


def _references(target: str, associations: Mapping[str, KnownObject]) -> list[KnownObject]:
    return [a for a in associations.values() if target in (a.source_uuid, a.target_uuid)]


def check_references_removed(
    ids: Collection[str], existing: Mapping[str, KnownObject], associations: Mapping[str, KnownObject]
) -> list[RegistryErrorItem]:
    """Every Association pointing at a removed object is removed too."""
    gone = set(ids)
    errors = []
    for i in ids:
        obj = existing.get(i)
        if obj is None:
            continue
        left = sorted(a.entry_uuid for a in _references(i, associations) if a.entry_uuid not in gone)
        if left:
            errors.append(
                RegistryErrorItem(
                    ReferencesExistException.code,
                    f"{_label(obj)} cannot be removed: Association(s) {', '.join(left)} still reference it; "
                    "remove them in the same request",
                    i,
                )
            )
    return errors


def check_nothing_unreferenced(
    ids: Collection[str], existing: Mapping[str, KnownObject], associations: Mapping[str, KnownObject]
) -> list[RegistryErrorItem]:
    """An object that stays keeps at least one Association linking it."""
    gone = set(ids)
    reported: set[str] = set()
    errors = []
    for i in ids:
        assoc = existing.get(i)
        if assoc is None or assoc.object_type != "Association":
            continue
        for end in (assoc.source_uuid, assoc.target_uuid):
            if not end or end in gone or end in reported:
                continue
            if not any(a.entry_uuid not in gone for a in _references(end, associations)):
                reported.add(end)
                errors.append(
                    RegistryErrorItem(
                        XDSUnreferencedObjectException.code,
                        f"removing Association {i} would leave {end} without any Association referencing it; "
                        "remove that object too, or keep the association",
                        end,
                    )
                )
    return errors


def check_removal(
    ids: Collection[str],
    existing: Mapping[str, KnownObject],
    associations: Mapping[str, KnownObject],
    participant: str,
) -> list[RegistryErrorItem]:
    """All ITI-62 rules; ``associations`` holds every registered Association touching a named
    object or an end of a named Association."""
    missing = check_exist(ids, existing)
    if missing:
        return missing
    return (
        check_owner(ids, existing, participant)
        + check_references_removed(ids, existing, associations)
        + check_nothing_unreferenced(ids, existing, associations)
    )
