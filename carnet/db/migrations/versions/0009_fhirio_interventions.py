"""interventions: immunizations, procedures, medication administrations and statements;
stays kept as received; directory entries of other systems

Each intervention is kept whole as received (the FHIR resource, encrypted under the facility's
key) beside the columns policy and search need; under the same facility row-level security as
the other patient tables, on PostgreSQL. A stay (Encounter) imported or posted keeps its
resource too. `directory_entries`: the Practitioner, PractitionerRole, Organization and
Location resources of another system that an import referenced and carnet's own directory did
not match by identifier (no patient data; created through the audited system door).

Revision ID: 0009_fhirio
Revises: 0008_fhirio
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_fhirio"
down_revision = "0009_orders"
branch_labels = None
depends_on = None

APP_ROLE = "carnet_app"
SCOPE = "(carnet_scope_all() OR facility_id = ANY (carnet_scope_facilities()))"


def upgrade() -> None:
    op.create_table(
        "interventions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("resource_type", sa.String(length=40), nullable=False),
        sa.Column("code_system", sa.String(length=200), nullable=True),
        sa.Column("code", sa.String(length=40), nullable=True),
        sa.Column("display", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("encounter_id", sa.Uuid(), nullable=True),
        sa.Column("recorded_by", sa.Uuid(), nullable=True),
        sa.Column("received_ct", sa.LargeBinary(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_interventions_facility_id_facilities")
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_interventions_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["encounter_id"], ["encounters.id"], name=op.f("fk_interventions_encounter_id_encounters")
        ),
        sa.ForeignKeyConstraint(
            ["recorded_by"], ["practitioners.id"], name=op.f("fk_interventions_recorded_by_practitioners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_interventions")),
    )
    with op.batch_alter_table("interventions", schema=None) as batch_op:
        batch_op.create_index("ix_interventions_patient_type", ["patient_id", "resource_type"], unique=False)
    op.add_column("encounters", sa.Column("received_ct", sa.LargeBinary(), nullable=True))
    # A prescription imported from another system keeps its resource; its prescriber is in that
    # system's directory (the resource names them), not one of carnet's practitioners.
    with op.batch_alter_table("prescriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("received_ct", sa.LargeBinary(), nullable=True))
        batch_op.alter_column("prescriber_id", existing_type=sa.Uuid(), nullable=True)
    op.create_table(
        "directory_entries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("resource_type", sa.String(length=40), nullable=False),
        sa.Column("identifier_system", sa.String(length=200), nullable=True),
        sa.Column("identifier_value", sa.String(length=100), nullable=True),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_directory_entries_facility_id_facilities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_directory_entries")),
    )
    with op.batch_alter_table("directory_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_directory_entries_identifier",
            ["facility_id", "resource_type", "identifier_system", "identifier_value"],
            unique=False,
        )
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON directory_entries TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON interventions TO {APP_ROLE}")
    op.execute("ALTER TABLE interventions ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE interventions FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY facility_scope ON interventions USING ({SCOPE}) WITH CHECK ({SCOPE})")


def downgrade() -> None:
    with op.batch_alter_table("directory_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_directory_entries_identifier")
    op.drop_table("directory_entries")
    with op.batch_alter_table("encounters", schema=None) as batch_op:
        batch_op.drop_column("received_ct")
    with op.batch_alter_table("prescriptions", schema=None) as batch_op:
        batch_op.alter_column("prescriber_id", existing_type=sa.Uuid(), nullable=False)
        batch_op.drop_column("received_ct")
    with op.batch_alter_table("interventions", schema=None) as batch_op:
        batch_op.drop_index("ix_interventions_patient_type")
    op.drop_table("interventions")
