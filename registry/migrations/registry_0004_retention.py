"""registry: when each SubmissionSet expires (retention purge, docs/retention.md)

Revision ID: registry_0004
Revises: registry_0003

SubmissionSets registered before this revision get the default retention of 30 days from their
registration (created_at): the retention setting did not exist when they were registered.
"""

from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision = "registry_0004"
down_revision = "registry_0003"
branch_labels = None
depends_on = None

UUID_LEN = 64
UNIQUE_ID_LEN = 128
PARTICIPANT_LEN = 128
DEFAULT_DAYS = 30


def upgrade() -> None:
    retention = op.create_table(
        "registry_retention",
        sa.Column("submission_set_uuid", sa.String(UUID_LEN), primary_key=True),
        sa.Column("submission_set_unique_id", sa.String(UNIQUE_ID_LEN), nullable=True),
        sa.Column("patient_id", sa.String(256), nullable=True),
        sa.Column("submitted_by", sa.String(PARTICIPANT_LEN), nullable=True),
        sa.Column("retention_days", sa.Integer, nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_registry_retention_expires_at", "registry_retention", ["expires_at"])
    objects = sa.table(
        "registry_objects",
        sa.column("entry_uuid", sa.String),
        sa.column("unique_id", sa.String),
        sa.column("patient_id", sa.String),
        sa.column("submitted_by", sa.String),
        sa.column("object_type", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(
            objects.c.entry_uuid,
            objects.c.unique_id,
            objects.c.patient_id,
            objects.c.submitted_by,
            objects.c.created_at,
        ).where(objects.c.object_type == "SubmissionSet")
    ).all()
    batch = []
    for entry_uuid, unique_id, patient_id, submitted_by, created_at in rows:
        batch.append(
            {
                "submission_set_uuid": entry_uuid,
                "submission_set_unique_id": unique_id,
                "patient_id": patient_id,
                "submitted_by": submitted_by,
                "retention_days": DEFAULT_DAYS,
                "registered_at": created_at,
                "expires_at": created_at + timedelta(days=DEFAULT_DAYS),
            }
        )
        if len(batch) >= 1000:
            op.bulk_insert(retention, batch)
            batch = []
    if batch:
        op.bulk_insert(retention, batch)


def downgrade() -> None:
    op.drop_index("ix_registry_retention_expires_at", table_name="registry_retention")
    op.drop_table("registry_retention")
