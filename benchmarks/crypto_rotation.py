"""What `carnet keys rotate --reencrypt` costs a running service, on PostgreSQL.

A worker reads patients by id and decrypts them, first with nothing else running (baseline), then
while the rotation re-encrypts every value as its own process; reported as ratios of the two.
Also: re-encryption throughput against the seeding throughput (encrypt + insert) of the same run,
and the time `keys status` takes to count values per data key.

    .venv/bin/python -m benchmarks.crypto_rotation [--patients 100000] [--batch-size 200] [--pause-ms 0]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from benchmarks._db import bench_runtime
from benchmarks.crypto_cost import FIELDS, _people, _seed, plain_metadata
from carnet.patients.models import Patient
from carnet.phi.rekey import count_ciphertexts
from carnet.runtime import Runtime
from carnet.settings import Settings

IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "15"))


def _reader(
    runtime: Runtime,
    ids: list[uuid.UUID],
    *,
    until: float | None = None,
    proc: subprocess.Popen[str] | None = None,
) -> list[float]:
    """Read random patients (7 fields decrypted) until the deadline or the process ends."""
    pt = Patient.__table__
    stmt = sa.select(pt.c.id, *(pt.c[f"{f}_ct"] for f in FIELDS)).where(pt.c.id == sa.bindparam("pid"))
    rng = random.Random(3)
    out: list[float] = []
    with runtime.engine.connect() as conn:
        while True:
            if until is not None and time.perf_counter() >= until:
                return out
            if proc is not None and proc.poll() is not None:
                return out
            t0 = time.perf_counter()
            row = conn.execute(stmt, {"pid": rng.choice(ids)}).one()
            conn.rollback()
            for name, blob in zip(FIELDS, row[1:], strict=True):
                runtime.keyring.decrypt(blob, table="patients", column=name, row_id=row[0])
            out.append(time.perf_counter() - t0)


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run(patients: int, batch_size: int, pause_ms: int) -> str:
    with bench_runtime("rotation", extra=plain_metadata) as runtime:
        settings = runtime.settings
        return _measure(runtime, settings, patients, batch_size, pause_ms, str(settings.var_dir))


def _measure(
    runtime: Runtime, settings: Settings, patients: int, batch_size: int, pause_ms: int, tmp: str
) -> str:
    people = _people(patients, seed=43)
    t0 = time.perf_counter()
    _facility, ids = _seed(runtime, people)
    seed_seconds = time.perf_counter() - t0
    values = patients * len(FIELDS)

    t0 = time.perf_counter()
    count_ciphertexts(runtime, operator="benchmark")
    status_seconds = time.perf_counter() - t0

    _reader(runtime, ids, until=time.perf_counter() + 2)  # warm up
    idle = _reader(runtime, ids, until=time.perf_counter() + IDLE_SECONDS)

    env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}
    env.update(
        CARNET_ENV="test",
        CARNET_VAR_DIR=tmp,
        CARNET_DATABASE_URL=settings.resolved_database_url,
        CARNET_KEY_FILE=str(settings.resolved_key_file),
    )
    carnet = Path(sys.executable).with_name("carnet")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            str(carnet),
            "keys",
            "rotate",
            "--reencrypt",
            "--batch-size",
            str(batch_size),
            "--pause-ms",
            str(pause_ms),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    during = _reader(runtime, ids, proc=proc)
    stdout, stderr = proc.communicate()
    rotate_seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"rotation failed ({proc.returncode}): {stderr.strip()}")
    # Idle again after: the baseline brackets the rotation, so load drifting on a shared machine
    # does not pass for the rotation's cost.
    idle += _reader(runtime, ids, until=time.perf_counter() + IDLE_SECONDS)
    done = [line for line in stdout.splitlines() if "re-encrypted" in line]

    lines = [
        f"PostgreSQL, {patients:,} patients ({values:,} encrypted values), batches of {batch_size} rows,"
        f" {pause_ms} ms pause between batches.",
        "",
        "| reads of one patient (7 fields decrypted) | p50 | p99 | reads |",
        "|---|---|---|---|",
        f"| idle ({IDLE_SECONDS:.0f} s before + {IDLE_SECONDS:.0f} s after)"
        f" | {statistics.median(idle) * 1e6:,.0f} µs"
        f" | {_p(idle, 99) * 1e6:,.0f} µs | {len(idle):,} |",
        f"| while `keys rotate --reencrypt` runs | {statistics.median(during) * 1e6:,.0f} µs"
        f" | {_p(during, 99) * 1e6:,.0f} µs | {len(during):,} |",
        "",
        "- read latency during rotation / idle:"
        f" {statistics.median(during) / statistics.median(idle):.2f}x (p50),"
        f" {_p(during, 99) / _p(idle, 99):.2f}x (p99); no read failed",
        f"- rotation with re-encryption: {rotate_seconds:.0f} s ({values / rotate_seconds:,.0f} values/s),"
        f" {rotate_seconds / seed_seconds:.2f}x the time to seed the same patients ({seed_seconds:.0f} s)",
        f"- counting values per data key (`keys status`): {status_seconds:.1f} s",
        f"- rotation said: {done[0] if done else stdout.strip()}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--pause-ms", type=int, default=0)
    args = parser.parse_args()
    if args.patients < 100 or not 1 <= args.batch_size <= 2000:
        parser.error("use at least 100 patients and a batch size between 1 and 2000")
    print(run(args.patients, args.batch_size, args.pause_ms))


if __name__ == "__main__":
    main()
