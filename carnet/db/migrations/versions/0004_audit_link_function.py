"""audit chain link computed in the database (PostgreSQL only; a no-op on SQLite)

`carnet_audit_link(rest)` advances the chain head by one event and returns (seq, prev_hash, hash),
where hash = sha256(prev_hash || seq || rest) and `rest` is the event's canonical bytes after its
sequence number (carnet.audit.chain). The writer calls it inside the same statement that inserts
the event, so the head row's lock is taken by the last statement of the audited transaction and
held only until its commit: no round trip and no Python work (which, under load, waits for the
GIL) happen while other workers queue behind it.

Written by hand (not regenerated): scripts/regen-initial-migration keeps it.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION carnet_audit_link(rest bytea, OUT seq bigint, OUT prev_hash text, OUT hash text)
        LANGUAGE plpgsql AS $$
        BEGIN
            SELECT h.seq, h.hash INTO seq, prev_hash FROM audit_chain_head AS h WHERE h.id = 1 FOR UPDATE;
            IF NOT FOUND THEN
                INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, repeat('0', 64))
                ON CONFLICT DO NOTHING;
                SELECT h.seq, h.hash INTO seq, prev_hash FROM audit_chain_head AS h WHERE h.id = 1 FOR UPDATE;
            END IF;
            seq := seq + 1;
            hash := encode(sha256(decode(prev_hash, 'hex') || convert_to(seq::text, 'UTF8') || rest), 'hex');
            UPDATE audit_chain_head AS h SET seq = carnet_audit_link.seq, hash = carnet_audit_link.hash
             WHERE h.id = 1;
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION IF EXISTS carnet_audit_link(bytea)")
