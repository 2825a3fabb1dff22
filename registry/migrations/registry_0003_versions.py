"""registry: logical ids and versions (ITI-57 Metadata Update), the submitting participant, and
the index that finds the identifiers merged into a patient

Revision ID: registry_0003
Revises: registry_0002

Plain ADD COLUMN on both databases: SQLite's batch mode would copy and drop registry_objects, and
dropping it would cascade into registry_values and registry_associations.
"""

import sqlalchemy as sa
from alembic import op

revision = "registry_0003"
down_revision = "registry_0002"
branch_labels = None
depends_on = None

UUID_LEN = 64
PARTICIPANT_LEN = 128


def upgrade() -> None:
    op.add_column("registry_objects", sa.Column("lid", sa.String(UUID_LEN), nullable=True))
    op.add_column("registry_objects", sa.Column("version", sa.Integer, nullable=False, server_default="1"))
    op.add_column("registry_objects", sa.Column("submitted_by", sa.String(PARTICIPANT_LEN), nullable=True))
    # Every object registered so far is the first and only version of itself.
    op.execute("UPDATE registry_objects SET lid = entry_uuid WHERE object_type <> 'Classification'")
    op.create_index("uq_registry_objects_lid_version", "registry_objects", ["lid", "version"], unique=True)
    op.create_index("ix_registry_patient_merged_into", "registry_patient", ["merged_into"])


def downgrade() -> None:
    op.drop_index("ix_registry_patient_merged_into", table_name="registry_patient")
    op.drop_index("uq_registry_objects_lid_version", table_name="registry_objects")
    op.drop_column("registry_objects", "submitted_by")
    op.drop_column("registry_objects", "version")
    op.drop_column("registry_objects", "lid")
