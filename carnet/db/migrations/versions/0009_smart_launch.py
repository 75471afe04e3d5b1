"""SMART App Launch: EHR launch contexts, the launch patient of codes and tokens, refresh tokens

An EHR launch from the chart is a short-lived, single-use row bound to the person, the patient
and the app. A patient-scoped app token carries its launch patient, to which every access is
confined. Refresh tokens (offline_access / online_access) rotate: single use, one family.

Revision ID: 0009_smart
Revises: 0008_fhirio
"""

import sqlalchemy as sa
from alembic import op

import carnet.db.base

revision = "0009_smart"
down_revision = "0009_fhirio"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("launch_uri", sa.String(length=500), nullable=True))
    with op.batch_alter_table("authorization_codes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("nonce", sa.String(length=200), nullable=True))
    with op.batch_alter_table("access_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_id", sa.Uuid(), nullable=True))
    op.create_table(
        "smart_launches",
        sa.Column("launch_digest", sa.String(length=64), nullable=False),
        sa.Column("client_pk", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", carnet.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", carnet.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("used_at", carnet.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_smart_launches_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["client_pk"], ["api_clients.id"], name=op.f("fk_smart_launches_client_pk_api_clients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_smart_launches")),
        sa.UniqueConstraint("launch_digest", name=op.f("uq_smart_launches_launch_digest")),
    )
    with op.batch_alter_table("smart_launches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_smart_launches_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_smart_launches_client_pk"), ["client_pk"], unique=False)
    op.create_table(
        "refresh_tokens",
        sa.Column("token_digest", sa.String(length=64), nullable=False),
        sa.Column("family_id", sa.Uuid(), nullable=False),
        sa.Column("client_pk", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=True),
        sa.Column("issued_at", carnet.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", carnet.db.base.UtcDateTime(timezone=True), nullable=False),
        sa.Column("used_at", carnet.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", carnet.db.base.UtcDateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_refresh_tokens_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["client_pk"], ["api_clients.id"], name=op.f("fk_refresh_tokens_client_pk_api_clients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refresh_tokens")),
        sa.UniqueConstraint("token_digest", name=op.f("uq_refresh_tokens_token_digest")),
    )
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_refresh_tokens_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_refresh_tokens_client_pk"), ["client_pk"], unique=False)
        batch_op.create_index(batch_op.f("ix_refresh_tokens_family_id"), ["family_id"], unique=False)


def downgrade() -> None:
    op.drop_table("refresh_tokens")
    op.drop_table("smart_launches")
    with op.batch_alter_table("access_tokens", schema=None) as batch_op:
        batch_op.drop_column("patient_id")
    with op.batch_alter_table("authorization_codes", schema=None) as batch_op:
        batch_op.drop_column("nonce")
        batch_op.drop_column("patient_id")
    with op.batch_alter_table("api_clients", schema=None) as batch_op:
        batch_op.drop_column("launch_uri")
