"""audit chain in lanes: several hash chains, one global sequence (issues 18 and 20)

One chain-head row serialised every audited transaction from its append to the end of its
COMMIT (WAL flush included): about 1,100 audited transactions/s on the 2-core kind, whatever
the rest of the work. The chain is now split into LANES lanes (`audit_chain_head` rows 1..LANES),
each its own hash chain: an event's `prev_hash` is the hash of the previous event IN ITS LANE.
The canonical bytes do not change (carnet.audit.chain), so every existing event verifies as is:
existing events are lane 1, the only lane there was.

- `audit_events.lane` (smallint, NOT NULL, default 1: no table rewrite) and `prev_seq` (the seq
  of the previous event in the same lane; NULL for older rows and a lane's first event). Neither
  is covered by the hash: the lane is bound by the prev_hash link (an event moved to another lane
  breaks the links of both), and prev_seq only says where a gap is.
- `audit_event_seq`: the global sequence number now comes from a sequence (CACHE 1), taken after
  the lane's lock, so within a lane seq increases in commit order. A rolled-back transaction
  leaves a gap in the global numbering: gaps are no longer evidence, the per-lane links are.
- `carnet_audit_lane(count)` picks the lane: the one this transaction already holds (the
  transaction-local setting `carnet.audit_lane`; a transaction never holds two lanes, so two
  transactions cannot deadlock on lanes), else the lowest free one (`FOR UPDATE SKIP LOCKED`),
  else it waits on lane pg_backend_pid() % LANES + 1 so that waiters spread. It answers the lane,
  its head (prev seq, prev hash) and `count` new sequence numbers; the caller must update the head.
- `carnet_audit_link(rest)` (one event in one statement, as 0004) now also answers lane and
  prev_seq, so it is dropped and created again (its OUT columns change).

The lane rows are created on first use when missing (the tests empty the table), all at once.

Written by hand.

Revision ID: 0012_auditlanes
Revises: 0011_patientkept
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_auditlanes"
down_revision = "0011_patientkept"
branch_labels = None
depends_on = None

APP_ROLE = "carnet_app"
# Frozen here on purpose: changing the number of lanes is a new migration (carnet.audit.chain.LANES).
LANES = 8

LANE_FUNCTION = f"""
CREATE FUNCTION carnet_audit_lane(count integer,
                                  OUT lane integer, OUT prev_seq bigint, OUT prev_hash text,
                                  OUT seqs bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    held text := current_setting('carnet.audit_lane', true);
BEGIN
    IF held IS NOT NULL AND held <> '' THEN
        lane := held::integer;
        SELECT h.seq, h.hash INTO prev_seq, prev_hash FROM audit_chain_head AS h
         WHERE h.id = lane FOR UPDATE;
    END IF;
    IF prev_hash IS NULL THEN
        FOR attempt IN 1..3 LOOP
            SELECT h.id, h.seq, h.hash INTO lane, prev_seq, prev_hash FROM audit_chain_head AS h
             WHERE h.id BETWEEN 1 AND {LANES} ORDER BY h.id LIMIT 1 FOR UPDATE SKIP LOCKED;
            EXIT WHEN FOUND;
            lane := pg_backend_pid() % {LANES} + 1;
            SELECT h.seq, h.hash INTO prev_seq, prev_hash FROM audit_chain_head AS h
             WHERE h.id = lane FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO audit_chain_head (id, seq, hash)
            SELECT g, 0, repeat('0', 64) FROM generate_series(1, {LANES}) AS g ON CONFLICT DO NOTHING;
        END LOOP;
        IF prev_hash IS NULL THEN
            RAISE EXCEPTION 'audit chain lanes could not be initialised';
        END IF;
        PERFORM set_config('carnet.audit_lane', lane::text, true);
    END IF;
    IF count = 1 THEN
        seqs := ARRAY[nextval('audit_event_seq')];
    ELSIF count > 1 THEN
        seqs := ARRAY(SELECT nextval('audit_event_seq') FROM generate_series(1, count));
    ELSE
        seqs := '{{}}';
    END IF;
END
$$
"""  # noqa: S608 (constants only)

LINK_FUNCTION = """
CREATE FUNCTION carnet_audit_link(rest bytea, OUT seq bigint, OUT prev_hash text, OUT hash text,
                                  OUT lane integer, OUT prev_seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    seqs bigint[];
BEGIN
    SELECT l.lane, l.prev_seq, l.prev_hash, l.seqs INTO lane, prev_seq, prev_hash, seqs
      FROM carnet_audit_lane(1) AS l;
    seq := seqs[1];
    hash := encode(sha256(decode(prev_hash, 'hex') || convert_to(seq::text, 'UTF8') || rest), 'hex');
    UPDATE audit_chain_head AS h SET seq = carnet_audit_link.seq, hash = carnet_audit_link.hash
     WHERE h.id = carnet_audit_link.lane;
    IF prev_seq = 0 THEN
        prev_seq := NULL;
    END IF;
END
$$
"""

OLD_LINK_FUNCTION = """
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


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("lane", sa.SmallInteger(), server_default="1", nullable=False))
        batch.add_column(
            sa.Column("prev_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True)
        )
    if op.get_context().dialect.name != "postgresql":
        return  # SQLite serialises writers anyway: one lane, seq from the head row as before
    op.execute("CREATE SEQUENCE audit_event_seq AS bigint CACHE 1 OWNED BY audit_events.seq")
    op.execute(
        "SELECT setval('audit_event_seq', greatest((SELECT max(seq) FROM audit_events),"
        " (SELECT max(seq) FROM audit_chain_head), 0) + 1, false)"
    )
    op.execute(f"GRANT USAGE, SELECT ON SEQUENCE audit_event_seq TO {APP_ROLE}")
    op.execute(
        "INSERT INTO audit_chain_head (id, seq, hash) SELECT g, 0, repeat('0', 64)"  # noqa: S608
        f" FROM generate_series(1, {LANES}) AS g ON CONFLICT DO NOTHING"
    )
    op.execute("DROP FUNCTION carnet_audit_link(bytea)")
    op.execute(LANE_FUNCTION)
    op.execute(LINK_FUNCTION)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        # Only a database whose events are all lane 1 can go back to one chain.
        op.execute(
            """
            DO $$ BEGIN
                IF EXISTS (SELECT 1 FROM audit_events WHERE lane <> 1) THEN
                    RAISE EXCEPTION 'audit events in lanes other than 1: cannot go back to one head';
                END IF;
            END $$
            """
        )
        op.execute("DROP FUNCTION carnet_audit_link(bytea)")
        op.execute("DROP FUNCTION carnet_audit_lane(integer)")
        op.execute("DELETE FROM audit_chain_head WHERE id <> 1")
        op.execute(OLD_LINK_FUNCTION)
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("prev_seq")
        batch.drop_column("lane")
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP SEQUENCE IF EXISTS audit_event_seq")
