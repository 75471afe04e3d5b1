"""another system's lab orders kept whole: a ServiceRequest imported keeps its resource
(encrypted under the facility's key) and names its requester and numbers in it (no carnet
practitioner, no carnet placer number: those columns become optional)

Revision ID: 0010_interop
Revises: 0009_wsviews
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_interop"
down_revision = "0010_bulk"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("service_requests") as batch:
        batch.add_column(sa.Column("received_ct", sa.LargeBinary(), nullable=True))
        batch.alter_column("requester_id", existing_type=sa.Uuid(), nullable=True)
        batch.alter_column("placer_number", existing_type=sa.String(length=40), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("service_requests") as batch:
        batch.alter_column("placer_number", existing_type=sa.String(length=40), nullable=False)
        batch.alter_column("requester_id", existing_type=sa.Uuid(), nullable=False)
        batch.drop_column("received_ct")
