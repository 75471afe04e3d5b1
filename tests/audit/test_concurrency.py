"""Several workers append at once: every lane one chain, no fork, no lost event, on both databases.

On PostgreSQL transactions append in lanes (the lowest one no other transaction holds), each lane
its own hash chain; SQLite has one lane. The global seq is unique; on PostgreSQL a rolled-back
transaction leaves a gap in it (a sequence), never in a lane."""

from __future__ import annotations

import multiprocessing
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.audit.chain import GENESIS_HASH
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


def assert_lanes_are_chains(runtime: Runtime, expected: int) -> dict[int, list[int]]:
    """Each lane: genesis first, then every event linked to the one before it (seq and hash); no
    two events in a lane share a predecessor (no fork); every event in some lane. And the events
    one transaction appended together (same worker and i) are in one lane."""
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT seq, lane, prev_seq, prev_hash, hash, username, detail FROM audit_events ORDER BY seq"
            )
        ).all()
        forks = conn.execute(
            sa.text("SELECT count(*) FROM (SELECT DISTINCT lane, prev_hash FROM audit_events) AS d")
        ).scalar()
        heads = dict(conn.execute(sa.text("SELECT id, seq FROM audit_chain_head")).all())
    assert len(rows) == expected and forks == expected
    lanes: dict[int, list[int]] = {}
    last: dict[int, tuple[int, str]] = {}
    together: dict[tuple[str, str], set[int]] = {}
    for seq, lane, prev_seq, prev_hash, digest, username, detail in rows:
        if lane in last:
            assert (prev_seq, prev_hash) == last[lane], f"seq {seq} does not follow its lane {lane}"
        else:
            assert prev_seq is None and prev_hash == GENESIS_HASH
        last[lane] = (seq, digest)
        lanes.setdefault(lane, []).append(seq)
        together.setdefault((username, detail), set()).add(lane)
    assert all(len(used) == 1 for used in together.values())
    assert {lane: seq for lane, (seq, _) in last.items()} == {k: v for k, v in heads.items() if v}
    return lanes


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
        workers = conn.execute(sa.text("SELECT count(DISTINCT username) FROM audit_events")).scalar()
    assert len(seqs) == len(set(seqs)) == expected
    if runtime.engine.dialect.name == "sqlite":
        assert seqs == list(range(1, expected + 1))  # one lane: gap-free
    assert workers == WORKERS
    assert_lanes_are_chains(runtime, expected)

    assert runtime.checkpointer is not None
    runtime.checkpointer.checkpoint()
    report = verify(
        runtime.engine,
        store=FileCheckpointStore(runtime.settings.resolved_checkpoint_file),
        verifier=runtime.checkpointer.signer.verifier(),
    )
    assert report.ok, [p.describe() for p in report.problems]
    assert report.events == expected


THREADS = 16
ROUNDS = 25


@pytest.mark.postgres
def test_many_threads_fill_several_lanes_and_verify_meanwhile_sees_no_tampering(
    postgres_database: str, settings: Any
) -> None:
    """16 threads on PostgreSQL, each transaction one event (the one-statement link), two, or
    three (append_many), some rolled back; `verify` runs while they append and must find nothing
    wrong; afterwards every lane is a valid chain and nothing committed is missing."""
    import threading

    from carnet.runtime import build_runtime
    from tests.conftest import _empty_postgres

    runtime = build_runtime(settings.model_copy(update={"database_url": postgres_database}))
    try:
        assert runtime.checkpointer is not None
        writer = SqlAuditWriter()
        barrier = threading.Barrier(THREADS + 1)
        committed: list[int] = []
        errors: list[str] = []
        lock = threading.Lock()

        def work(thread: int) -> None:
            actor = Actor(kind=ActorKind.STAFF, username=f"t{thread}", roles=frozenset({Role.NURSE}))
            barrier.wait()
            try:
                for i in range(ROUNDS):
                    many = [
                        AuditRecord(
                            kind=AuditKind.PHI_READ,
                            outcome=Outcome.SUCCESS,
                            actor=actor,
                            patient_ids=[uuid.uuid4()],
                            detail={"i": str(i)},
                        )
                    ] * (1 + i % 3)
                    with runtime.session_factory() as session, session.begin():
                        if len(many) == 1:
                            seqs = [writer.append(session, many[0])]
                        else:
                            # one event through the database's link, then more in the same lane
                            seqs = [writer.append(session, many[0]), *writer.append_many(session, many[1:])]
                        if i % 5 == 4:
                            session.rollback()
                            continue
                    with lock:
                        committed.extend(seqs)
            except Exception as exc:
                errors.append(f"{thread}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        store = FileCheckpointStore(runtime.settings.resolved_checkpoint_file)
        # The store exists from the start (as in production after the first start-up): a verify
        # before the first checkpoint must not report a missing store.
        store.path.parent.mkdir(parents=True, exist_ok=True)
        store.path.touch()
        barrier.wait()
        reports = []
        while any(t.is_alive() for t in threads):
            runtime.checkpointer.checkpoint()
            reports.append(
                verify(runtime.engine, store=store, verifier=runtime.checkpointer.signer.verifier())
            )
        for t in threads:
            t.join()
        assert errors == []
        for report in reports:
            assert report.ok, [p.describe() for p in report.problems]
        lanes = assert_lanes_are_chains(runtime, len(committed))
        with runtime.engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT seq FROM audit_events")).scalars().all()
        assert sorted(stored) == sorted(committed)  # no event lost, none extra
        assert len(lanes) > 1  # 16 threads at once did not wait on one head
        runtime.checkpointer.checkpoint()
        final = verify(runtime.engine, store=store, verifier=runtime.checkpointer.signer.verifier())
        assert final.ok and final.events == len(committed) and final.unanchored == 0
        assert set(final.lanes) >= set(lanes)
    finally:
        runtime.close()
        _empty_postgres(runtime.engine)
        runtime.engine.dispose()
