"""PostgreSQL's CPU per guarded read: the audit link in one function, two indexes that fit the reads

Measured per statement on a private cluster (benchmarks/read_pg.py, docs/BENCHMARKS.md "s10-pg"):

- `carnet_audit_link(rest)` (0012_auditlanes) called `carnet_audit_lane(1)` through a query, which
  ran its own queries (the lane's row, then `PERFORM set_config`): four SPI statements and two
  PL/pgSQL calls for every audited transaction. It now takes the lowest free lane itself (the same
  `FOR UPDATE SKIP LOCKED` query, the transaction-local `carnet.audit_lane` set by an assignment,
  not a query) and leaves to `carnet_audit_lane(0)` only the other cases, unchanged: the lane the
  transaction already holds, every lane taken (wait on pg_backend_pid() % LANES + 1), the lane rows
  missing. The sequence number is still taken after the lane's lock, the head row is still locked
  from the first append to the commit, the hash is computed from the same bytes: same OUT columns,
  same chain, same order. Two SPI statements instead of four in the common case.
- `ix_exposures_patient` (exposures by patient_id alone): no query reads exposures by patient
  (detection counts, baselines, incident reports and the console read them by actor and time,
  `ix_exposures_actor_at`; the patient's access log reads audit_event_patients). It cost one
  B-tree insert (a random page: patient ids are random) and one WAL record per exposure row.
- `ix_care_relationships_practitioner_id` becomes `ix_care_relationships_practitioner_patient`
  (practitioner_id, patient_id): the read's relationships statement asks for one patient's
  relationships to one practitioner; on practitioner_id alone it fetched the practitioner's whole
  care list (30 rows in the benchmark), each row through the row-level-security expression before
  the patient filter, whenever the planner had no statistics to prefer the patient_id index (the
  benchmarks' server runs without autovacuum). The care list (practitioner_id alone) reads the
  leading column as before.

Written by hand.

Revision ID: 0013_readcpu
Revises: 0012_auditlanes
"""

from alembic import op

revision = "0013_readcpu"
down_revision = "0012_auditlanes"
branch_labels = None
depends_on = None

# Frozen here on purpose, as 0012's (changing the number of lanes is a new migration).
LANES = 8

LINK_FUNCTION = f"""
CREATE OR REPLACE FUNCTION carnet_audit_link(rest bytea, OUT seq bigint, OUT prev_hash text,
                                             OUT hash text, OUT lane integer, OUT prev_seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    held text := current_setting('carnet.audit_lane', true);
BEGIN
    IF held IS NULL OR held = '' THEN
        -- The transaction's first append (a read's only one): the lowest free lane, locked.
        SELECT h.id, h.seq, h.hash INTO lane, prev_seq, prev_hash FROM audit_chain_head AS h
         WHERE h.id BETWEEN 1 AND {LANES} ORDER BY h.id LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            held := set_config('carnet.audit_lane', lane::text, true);
        END IF;
    END IF;
    IF prev_hash IS NULL THEN
        -- The lane it holds, every lane taken, or no lane row yet: carnet_audit_lane decides.
        SELECT l.lane, l.prev_seq, l.prev_hash INTO lane, prev_seq, prev_hash
          FROM carnet_audit_lane(0) AS l;
    END IF;
    seq := nextval('audit_event_seq');
    hash := encode(sha256(decode(prev_hash, 'hex') || convert_to(seq::text, 'UTF8') || rest), 'hex');
    UPDATE audit_chain_head AS h SET seq = carnet_audit_link.seq, hash = carnet_audit_link.hash
     WHERE h.id = carnet_audit_link.lane;
    IF prev_seq = 0 THEN
        prev_seq := NULL;
    END IF;
END
$$
"""

# 0012_auditlanes' own, restored by the downgrade.
OLD_LINK_FUNCTION = """
CREATE OR REPLACE FUNCTION carnet_audit_link(rest bytea, OUT seq bigint, OUT prev_hash text,
                                             OUT hash text, OUT lane integer, OUT prev_seq bigint)
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


def upgrade() -> None:
    with op.batch_alter_table("exposures") as batch:
        batch.drop_index("ix_exposures_patient")
    with op.batch_alter_table("care_relationships") as batch:
        batch.create_index("ix_care_relationships_practitioner_patient", ["practitioner_id", "patient_id"])
        batch.drop_index("ix_care_relationships_practitioner_id")
    if op.get_context().dialect.name == "postgresql":
        op.execute(LINK_FUNCTION)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(OLD_LINK_FUNCTION)
    with op.batch_alter_table("care_relationships") as batch:
        batch.create_index("ix_care_relationships_practitioner_id", ["practitioner_id"], unique=False)
        batch.drop_index("ix_care_relationships_practitioner_patient")
    with op.batch_alter_table("exposures") as batch:
        batch.create_index("ix_exposures_patient", ["patient_id"], unique=False)
