"""registry: patient identifiers fed by ITI-8, and their merges

Revision ID: registry_0002
Revises: registry_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "registry_0002"
down_revision = "registry_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_patient",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        # The CX form ID^^^&OID&ISO of the affinity-domain identifier; no demographics, by design.
        sa.Column("patient_id", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("merged_into", sa.String(256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('active', 'merged')", name="ck_registry_patient_status"),
    )
    op.create_index("ix_registry_patient_patient_id", "registry_patient", ["patient_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_registry_patient_patient_id", table_name="registry_patient")
    op.drop_table("registry_patient")
