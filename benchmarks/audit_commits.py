"""Audited commits per second through `SqlAuditWriter.append` (one event per transaction, the
one-statement link the gate and the HL7 groups use), from many threads, on PostgreSQL.

Run it from two trees (main and a branch) interleaved to compare the chain's designs:

    .venv/bin/python -m benchmarks.audit_commits --threads 32 --seconds 10

Creates and drops its own database on the local server.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid

from sqlalchemy import Engine

from benchmarks._db import bench_database
from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.audit.writer import SqlAuditWriter
from carnet.db.engine import make_engine, make_session_factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with bench_database("commits") as url:
        engine = make_engine(url, pool_size=args.threads, max_overflow=0)
        try:
            _measure(engine, threads=args.threads, seconds=args.seconds)
        finally:
            engine.dispose()


def _measure(engine: Engine, *, threads: int, seconds: float) -> None:
    factory = make_session_factory(engine)
    writer = SqlAuditWriter()
    actor = Actor(
        kind=ActorKind.STAFF, username="bench", roles=frozenset({Role.NURSE}), account_id=uuid.uuid4()
    )
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def work(index: int) -> None:
        record = AuditRecord(
            kind=AuditKind.PHI_READ,
            outcome=Outcome.SUCCESS,
            actor=actor,
            patient_ids=[uuid.uuid4()],
            detail={"thread": str(index)},
        )
        while time.monotonic() < stop:
            with factory.begin() as session:
                writer.append(session, record)
            counts[index] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    print(f"{sum(counts) / seconds:.0f} audited commits/s, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
