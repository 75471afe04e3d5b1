"""HL7 v2 interfaces: registrations, message log, links to carnet's records (issue 20)

Revision ID: 0006_hl7
Revises: 0005_stepup
"""

import sqlalchemy as sa
from alembic import op

import carnet.db.base

revision = "0006_hl7"
down_revision = "0005_stepup"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "interfaces",
        sa.Column("name", sa.String(length=60), nullable=False),
        sa.Column("sending_facility", sa.String(length=60), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("message_types", sa.String(length=300), nullable=False),
        sa.Column("source_addresses", sa.Text(), nullable=False),
        sa.Column("client_cert_sha256", sa.String(length=64), nullable=True),
        sa.Column("per_minute", sa.Integer(), nullable=False),
        sa.Column("timezone", sa.String(length=60), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", carnet.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_interfaces_account_id_accounts")),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_interfaces_facility_id_facilities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interfaces")),
        sa.UniqueConstraint("account_id", name=op.f("uq_interfaces_account_id")),
        sa.UniqueConstraint("name", name=op.f("uq_interfaces_name")),
    )
    with op.batch_alter_table("interfaces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_interfaces_facility_id"), ["facility_id"], unique=False)
    op.create_table(
        "interface_messages",
        sa.Column("interface_id", sa.Uuid(), nullable=False),
        sa.Column("control_id", sa.String(length=40), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("message_type", sa.String(length=20), nullable=False),
        sa.Column("received_at", carnet.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("patient_ids", sa.Text(), nullable=False),
        sa.Column("replays", sa.Integer(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["interface_id"], ["interfaces.id"], name=op.f("fk_interface_messages_interface_id_interfaces")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interface_messages")),
        sa.UniqueConstraint("interface_id", "control_id", name="uq_interface_messages_control"),
    )
    with op.batch_alter_table("interface_messages", schema=None) as batch_op:
        batch_op.create_index("ix_interface_messages_received", ["interface_id", "received_at"], unique=False)
    op.create_table(
        "interface_links",
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("key_digest", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.Uuid(), nullable=False),
        sa.Column("reference_range", sa.String(length=60), nullable=True),
        sa.Column("abnormal_flags", sa.String(length=20), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_interface_links_facility_id_facilities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interface_links")),
        sa.UniqueConstraint("facility_id", "kind", "key_digest", name="uq_interface_links_key"),
    )
    if op.get_context().dialect.name == "postgresql":
        # The links name carnet records of one facility: walled by facility like the records.
        scope = "(carnet_scope_all() OR facility_id = ANY (carnet_scope_facilities()))"
        op.execute("ALTER TABLE interface_links ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE interface_links FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY facility_scope ON interface_links USING ({scope}) WITH CHECK ({scope})")


def downgrade() -> None:
    op.drop_table("interface_links")
    with op.batch_alter_table("interface_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_interface_messages_received")
    op.drop_table("interface_messages")
    with op.batch_alter_table("interfaces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_interfaces_facility_id"))
    op.drop_table("interfaces")
