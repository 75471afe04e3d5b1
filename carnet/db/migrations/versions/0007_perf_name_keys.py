"""keyed prefix blind indexes of patient names (patient_name_keys)

A name search looks up the keyed prefix of its term's first word here and decrypts only the
patients found, instead of decrypting the actor's whole care list. The keys are computed with the
blind-index key, which is outside the database: this migration creates the table (under the
same facility row-level security as `patients`, on PostgreSQL); `carnet keys reindex-names`
fills it for the patients written before it (new writes fill it themselves).

Revision ID: 0007_perf
Revises: 0006_hl7
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_perf"
down_revision = "0006_hl7"
branch_labels = None
depends_on = None

APP_ROLE = "carnet_app"
SCOPE = "(carnet_scope_all() OR facility_id = ANY (carnet_scope_facilities()))"


def upgrade() -> None:
    op.create_table(
        "patient_name_keys",
        sa.Column("key", sa.LargeBinary(length=16), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_patient_name_keys_facility_id_facilities")
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_patient_name_keys_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("key", "patient_id", name=op.f("pk_patient_name_keys")),
    )
    with op.batch_alter_table("patient_name_keys", schema=None) as batch_op:
        batch_op.create_index("ix_patient_name_keys_patient", ["patient_id"], unique=False)
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON patient_name_keys TO {APP_ROLE}")
    op.execute("ALTER TABLE patient_name_keys ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE patient_name_keys FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY facility_scope ON patient_name_keys USING ({SCOPE}) WITH CHECK ({SCOPE})")


def downgrade() -> None:
    with op.batch_alter_table("patient_name_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_patient_name_keys_patient")
    op.drop_table("patient_name_keys")
