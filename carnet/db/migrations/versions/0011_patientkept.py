"""Patient and Coverage kept as received: a Patient or Coverage accepted from another system
(import, FHIR create/update, transaction Bundle) keeps its resource, encrypted under the
facility's key, next to the columns the gate needs for policy and search

Revision ID: 0011_patientkept
Revises: 0010_interop
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_patientkept"
down_revision = "0011_beds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patients") as batch:
        batch.add_column(sa.Column("received_ct", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("coverages") as batch:
        batch.add_column(sa.Column("received_ct", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("coverages") as batch:
        batch.drop_column("received_ct")
    with op.batch_alter_table("patients") as batch:
        batch.drop_column("received_ct")
