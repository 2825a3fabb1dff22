"""ITI-62 Delete Document Set: look up the objects named and what links to them, check, remove."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from clearinghouse.errors import XdsError
from registry import metadata as md
from registry import remove_rules, store
from registry.models import RegistryObjectRow


def apply_removal(session: Session, ids: list[str], *, participant: str, now: datetime) -> None:
    """Remove the objects ``ids`` name, or raise XdsError with every reason not to (nothing changes)."""
    existing = store.lookup_objects(session, [i for i in ids if md.is_uuid_urn(i)])
    ends = {e for k in existing.values() for e in (k.source_uuid, k.target_uuid) if e}
    associations = store.associations_touching(session, set(existing) | ends)
    errors = remove_rules.check_removal(ids, existing, associations, participant)
    if errors:
        raise XdsError.many(errors)
    gone = set(ids)
    # A Folder that stays but loses a member has changed (ITI TF-3 4.2.3.4.4).
    folders = {
        k.source_uuid
        for k in existing.values()
        if k.association_type == md.HAS_MEMBER and k.source_uuid and k.source_uuid not in gone
    }
    store.remove_objects(session, gone)
    for folder_uuid in sorted(folders):
        folder = session.get(RegistryObjectRow, folder_uuid)
        if folder is not None and folder.object_type == "Folder":
            store.touch_folder(folder, now)
    session.flush()
