"""Verification rate of `carnet audit verify` on PostgreSQL, against reading the same rows.

Baseline: streaming the same rows through the same `COPY ... TO STDOUT` without hashing (the
floor for any verifier). Also shown, for scale: the naive way, ORM objects and `link()` per event.

    .venv/bin/python -m benchmarks.audit_verify [--events 500000]

Creates and drops its own database on CARNET_BENCH_POSTGRES_URL (default: the local server).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from benchmarks._audit_db import records
from benchmarks._db import bench_database
from carnet.audit.chain import GENESIS_HASH, link
from carnet.audit.checkpoints import Checkpointer, CheckpointSigner, FileCheckpointStore
from carnet.audit.models import AuditEvent
from carnet.audit.verify import chain_lines, verify
from carnet.audit.writer import SqlAuditWriter
from carnet.db.engine import make_engine, make_session_factory

BATCH = 1000


def fill(engine: sa.Engine, checkpointer: Checkpointer, count: int) -> None:
    writer = SqlAuditWriter()
    factory = make_session_factory(engine)
    pool = records(5000)
    done = 0
    while done < count:
        n = min(BATCH, count - done)
        with factory.begin() as session:
            writer.append_many(session, [pool[(done + i) % len(pool)] for i in range(n)])
        done += n
        if done % 50_000 == 0:
            checkpointer.checkpoint()
    checkpointer.checkpoint()


def read_only(engine: sa.Engine) -> int:
    """The same COPY stream, split into events, without hashing anything."""
    with engine.connect() as conn:
        count = sum(1 for _ in chain_lines(conn, 2**62))
        conn.rollback()
    return count


def naive(engine: sa.Engine, limit: int) -> int:
    columns = [c for c in AuditEvent.__table__.columns.keys() if c not in ("prev_hash", "hash")]  # noqa: SIM118
    prev = GENESIS_HASH
    count = 0
    with Session(engine) as session:
        for event in session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq).limit(limit)):
            fields = {c: getattr(event, c) for c in columns}
            fields["recorded_at"] = event.recorded_at.isoformat(timespec="microseconds")
            fields["account_id"] = str(event.account_id) if event.account_id else None
            fields["session_id"] = str(event.session_id) if event.session_id else None
            if link(prev, fields) != event.hash:
                raise SystemExit(f"naive verifier disagrees at seq {event.seq}")
            prev = event.hash
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    args = parser.parse_args()
    with bench_database("audit_verify") as url, tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(url)
        signer = CheckpointSigner.create(Path(tmp) / "key.pem")
        store = FileCheckpointStore(Path(tmp) / "checkpoints.jsonl")
        checkpointer = Checkpointer(engine=engine, signer=signer, store=store, every=10**9, seconds=3600)
        started = time.perf_counter()
        fill(engine, checkpointer, args.events)
        print(f"filled {args.events} events in {time.perf_counter() - started:.1f} s")

        results: dict[str, float] = {}
        cpu_rates: dict[str, float] = {}
        for name, run in (
            ("read only (baseline)", lambda: read_only(engine)),
            ("carnet audit verify", lambda: _verify(engine, store, signer)),
            ("naive ORM verifier", lambda: naive(engine, min(args.events, 100_000))),
        ):
            best = best_cpu = 0.0
            for _ in range(3):
                t0, c0 = time.perf_counter(), time.process_time()
                n = run()
                best = max(best, n / (time.perf_counter() - t0))
                best_cpu = max(best_cpu, n / (time.process_time() - c0))
            results[name], cpu_rates[name] = best, best_cpu
            print(f"{name:24s} {best:10,.0f} events/s wall  {best_cpu:10,.0f} events per verifier CPU-second")
        base = results["read only (baseline)"]
        for name, rate in results.items():
            print(f"{name:24s} {rate / base:6.2f}x of reading alone (wall)")
        print(
            json.dumps(
                {
                    "events": args.events,
                    "at": dt.datetime.now(dt.UTC).isoformat(),
                    "load": os.getloadavg(),
                    "wall": results,
                    "cpu": cpu_rates,
                }
            )
        )
        engine.dispose()


def _verify(engine: sa.Engine, store: FileCheckpointStore, signer: CheckpointSigner) -> int:
    report = verify(engine, store=store, verifier=signer.verifier())
    if not report.ok:
        raise SystemExit(f"verify failed: {[p.describe() for p in report.problems[:3]]}")
    return report.events


if __name__ == "__main__":
    main()
