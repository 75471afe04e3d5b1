"""The database's one-event link (carnet_audit_link, migration 0013_readcpu) in each of its cases:
a transaction's first event takes the lowest free lane itself; a second event stays in the lane the
transaction holds; with every lane taken it waits for one (carnet_audit_lane) and links after it.
Each time: the head advanced, every lane a chain (the hash over the writer's bytes:
tests/audit/test_chain.py)."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.audit.chain import LANES
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.audit.writer import SqlAuditWriter
from carnet.runtime import Runtime
from tests.audit.test_concurrency import assert_lanes_are_chains

pytestmark = pytest.mark.postgres


def _record(n: int) -> AuditRecord:
    actor = Actor(
        kind=ActorKind.STAFF, username="link", roles=frozenset({Role.NURSE}), account_id=uuid.uuid4()
    )
    return AuditRecord(
        kind=AuditKind.PHI_READ,
        outcome=Outcome.SUCCESS,
        actor=actor,
        patient_ids=[uuid.uuid4()],
        detail={"n": str(n)},
    )


@pytest.fixture
def pg(postgres_database: str, settings: object) -> Runtime:
    from carnet.runtime import build_runtime
    from tests.conftest import _empty_postgres

    runtime = build_runtime(settings.model_copy(update={"database_url": postgres_database}))  # type: ignore[attr-defined]
    yield runtime  # type: ignore[misc]
    runtime.close()
    _empty_postgres(runtime.engine)
    runtime.engine.dispose()


def _events(runtime: Runtime) -> list[sa.Row]:
    with runtime.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT seq, lane, prev_seq, prev_hash, hash FROM audit_events ORDER BY seq")
            ).all()
        )


def test_first_event_takes_the_lowest_free_lane_and_a_second_stays_in_it(pg: Runtime) -> None:
    writer = SqlAuditWriter()
    with pg.session_factory() as session, session.begin():
        first = writer.append(session, _record(1))
        second = writer.append(session, _record(2))
        held = session.execute(sa.text("SELECT current_setting('carnet.audit_lane', true)")).scalar()
    rows = {r.seq: r for r in _events(pg)}
    assert rows[first].lane == rows[second].lane == int(held or 0)
    assert rows[second].prev_seq == first and rows[second].prev_hash == rows[first].hash
    with pg.engine.connect() as conn:
        head = conn.execute(
            sa.text("SELECT seq, hash FROM audit_chain_head WHERE id = :l"), {"l": rows[first].lane}
        ).one()
    assert tuple(head) == (second, rows[second].hash)
    assert_lanes_are_chains(pg, 2)


def test_with_every_lane_taken_it_waits_for_one_and_links_after_it(pg: Runtime) -> None:
    writer = SqlAuditWriter()
    with pg.session_factory() as session, session.begin():
        writer.append(session, _record(0))  # the lane rows exist
    holder = pg.engine.connect()
    tx = holder.begin()
    locked = holder.execute(
        sa.text("SELECT id FROM audit_chain_head WHERE id BETWEEN 1 AND :n FOR UPDATE"), {"n": LANES}
    ).scalars()
    assert sorted(locked) == list(range(1, LANES + 1))
    done: list[int] = []
    errors: list[str] = []

    def append() -> None:
        try:
            with pg.session_factory() as session, session.begin():
                done.append(writer.append(session, _record(1)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(f"{type(exc).__name__}: {exc}")

    waiter = threading.Thread(target=append)
    waiter.start()
    with pg.engine.connect() as conn:  # the waiter is blocked on a lane's row lock, nothing appended
        for _ in range(1000):
            if conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE NOT granted AND locktype IN ('transactionid', 'tuple')"
                )
            ).scalar():
                break
            threading.Event().wait(0.01)
    assert done == []
    tx.commit()  # the lanes are free again
    holder.close()
    waiter.join(timeout=60)
    assert errors == [] and len(done) == 1
    assert_lanes_are_chains(pg, 2)
