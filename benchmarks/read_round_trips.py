"""What one guarded FHIR Patient read sends to PostgreSQL and Redis, counted, not timed.

Throughput on two cores is bounded by CPU per read, and every statement costs CPU on both sides
(the driver and SQLAlchemy in the app, parse/plan/execute in a backend). This counts, per read:

- the statements PostgreSQL ran, from its own log (`log_statement = all` set on a scratch
  database only), so BEGIN, COMMIT and pool pings are seen too;
- the Redis commands and scripts, from `INFO commandstats` (commands run inside a script are
  counted by Redis as well, under their own names).

    .venv/bin/python -m benchmarks.read_round_trips [--reads 100]

Needs read access to the PostgreSQL server log (CARNET_BENCH_POSTGRES_LOG, default the Debian
path) and empties Redis database 12.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time
import uuid
import warnings
from contextlib import nullcontext
from pathlib import Path

import redis
import sqlalchemy as sa

from benchmarks.fhir_load import ADMIN_URL, ORIGIN, make_clinicians, seed_patients
from carnet.crypto.keys import FileKeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.phi import fastpath
from carnet.runtime import build_runtime
from carnet.settings import Environment, Settings
from tests.factories import make_facility

LOG = os.environ.get("CARNET_BENCH_POSTGRES_LOG", "/var/log/postgresql/postgresql-15-main.log")
REDIS_URL = "redis://127.0.0.1:6379/12"


def _statement_kind(line: str) -> str:
    body = line.split("statement:", 1)[1] if "statement:" in line else line.split("execute", 1)[1]
    if ":" in body.split()[0]:  # "<unnamed>:" or "_pg3_4:" (a prepared statement's name)
        body = body.split(":", 1)[1]
    return " ".join(body.split()[:4])[:70]


def run(reads: int) -> str:
    from fastapi.testclient import TestClient

    from carnet.app import create_app

    name = f"carnet_roundtrips_{uuid.uuid4().hex[:8]}"
    admin = make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    store = redis.Redis.from_url(REDIS_URL)
    lines: list[str] = []
    try:
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        with tempfile.TemporaryDirectory() as tmp:
            var = Path(tmp)
            FileKeyProvider.create(var / "keys.json")
            settings = Settings(
                env=Environment.TEST, var_dir=var, database_url=url, origin=ORIGIN, redis_url=REDIS_URL
            )
            runtime = build_runtime(settings)
            store.flushdb()
            facility = make_facility(runtime)
            ids, _ = seed_patients(runtime, facility, 0, 300)
            clinicians = make_clinicians(runtime, facility, ids, 5, history=[])
            pairs = [(c.headers, f"/fhir/Patient/{p}") for c in clinicians for p in c.patients]
            with TestClient(create_app(runtime), base_url="http://127.0.0.1") as client:
                for headers, path in pairs[:20]:  # warm: pools, prepared statements, caches
                    client.get(path, headers=headers)
                with admin.connect() as conn:
                    conn.execute(sa.text(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'"))
                runtime.engine.dispose()  # new connections take the setting
                for headers, path in pairs[:20]:
                    client.get(path, headers=headers)
                for label, mode in (("general path", fastpath.general_only), ("fast path", nullcontext)):
                    measured = pairs[20 : 20 + reads]
                    log_start = os.path.getsize(LOG)
                    before = {k: v["calls"] for k, v in store.info("commandstats").items()}
                    with mode():
                        for headers, path in measured:
                            assert client.get(path, headers=headers).status_code == 200
                    after = {k: v["calls"] for k, v in store.info("commandstats").items()}
                    time.sleep(0.5)  # the server flushes its log
                    with open(LOG, errors="replace") as handle:
                        handle.seek(log_start)
                        logged = [ln for ln in handle if "LOG:  statement:" in ln or "LOG:  execute" in ln]
                    _report(lines, label, logged, len(measured), before, after)
            runtime.close()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return "\n".join(lines)


def _report(
    lines: list[str], label: str, logged: list[str], n: int, before: dict[str, int], after: dict[str, int]
) -> None:
    kinds = collections.Counter(_statement_kind(ln) for ln in logged)
    lines.append(f"{label}: PostgreSQL statements per read: {len(logged) / n:.2f}")
    lines.extend(f"  {count / n:5.2f}  {kind}" for kind, count in kinds.most_common())
    calls = {
        k.removeprefix("cmdstat_"): (v - before.get(k, 0)) / n
        for k, v in after.items()
        if v != before.get(k, 0) and k != "cmdstat_info"
    }
    per_command = ", ".join(f"{k} {v:.2f}" for k, v in sorted(calls.items()))
    lines.append(f"{label}: Redis commands per read: {per_command}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reads", type=int, default=100)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(run(args.reads))


if __name__ == "__main__":
    main()
