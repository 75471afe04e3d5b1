"""FHIR Bulk Data for standard clients: an export request (and its job) may be a registered
Backend Services client's, states the types it asks for and whether its kick-off gave a purpose;
a client registers its purpose of use for exports; a multi-type job keeps its files' counts.

Revision ID: 0010_bulk
Revises: 0009_wsviews
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_bulk"
down_revision = "0009_wsviews"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_requests") as batch:
        batch.alter_column("requested_by", existing_type=sa.Uuid(), nullable=True)
        batch.add_column(sa.Column("requested_by_client", sa.String(100), nullable=True))
        batch.add_column(
            sa.Column("purpose_missing", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("resource_types", sa.String(500), nullable=True))
    with op.batch_alter_table("export_files") as batch:
        batch.alter_column("account_id", existing_type=sa.Uuid(), nullable=True)
        batch.add_column(sa.Column("client_id", sa.String(100), nullable=True))
        batch.add_column(sa.Column("outputs", sa.String(2000), nullable=True))
    op.add_column("api_clients", sa.Column("export_purpose", sa.String(1000), nullable=True))


def downgrade() -> None:
    op.drop_column("api_clients", "export_purpose")
    with op.batch_alter_table("export_files") as batch:
        batch.drop_column("outputs")
        batch.drop_column("client_id")
        batch.alter_column("account_id", existing_type=sa.Uuid(), nullable=False)
    with op.batch_alter_table("export_requests") as batch:
        batch.drop_column("resource_types")
        batch.drop_column("purpose_missing")
        batch.drop_column("requested_by_client")
        batch.alter_column("requested_by", existing_type=sa.Uuid(), nullable=False)
