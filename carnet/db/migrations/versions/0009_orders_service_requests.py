"""lab orders (ServiceRequest) and what results keep of them: the order they answer (basedOn),
the laboratory's reference range and abnormal flag (HL7 OBX-7, OBX-8)

Revision ID: 0009_orders
Revises: 0008_fhirio
"""

import sqlalchemy as sa
from alembic import op

import carnet.db.base

revision = "0009_orders"
down_revision = "0008_fhirio"
branch_labels = None
depends_on = None

SCOPE = "(carnet_scope_all() OR facility_id = ANY (carnet_scope_facilities()))"


def upgrade() -> None:
    op.create_table(
        "service_requests",
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("encounter_id", sa.Uuid(), nullable=True),
        sa.Column("requester_id", sa.Uuid(), nullable=False),
        sa.Column("placer_number", sa.String(length=40), nullable=False),
        sa.Column("category", sa.String(length=20), nullable=False),
        sa.Column("code", sa.String(length=20), nullable=False),
        sa.Column("display", sa.String(length=200), nullable=False),
        sa.Column("priority", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("authored_at", carnet.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("note_ct", sa.LargeBinary(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("created_at", carnet.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", carnet.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["encounter_id"], ["encounters.id"], name=op.f("fk_service_requests_encounter_id_encounters")
        ),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_service_requests_facility_id_facilities")
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_service_requests_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["requester_id"], ["practitioners.id"], name=op.f("fk_service_requests_requester_id_practitioners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_requests")),
        sa.UniqueConstraint("facility_id", "placer_number", name="uq_service_requests_placer"),
    )
    with op.batch_alter_table("service_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_service_requests_patient_id"), ["patient_id"], unique=False)
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("order_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("reference_range", sa.String(length=60), nullable=True))
        batch_op.add_column(sa.Column("interpretation", sa.String(length=10), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_observations_order_id_service_requests"), "service_requests", ["order_id"], ["id"]
        )
    with op.batch_alter_table("diagnostic_reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("order_id", sa.Uuid(), nullable=True))
        batch_op.create_index(batch_op.f("ix_diagnostic_reports_order_id"), ["order_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_diagnostic_reports_order_id_service_requests"),
            "service_requests",
            ["order_id"],
            ["id"],
        )
    if op.get_context().dialect.name == "postgresql":
        # Orders are patient data of one facility: walled by facility like every record.
        op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON service_requests TO carnet_app")
        op.execute("ALTER TABLE service_requests ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE service_requests FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY facility_scope ON service_requests USING ({SCOPE}) WITH CHECK ({SCOPE})")


def downgrade() -> None:
    with op.batch_alter_table("diagnostic_reports", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_diagnostic_reports_order_id_service_requests"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_diagnostic_reports_order_id"))
        batch_op.drop_column("order_id")
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_observations_order_id_service_requests"), type_="foreignkey")
        batch_op.drop_column("interpretation")
        batch_op.drop_column("reference_range")
        batch_op.drop_column("order_id")
    op.drop_table("service_requests")
