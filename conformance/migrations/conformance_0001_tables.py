"""conformance: sessions of participants under test and the transactions they sent

Revision ID: conformance_0001

Written by hand to match conformance/models.py; dialect-neutral (SQLite and PostgreSQL).
"""

import sqlalchemy as sa
from alembic import op

revision = "conformance_0001"
down_revision = None
branch_labels = ("conformance",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "conformance_session",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("participant", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("closed_at", TS, nullable=True),
        sa.Column("test_data", sa.Text, nullable=False),
    )
    op.create_index("ix_conformance_session_participant", "conformance_session", ["participant"])
    op.create_table(
        "conformance_transaction",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "session_id",
            sa.String(16),
            sa.ForeignKey("conformance_session.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("transaction", sa.String(16), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("facts", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_index("ix_conformance_transaction_session", "conformance_transaction", ["session_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_conformance_transaction_session", "conformance_transaction")
    op.drop_table("conformance_transaction")
    op.drop_index("ix_conformance_session_participant", "conformance_session")
    op.drop_table("conformance_session")
