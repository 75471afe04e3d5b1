"""Audit append rate with hash chaining on PostgreSQL, against plain inserts in the same run.

Baseline: the same rows inserted the same way (batch size, transaction) with no chain head,
no hashing. Then the real writer (`SqlAuditWriter.append_many` / `append`): batched, and with
several writer processes at once (the head-row lock orders them).

    .venv/bin/python -m benchmarks.audit_append [--events 20000] [--writers 4] [--rounds 3]

Creates and drops its own database on CARNET_BENCH_POSTGRES_URL (default: the local server).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from benchmarks._audit_db import records
from benchmarks._db import bench_database
from carnet.audit.writer import (
    COPY_THRESHOLD,
    EVENT_PATIENTS,
    EVENTS,
    SqlAuditWriter,
    _copy,
    _fields,
    _utc_micro,
)
from carnet.db.engine import make_engine, make_session_factory
from carnet.kernel import clock


def plain(session: Session, batch: list[Any], counter: list[int]) -> None:
    """What appending costs without a chain: same rows, fixed hashes, no head row."""
    now = clock.now()
    rows, patients = [], []
    for record in batch:
        counter[0] += 1
        row = _fields(counter[0], _utc_micro(now), record)
        row |= {
            "recorded_at": now,
            "account_id": record.actor.account_id,
            "session_id": record.actor.session_id,
        }
        row |= {"prev_hash": "0" * 64, "hash": "0" * 64}
        rows.append(row)
        patients.extend({"seq": counter[0], "patient_id": p} for p in sorted(set(record.patient_ids)))
    connection = session.connection()
    if len(rows) >= COPY_THRESHOLD:
        _copy(connection, EVENTS, rows)
        _copy(connection, EVENT_PATIENTS, patients)
    else:
        connection.execute(sa.insert(EVENTS), rows)
        connection.execute(sa.insert(EVENT_PATIENTS), patients)


def _run(url: str, mode: str, events: int, batch: int, offset: int, barrier: Any, out: Any) -> None:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    writer = SqlAuditWriter()
    pool = records(2000, seed=offset)
    counter = [offset]
    barrier.wait()
    started = time.perf_counter()
    done = 0
    while done < events:
        chunk = [pool[(done + i) % len(pool)] for i in range(min(batch, events - done))]
        with factory.begin() as session:
            if mode == "plain":
                plain(session, chunk, counter)
            elif len(chunk) == 1:
                writer.append(session, chunk[0])
            else:
                writer.append_many(session, chunk)
        done += len(chunk)
    out.put(time.perf_counter() - started)
    engine.dispose()


def measure(url: str, *, mode: str, events: int, batch: int, writers: int) -> float:
    """Events per second over all writers, wall clock from a common start."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(writers)
    out = ctx.Queue()
    each = events // writers
    procs = [
        ctx.Process(target=_run, args=(url, mode, each, batch, 10**9 * (w + 1), barrier, out))
        for w in range(writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    slowest = max(out.get() for _ in procs)
    return each * writers / slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, w = args.events, args.writers

    def case(mode: str, events: int, batch: int, writers: int) -> Callable[[str], float]:
        return lambda url: measure(url, mode=mode, events=events, batch=batch, writers=writers)

    cases: list[tuple[str, Callable[[str], float]]] = [
        ("plain insert, batch 500, 1 writer (baseline)", case("plain", n, 500, 1)),
        ("chained, batch 500, 1 writer", case("chain", n, 500, 1)),
        ("plain insert, batch 500, 2 writers", case("plain", n, 500, 2)),
        ("chained, batch 500, 2 writers", case("chain", n, 500, 2)),
        ("plain insert, 1 event per transaction, 1 writer", case("plain", n // 40, 1, 1)),
        ("chained, 1 event per transaction, 1 writer", case("chain", n // 40, 1, 1)),
        (f"plain insert, 1 event per transaction, {w} writers", case("plain", n // 20, 1, w)),
        (f"chained, 1 event per transaction, {w} writers", case("chain", n // 20, 1, w)),
    ]
    results: dict[str, float] = {}
    with bench_database("audit_append") as url:
        engine = make_engine(url)
        # Rounds alternate baseline and chained runs; the best of each is kept, so a burst of
        # other work on the shared machine penalises neither side alone.
        for _ in range(args.rounds):
            for name, run in cases:
                with engine.begin() as conn:
                    conn.execute(sa.text("TRUNCATE audit_event_patients, audit_events, audit_chain_head"))
                rate = run(url)
                results[name] = max(results.get(name, 0.0), rate)
                print(f"{name:52s} {rate:10,.0f} events/s", flush=True)
        engine.dispose()
    print("best of", args.rounds, "rounds:")
    for name, rate in results.items():
        print(f"{name:52s} {rate:10,.0f} events/s")
    names = list(results)
    for plain_name, chain_name in zip(names[::2], names[1::2], strict=True):
        print(f"{chain_name:52s} {results[chain_name] / results[plain_name]:6.2f}x of its plain baseline")
    print(
        json.dumps(
            {"events": n, "writers": w, "rounds": args.rounds, "load": os.getloadavg(), "rates": results}
        )
    )


if __name__ == "__main__":
    main()
