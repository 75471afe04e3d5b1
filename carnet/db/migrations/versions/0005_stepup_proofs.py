"""step-up proofs for access-widening actions; account probation and in-person re-enrolment

Revision ID: 0005_stepup
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

import carnet.db.base

revision = "0005_stepup"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "step_up_proofs",
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("challenge", sa.LargeBinary(), nullable=True),
        sa.Column("issued_at", carnet.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", carnet.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("consumed_at", carnet.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("proven_at", carnet.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("method", sa.String(length=20), nullable=True),
        sa.Column("used_at", carnet.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("used_for", sa.String(length=60), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_step_up_proofs_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["auth_sessions.id"], name=op.f("fk_step_up_proofs_session_id_auth_sessions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_up_proofs")),
    )
    with op.batch_alter_table("step_up_proofs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_step_up_proofs_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_step_up_proofs_session_id"), ["session_id"], unique=False)
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("probation_ends_at", carnet.db.base.UtcDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("reenrolled_at", carnet.db.base.UtcDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("reenrolled_at")
        batch_op.drop_column("probation_ends_at")
    with op.batch_alter_table("step_up_proofs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_step_up_proofs_session_id"))
        batch_op.drop_index(batch_op.f("ix_step_up_proofs_account_id"))
    op.drop_table("step_up_proofs")
