"""repository: the DICOM instances held, by Study / Series / SOP Instance UID (RAD-69)

Revision ID: repository_0002
Revises: repository_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "repository_0002"
down_revision = "repository_0001"
branch_labels = None
depends_on = None

UID_LEN = 64


def upgrade() -> None:
    op.create_table(
        "repository_dicom_instance",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "document_unique_id",
            sa.String(128),
            sa.ForeignKey("repository_document.unique_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("study_uid", sa.String(UID_LEN), nullable=False),
        sa.Column("series_uid", sa.String(UID_LEN), nullable=False),
        sa.Column("sop_instance_uid", sa.String(UID_LEN), nullable=False),
        sa.Column("sop_class_uid", sa.String(UID_LEN), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(UID_LEN), nullable=False),
    )
    op.create_index("ix_repository_dicom_instance_sop", "repository_dicom_instance", ["sop_instance_uid"])
    op.create_index("ix_repository_dicom_instance_document", "repository_dicom_instance", ["document_unique_id"])


def downgrade() -> None:
    op.drop_table("repository_dicom_instance")
