"""Several worker processes append at once: one chain, no fork, no gap, on both databases."""

from __future__ import annotations

import multiprocessing
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.audit.checkpoints import FileCheckpointStore
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.audit.verify import verify
from carnet.audit.writer import SqlAuditWriter
from carnet.db.engine import make_engine, make_session_factory
from carnet.runtime import Runtime

WORKERS = 4
EACH = 40


def _worker(url: str, worker: int, barrier: Any, failures: Any) -> None:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    writer = SqlAuditWriter()
    actor = Actor(
        kind=ActorKind.STAFF,
        username=f"worker{worker}",
        roles=frozenset({Role.NURSE}),
        account_id=uuid.uuid4(),
    )
    barrier.wait()
    try:
        for i in range(EACH):
            record = AuditRecord(
                kind=AuditKind.PHI_READ,
                outcome=Outcome.SUCCESS,
                actor=actor,
                patient_ids=[uuid.uuid4()],
                detail={"worker": str(worker), "i": str(i)},
            )
            with factory.begin() as session:
                # What the gate does: read, then audit in the same transaction.
                session.execute(sa.text("SELECT count(*) FROM audit_event_patients"))
                if i % 10 == 9:
                    writer.append_many(session, [record, record])
                else:
                    writer.append(session, record)
                if i % 7 == 3:
                    session.rollback()  # an access that failed after auditing: no event, no gap
    except Exception as exc:
        failures.put(f"worker {worker}: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


@pytest.mark.slow
def test_parallel_processes_append_one_unbroken_chain(runtime: Runtime) -> None:
    url = runtime.settings.resolved_database_url
    # Start without a head row, so the workers also race to create it.
    with runtime.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_chain_head"))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    failures = ctx.Queue()
    processes = [ctx.Process(target=_worker, args=(url, w, barrier, failures)) for w in range(WORKERS)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert errors == []

    rolled_back = len([i for i in range(EACH) if i % 7 == 3])
    doubles = len([i for i in range(EACH) if i % 10 == 9 and i % 7 != 3])
    expected = WORKERS * (EACH - rolled_back + doubles)
    with runtime.engine.connect() as conn:
        seqs = conn.execute(sa.text("SELECT seq FROM audit_events ORDER BY seq")).scalars().all()
        hashes = conn.execute(sa.text("SELECT count(DISTINCT prev_hash) FROM audit_events")).scalar()
        workers = conn.execute(sa.text("SELECT count(DISTINCT username) FROM audit_events")).scalar()
    assert seqs == list(range(1, expected + 1))
    assert hashes == expected  # no two events share a predecessor: the chain never forked
    assert workers == WORKERS

    assert runtime.checkpointer is not None
    runtime.checkpointer.checkpoint()
    report = verify(
        runtime.engine,
        store=FileCheckpointStore(runtime.settings.resolved_checkpoint_file),
        verifier=runtime.checkpointer.signer.verifier(),
    )
    assert report.ok, [p.describe() for p in report.problems]
    assert report.events == expected
