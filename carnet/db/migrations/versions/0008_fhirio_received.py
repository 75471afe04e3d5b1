"""the resource as received, kept whole (encrypted JSON) next to the columns the gate reads

A FHIR resource carnet accepts keeps its full original content, so a read returns what was
written (components, codings of any system, identifiers, references...) and not only the
columns policy and search need. Encrypted under the facility's key like every identifying field.

Revision ID: 0008_fhirio
Revises: 0007_perf
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_fhirio"
down_revision = "0007_perf"
branch_labels = None
depends_on = None

TABLES = ("observations", "conditions", "allergies", "diagnostic_reports")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("received_ct", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "received_ct")
