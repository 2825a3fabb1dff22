"""registry_0004: SubmissionSets registered before the retention table existed are given the default
30 days from their registration, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conftest import _engine_for
from sqlalchemy import text

from clearinghouse import db


def test_existing_submission_sets_get_thirty_days(backend, tmp_path):
    engine, cleanup = _engine_for(backend)
    engine = engine or db.make_engine(f"sqlite:///{tmp_path / 'migrate.db'}")
    try:
        db.upgrade(engine, "registry_0003")
        registered = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
        with engine.begin() as conn:
            for uuid, kind in (("urn:uuid:ss-1", "SubmissionSet"), ("urn:uuid:de-1", "DocumentEntry")):
                conn.execute(
                    text(
                        "INSERT INTO registry_objects (entry_uuid, object_type, unique_id, patient_id, status,"
                        " submission_set_uuid, submitted_by, created_at, xml, version)"
                        " VALUES (:u, :k, :uid, 'pid^^^&1.2&ISO', 'Approved', 'urn:uuid:ss-1', 'site-a', :t, '<x/>', 1)"
                    ),
                    {"u": uuid, "k": kind, "uid": f"1.2.3.{kind}", "t": registered},
                )
        db.upgrade(engine)
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT submission_set_uuid, submission_set_unique_id, patient_id, submitted_by, retention_days,"
                    " expires_at FROM registry_retention"
                )
            ).all()
        assert len(rows) == 1
        uuid, uid, patient, by, days, expires = rows[0]
        assert (uuid, uid, patient, by, days) == (
            "urn:uuid:ss-1",
            "1.2.3.SubmissionSet",
            "pid^^^&1.2&ISO",
            "site-a",
            30,
        )
        expires = expires if isinstance(expires, datetime) else datetime.fromisoformat(expires)
        assert expires.replace(tzinfo=UTC) == registered + timedelta(days=30)
    finally:
        engine.dispose()
        if cleanup:
            admin, schema = cleanup
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
