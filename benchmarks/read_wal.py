"""WAL and PostgreSQL CPU per guarded read, right after a checkpoint and in the steady state.

Serves `fhir_load`'s read load (64 physicians reading the patients in their care, 2 workers)
and, around each wrk round, reads `pg_stat_wal` (records, full-page images, bytes: the whole
cluster's, so run it alone) and the CPU of the app and of this database's backends. Rounds
alternate between a forced `CHECKPOINT` first (after which the first change to each page writes
the whole page to the WAL) and none, to see what checkpoints cost a read:

    .venv/bin/python -m benchmarks.read_wal [--patients 1000] [--seconds 8]

Needs a superuser on CARNET_BENCH_POSTGRES_URL's server (CHECKPOINT). Creates and drops its own
database; empties Redis database CARNET_BENCH_REDIS_URL, as fhir_load does.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import uuid
from pathlib import Path

import redis
import sqlalchemy as sa

from benchmarks._db import bench_database
from benchmarks.fhir_load import (
    ADMIN_URL,
    REDIS_URL,
    Pair,
    analyze,
    baseline_accounts,
    cpu_seconds,
    make_clinicians,
    seed_patients,
    start_server,
    wrk_load,
)
from carnet.crypto.keys import FileKeyProvider
from carnet.db.engine import make_engine
from carnet.runtime import build_runtime
from carnet.settings import Environment, Settings
from tests.factories import make_facility

_ROUNDS = ("after a CHECKPOINT", "steady", "steady", "after a CHECKPOINT")
_VACUUMED = ("steady", "steady", "after a VACUUM", "steady", "after a VACUUM")


def _wal(engine: sa.Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")).one()
    return int(row[0]), int(row[1]), int(row[2])


def _checkpoint(engine: sa.Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("CHECKPOINT"))


def _vacuum(url: str) -> None:
    engine = make_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM"))
    engine.dispose()


def _dead_tuples(url: str) -> list[str]:
    """The tables with the most dead row versions (this machine's PostgreSQL runs without
    autovacuum): what a read may have to step over."""
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT relname, n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "ORDER BY n_dead_tup DESC LIMIT 6"
            )
        ).all()
    engine.dispose()
    return [f"| {r[0]} | {r[1]:,} | {r[2]:,} | {r[3]:,} | {r[4]:,} |" for r in rows]


def run(patients: int, seconds: float, vacuum: bool = False) -> str:
    lines = [
        "| round | reads/s | WAL records / full-page images / bytes per read "
        "| PostgreSQL CPU per read | app CPU per read |",
        "|---|---|---|---|---|",
    ]
    admin = make_engine(ADMIN_URL)
    load_start = os.getloadavg()[0]
    with bench_database("readwal") as url, tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        FileKeyProvider.create(var / "keys.json")
        runtime = build_runtime(
            Settings(env=Environment.TEST, var_dir=var, database_url=url, origin="http://127.0.0.1")
        )
        try:
            facility = make_facility(runtime)
            ids, _ = seed_patients(runtime, facility, 0, patients)
            history: list[tuple[uuid.UUID, list[uuid.UUID]]] = []
            clinicians = make_clinicians(runtime, facility, ids, min(64, len(ids) // 30), history=history)
            baseline_accounts(runtime, history)
            analyze(runtime)
            redis.Redis.from_url(REDIS_URL).flushdb()
            pairs: list[Pair] = [(c.headers, f"/fhir/Patient/{p}") for c in clinicians for p in c.patients]
            random.Random(1).shuffle(pairs)
            server, base = start_server(url, var, 2)
            try:
                errors = wrk_load(base, "warm-up", 64, 5, pairs).errors
                analyze(runtime)  # the trail the warm-up wrote, as autovacuum would (fhir_load.analyze)
                for label in _VACUUMED if vacuum else _ROUNDS:
                    if "CHECKPOINT" in label:
                        _checkpoint(admin)
                    if "VACUUM" in label:
                        _vacuum(url)
                    wal_before, cpu_before = _wal(admin), cpu_seconds(server.pid, url)
                    result = wrk_load(base, label, 64, seconds, pairs)
                    wal_after, cpu_after = _wal(admin), cpu_seconds(server.pid, url)
                    errors += result.errors
                    n = max(1, result.requests)
                    records, images, size = (a - b for a, b in zip(wal_after, wal_before, strict=True))
                    lines.append(
                        f"| {label} | {result.throughput:,.0f} | {records / n:.1f} / {images / n:.2f} / "
                        f"{size / n / 1024:.1f} kB | {(cpu_after[1] - cpu_before[1]) * 1000 / n:.2f} ms | "
                        f"{(cpu_after[0] - cpu_before[0]) * 1000 / n:.2f} ms |"
                    )
                lines += [
                    "",
                    "| table | live rows | dead rows | updates | HOT updates |",
                    "|---|---|---|---|---|",
                ]
                lines += _dead_tuples(url)
            finally:
                server.terminate()
                server.wait(timeout=30)
        finally:
            runtime.close()
    admin.dispose()
    if errors:
        raise SystemExit(f"{errors} measured requests answered an error")
    lines.insert(0, f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--vacuum", action="store_true", help="VACUUM between rounds instead of CHECKPOINTs")
    args = parser.parse_args()
    print(run(args.patients, args.seconds, args.vacuum))


if __name__ == "__main__":
    main()
