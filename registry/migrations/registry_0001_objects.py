"""registry: objects, multi-valued query attributes, associations

Revision ID: registry_0001

Written by hand to match registry/models.py; dialect-neutral (SQLite and PostgreSQL).
"""

import sqlalchemy as sa
from alembic import op

revision = "registry_0001"
down_revision = None
branch_labels = ("registry",)
depends_on = None

UUID_LEN = 64
UNIQUE_ID_LEN = 128
CODE_LEN = 512
VALUE_LEN = 1024


def upgrade() -> None:
    op.create_table(
        "registry_objects",
        sa.Column("entry_uuid", sa.String(UUID_LEN), primary_key=True),
        sa.Column("object_type", sa.String(16), nullable=False),
        sa.Column("entry_type", sa.String(UUID_LEN), nullable=True),
        sa.Column("unique_id", sa.String(UNIQUE_ID_LEN), nullable=True),
        sa.Column("unique_id_claim", sa.String(UNIQUE_ID_LEN), nullable=True),
        sa.Column("patient_id", sa.String(256), nullable=True),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("submission_set_uuid", sa.String(UUID_LEN), nullable=True),
        sa.Column("owner_uuid", sa.String(UUID_LEN), nullable=True),
        sa.Column("mime_type", sa.String(128), nullable=True),
        sa.Column("creation_time", sa.String(14), nullable=True),
        sa.Column("service_start_time", sa.String(14), nullable=True),
        sa.Column("service_stop_time", sa.String(14), nullable=True),
        sa.Column("class_code", sa.String(CODE_LEN), nullable=True),
        sa.Column("type_code", sa.String(CODE_LEN), nullable=True),
        sa.Column("format_code", sa.String(CODE_LEN), nullable=True),
        sa.Column("practice_setting_code", sa.String(CODE_LEN), nullable=True),
        sa.Column("healthcare_facility_type_code", sa.String(CODE_LEN), nullable=True),
        sa.Column("repository_unique_id", sa.String(UNIQUE_ID_LEN), nullable=True),
        sa.Column("hash", sa.String(40), nullable=True),
        sa.Column("size", sa.BigInteger, nullable=True),
        sa.Column("submission_time", sa.String(14), nullable=True),
        sa.Column("source_id", sa.String(UNIQUE_ID_LEN), nullable=True),
        sa.Column("content_type_code", sa.String(CODE_LEN), nullable=True),
        sa.Column("last_update_time", sa.String(14), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("xml", sa.Text, nullable=False),
    )
    op.create_index("ix_registry_objects_patient", "registry_objects", ["patient_id", "object_type", "status"])
    op.create_index("ix_registry_objects_unique_id", "registry_objects", ["unique_id"])
    op.create_index("uq_registry_objects_unique_id_claim", "registry_objects", ["unique_id_claim"], unique=True)
    op.create_index("ix_registry_objects_submission_set", "registry_objects", ["submission_set_uuid"])
    op.create_index("ix_registry_objects_owner", "registry_objects", ["owner_uuid"])
    op.create_index("ix_registry_objects_created_at", "registry_objects", ["created_at"])

    op.create_table(
        "registry_values",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "entry_uuid",
            sa.String(UUID_LEN),
            sa.ForeignKey("registry_objects.entry_uuid", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("value", sa.String(VALUE_LEN), nullable=False),
    )
    op.create_index("ix_registry_values_kind_value", "registry_values", ["kind", "value"])
    op.create_index("ix_registry_values_entry_kind", "registry_values", ["entry_uuid", "kind"])

    op.create_table(
        "registry_associations",
        sa.Column(
            "entry_uuid",
            sa.String(UUID_LEN),
            sa.ForeignKey("registry_objects.entry_uuid", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("source_uuid", sa.String(UUID_LEN), nullable=False),
        sa.Column("target_uuid", sa.String(UUID_LEN), nullable=False),
        sa.Column("assoc_type", sa.String(128), nullable=False),
    )
    op.create_index("ix_registry_associations_source", "registry_associations", ["source_uuid", "assoc_type"])
    op.create_index("ix_registry_associations_target", "registry_associations", ["target_uuid", "assoc_type"])


def downgrade() -> None:
    op.drop_table("registry_associations")
    op.drop_table("registry_values")
    op.drop_table("registry_objects")
