"""an allergy's reaction (what happened: urticaria, anaphylaxis...), encrypted like the notes

Revision ID: 0009_wsviews
Revises: 0008_fhirio
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_wsviews"
down_revision = "0009_rest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("allergies", sa.Column("reaction_ct", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("allergies", "reaction_ct")
