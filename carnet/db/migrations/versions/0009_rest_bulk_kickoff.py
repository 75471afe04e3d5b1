"""FHIR Bulk Data kick-offs ($export, Patient/$export, Group/[id]/$export): a job waits
`pending` until a second person approves its export request; it keeps the kick-off's `_since`
and its URL (path and Bulk Data parameters, never the purpose) for the manifest.

Revision ID: 0009_rest
Revises: 0008_fhirio
"""

import sqlalchemy as sa
from alembic import op

import carnet.db.base

revision = "0009_rest"
down_revision = "0009_smart"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("export_files", sa.Column("since", carnet.db.base.UtcDateTime(timezone=True), nullable=True))
    op.add_column("export_files", sa.Column("request_url", sa.String(500), nullable=True))


def downgrade() -> None:
    op.drop_column("export_files", "request_url")
    op.drop_column("export_files", "since")
