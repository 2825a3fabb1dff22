"""repository: how each document is stored at rest (encryption scheme, KEK id, wrapped data key)

Documents stored before this revision are plaintext: they get encryption 'none' and stay readable.

Revision ID: repository_0003
Revises: repository_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "repository_0003"
down_revision = "repository_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("repository_document") as batch:
        batch.add_column(sa.Column("encryption", sa.String(32), nullable=False, server_default="none"))
        batch.add_column(sa.Column("kek_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("wrapped_dek", sa.LargeBinary(), nullable=True))
        batch.create_index("ix_repository_document_kek_id", ["kek_id"])


def downgrade() -> None:
    with op.batch_alter_table("repository_document") as batch:
        batch.drop_index("ix_repository_document_kek_id")
        batch.drop_column("wrapped_dek")
        batch.drop_column("kek_id")
        batch.drop_column("encryption")
