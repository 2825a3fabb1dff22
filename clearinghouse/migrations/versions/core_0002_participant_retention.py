"""core: how long each participant's submissions are kept (retention purge, issue 5)

Revision ID: core_0002
Revises: core_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "core_0002"
down_revision = "core_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: the configured default (CLEARINGHOUSE_RETENTION_DAYS).
    op.add_column("participant", sa.Column("retention_days", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("participant") as batch:
        batch.drop_column("retention_days")
