"""Seeding speed on SQLite and PostgreSQL, as a ratio to a bare insert of the same patients.

    .venv/bin/python -m benchmarks.seed                     # 2,000 and 10,000 patients
    .venv/bin/python -m benchmarks.seed --patients 100000   # the 100k target (under 5 minutes)

Baseline, measured in the same run on the same database: inserting N patient rows whose
ciphertexts are random bytes (no generation, no encryption, no other tables). The per-row ratio
(patient-data stage time per row written, over the baseline's time per row) says what generating,
encrypting and auditing costs over the storage floor.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from carnet.crypto.keys import FileKeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.kernel import clock
from carnet.org.models import Facility
from carnet.patients.models import Patient
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Environment, Settings
from carnet.synth.seed import seed_hospital

POSTGRES_ADMIN_URL = os.environ.get(
    "CARNET_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


class StageTimer:
    """A SeedProgress that notes how long each stage took."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._current: str | None = None
        self._started = 0.0

    def stage(self, name: str, total: int) -> None:
        self._close()
        self._current, self._started = name, time.perf_counter()

    def advance(self, amount: int) -> None:
        return None

    def _close(self) -> None:
        if self._current is not None:
            self.stages[self._current] = time.perf_counter() - self._started
            self._current = None

    def finish(self) -> None:
        self._close()


@contextmanager
def database(kind: str, work: Path) -> Iterator[str]:
    if kind == "sqlite":
        path = work / f"bench-{uuid.uuid4().hex[:8]}.db"
        yield f"sqlite:///{path}"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    name = f"carnet_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def runtime_on(url: str, work: Path) -> Iterator[Runtime]:
    var = work / uuid.uuid4().hex[:8]
    var.mkdir()
    FileKeyProvider.create(var / "keys.json")
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    runtime = build_runtime(Settings(env=Environment.TEST, var_dir=var, database_url=url))
    try:
        yield runtime
    finally:
        runtime.close()


def bare_insert(runtime: Runtime, patients: int) -> float:
    """The storage floor: N patient rows with random ciphertexts, one transaction, batches of 2000."""
    facility_id = uuid.uuid4()
    now = clock.now()
    with runtime.session_factory.begin() as session:
        session.execute(
            sa.insert(Facility.__table__), [{"id": facility_id, "name": "F", "finess": "1", "city": "C"}]
        )
    started = time.perf_counter()
    with runtime.session_factory.begin() as session:
        for offset in range(0, patients, 2000):
            rows = [
                {
                    "id": uuid.uuid4(),
                    "facility_id": facility_id,
                    **{
                        f"{name}_ct": secrets.token_bytes(48)
                        for name in ("ins", "family", "given", "birth_date")
                    },
                    **{
                        f"{name}_bi": secrets.token_bytes(16)
                        for name in ("ins", "family", "given", "birth_date")
                    },
                    "gender": "female",
                    "version_id": 1,
                    "created_at": now,
                    "updated_at": now,
                }
                for _ in range(min(2000, patients - offset))
            ]
            session.execute(sa.insert(Patient.__table__), rows)
    return time.perf_counter() - started


def measure(kind: str, patients: int, work: Path) -> None:
    with database(kind, work) as url, runtime_on(url, work) as runtime:
        baseline = bare_insert(runtime, patients)
    with database(kind, work) as url, runtime_on(url, work) as runtime:
        timer = StageTimer()
        started = time.perf_counter()
        report = seed_hospital(runtime, patients=patients, seed=1, progress=timer)
        seconds = time.perf_counter() - started
        timer.finish()
    rows = sum(report.rows.values())
    stage = timer.stages
    per_row = (stage["patients"] / rows) / (baseline / patients)
    staff, data = stage["staff accounts"], stage["patients"]
    print(
        f"| {kind} | {patients:,} | {report.staff} | {rows:,} | {seconds:.1f} s | {staff:.1f} s "
        f"| {data:.1f} s | {rows / data:,.0f} | {baseline:.2f} s | {per_row:.1f}x |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    args = parser.parse_args()
    print(
        "| database | patients | staff | patient-data rows | seed, total | staff accounts (Argon2id) "
        "| patient data | rows/s | baseline: bare insert of N patient rows | per-row ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="carnet-bench-") as tmp:
        for patients in args.patients:
            for kind in args.databases:
                measure(kind, patients, Path(tmp))


if __name__ == "__main__":
    main()
