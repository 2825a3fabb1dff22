"""atna: audit records, their search index, the hash chain head and spool checkpoints

Revision ID: atna_0001

Written by hand to match atna/models.py; dialect-neutral (SQLite and PostgreSQL).
"""

import sqlalchemy as sa
from alembic import op

revision = "atna_0001"
down_revision = None
branch_labels = ("atna",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_record",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("received_at", sa.String(32), nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("peer_address", sa.String(128), nullable=False),
        sa.Column("peer_subject", sa.String(1024), nullable=False),
        sa.Column("declared_length", sa.BigInteger, nullable=False),
        sa.Column("syslog_pri", sa.Integer, nullable=True),
        sa.Column("syslog_timestamp", sa.String(64), nullable=False),
        sa.Column("syslog_hostname", sa.String(255), nullable=False),
        sa.Column("syslog_app_name", sa.String(48), nullable=False),
        sa.Column("syslog_procid", sa.String(128), nullable=False),
        sa.Column("syslog_msgid", sa.String(32), nullable=False),
        sa.Column("msg_offset", sa.Integer, nullable=False),
        sa.Column("form", sa.String(8), nullable=False),
        sa.Column("valid", sa.Boolean, nullable=False),
        sa.Column("findings", sa.Text, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_id_system", sa.String(128), nullable=False),
        sa.Column("event_action", sa.String(1), nullable=False),
        sa.Column("event_outcome", sa.Integer, nullable=True),
        sa.Column("event_time", sa.String(32), nullable=False),
        sa.Column("audit_source_id", sa.String(256), nullable=False),
        sa.Column("audit_site_id", sa.String(256), nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("raw_sha256", sa.String(64), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_record_event_time", "audit_record", ["event_time"])
    op.create_index("ix_audit_record_event_id", "audit_record", ["event_id"])
    op.create_index("ix_audit_record_source", "audit_record", ["audit_source_id"])
    # The key is the search lookup itself (kind, value, then the record); SQLite keeps it as the table's
    # only b-tree (WITHOUT ROWID), which halves the writes per entry at audit rates.
    op.create_table(
        "audit_index",
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("value", sa.String(512), nullable=False),
        sa.Column("record_id", sa.BigInteger, nullable=False),
        sa.Column("system", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("kind", "value", "record_id", "system", name="pk_audit_index"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_id", sa.BigInteger, nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
    )
    op.execute("INSERT INTO audit_chain (id, last_id, last_hash) VALUES (1, 0, '" + "0" * 64 + "')")
    op.create_table(
        "audit_spool_checkpoint",
        sa.Column("spool_id", sa.String(64), primary_key=True),
        sa.Column("segment", sa.BigInteger, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_spool_checkpoint")
    op.drop_table("audit_chain")
    op.drop_table("audit_index")
    op.drop_table("audit_record")
