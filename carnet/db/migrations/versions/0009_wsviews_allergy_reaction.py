"""an allergy's reaction (what happened: urticaria, anaphylaxis...), encrypted like the notes;
the billing worklist's index (a facility's issued invoices, oldest first)

Revision ID: 0009_wsviews
Revises: 0009_rest
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_wsviews"
down_revision = "0009_rest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("allergies", sa.Column("reaction_ct", sa.LargeBinary(), nullable=True))
    op.create_index("ix_invoices_worklist", "invoices", ["facility_id", "status", "issued_at"])


def downgrade() -> None:
    op.drop_index("ix_invoices_worklist", table_name="invoices")
    op.drop_column("allergies", "reaction_ct")
