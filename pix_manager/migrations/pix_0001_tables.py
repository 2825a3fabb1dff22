"""pix_manager: domains, cross-referenced identifiers, accepted messages, subscriptions, outbox

Revision ID: pix_0001

Written by hand to match pix_manager/models.py; dialect-neutral (SQLite and PostgreSQL).
"""

import sqlalchemy as sa
from alembic import op

revision = "pix_0001"
down_revision = None
branch_labels = ("pix_manager",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pix_config_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "pix_domain",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("oid", sa.String(64), nullable=False, unique=True),
        sa.Column("namespace", sa.String(64), nullable=False, unique=True),
        sa.Column("source", sa.String(128), nullable=True),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "pix_patient",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("merged_into", sa.Integer, sa.ForeignKey("pix_patient.id"), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint("status IN ('active', 'merged')", name="ck_pix_patient_status"),
    )
    op.create_table(
        "pix_identifier",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("domain_id", sa.Integer, sa.ForeignKey("pix_domain.id"), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("patient_id", sa.Integer, sa.ForeignKey("pix_patient.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("replaced_by", sa.Integer, sa.ForeignKey("pix_identifier.id"), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("domain_id", "value", name="uq_pix_identifier_domain_value"),
        sa.CheckConstraint("status IN ('active', 'merged')", name="ck_pix_identifier_status"),
    )
    op.create_index("ix_pix_identifier_patient", "pix_identifier", ["patient_id"])
    op.create_table(
        "pix_message",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sender", sa.String(512), nullable=False),
        sa.Column("control_id", sa.String(256), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("transaction", sa.String(16), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.UniqueConstraint("sender", "control_id", name="uq_pix_message_sender_control"),
    )
    op.create_index("ix_pix_message_received_at", "pix_message", ["received_at"])
    op.create_table(
        "pix_subscription",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("url", sa.String(512), nullable=False),
        sa.Column("domains", sa.Text, nullable=False),
        sa.Column("ca_file", sa.String(1024), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "pix_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("destination", sa.String(128), nullable=False),
        sa.Column("transaction", sa.String(16), nullable=False),
        sa.Column("message", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="ck_pix_outbox_status"),
    )
    op.create_index("ix_pix_outbox_status_destination", "pix_outbox", ["status", "destination", "id"])
    op.bulk_insert(sa.table("pix_config_state", sa.column("id"), sa.column("version")), [{"id": 1, "version": 1}])


def downgrade() -> None:
    for table in ("pix_outbox", "pix_subscription", "pix_message", "pix_identifier", "pix_patient", "pix_domain"):
        op.drop_table(table)
    op.drop_table("pix_config_state")
