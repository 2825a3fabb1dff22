"""repository: stored documents

Revision ID: repository_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "repository_0001"
down_revision = None
branch_labels = ("repository",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "repository_document",
        sa.Column("unique_id", sa.String(128), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha1", sa.String(40), nullable=False),
        sa.Column("mime_type", sa.String(128), nullable=False),
        sa.Column("store_key", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_repository_document_created_at", "repository_document", ["created_at"])


def downgrade() -> None:
    op.drop_table("repository_document")
