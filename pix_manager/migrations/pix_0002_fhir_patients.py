"""pix_manager: Patient resources fed by ITI-104 (PIXm Patient Identity Feed FHIR)

Revision ID: pix_0002
Revises: pix_0001

Written by hand to match pix_manager/models.py (PixFhirPatient); dialect-neutral. The key identifier is
unique among live resources only (a partial index, which SQLite and PostgreSQL both have), so that a
removed patient's identifier can be fed again as a new resource.
"""

import sqlalchemy as sa
from alembic import op

revision = "pix_0002"
down_revision = "pix_0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pix_fhir_patient",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("logical_id", sa.String(64), nullable=False, unique=True),
        sa.Column("domain_id", sa.Integer, sa.ForeignKey("pix_domain.id"), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("identifiers", sa.Text, nullable=False),
        sa.Column("replaced_by_domain_id", sa.Integer, sa.ForeignKey("pix_domain.id"), nullable=True),
        sa.Column("replaced_by_value", sa.String(256), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
    )
    op.create_index(
        "uq_pix_fhir_patient_live_key",
        "pix_fhir_patient",
        ["domain_id", "value"],
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_pix_fhir_patient_live_key", table_name="pix_fhir_patient")
    op.drop_table("pix_fhir_patient")
