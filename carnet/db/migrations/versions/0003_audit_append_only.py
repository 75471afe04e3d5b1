"""audit trail append-only for the application role (PostgreSQL only; a no-op on SQLite)

The gate runs as `carnet_app`: it may add audit events and advance the chain head, never change
or remove an event. Only the retention purge (`carnet audit purge`, run by the table owner from
the command line) deletes, and it leaves a signed anchor. A database superuser can still edit
rows: that is what the hash chain and the signed checkpoints are for.

Written by hand (not regenerated): scripts/regen-initial-migration keeps it.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

APP_ROLE = "carnet_app"
APPEND_ONLY = ("audit_events", "audit_event_patients")


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table in APPEND_ONLY:
        op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {APP_ROLE}")
    op.execute(f"REVOKE DELETE, TRUNCATE ON audit_chain_head FROM {APP_ROLE}")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for table in (*APPEND_ONLY, "audit_chain_head"):
        op.execute(f"GRANT UPDATE, DELETE ON {table} TO {APP_ROLE}")
