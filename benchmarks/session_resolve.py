"""Cost of resolving a session cookie on every request (the database is the truth, so a
revocation applies on every worker at once), against a one-row primary-key read in the same run.

    .venv/bin/python -m benchmarks.session_resolve [--samples 2000] [--postgres]

SQLite by default; with --postgres, a database created and dropped on CARNET_BENCH_POSTGRES_URL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from carnet.crypto.keys import FileKeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.identity import service, sessions, totp
from carnet.identity.authenticate import Authenticator, RequestContext
from carnet.identity.models import Account
from carnet.runtime import build_runtime
from carnet.settings import Environment, Settings

ADMIN_URL = os.environ.get(
    "CARNET_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _measure(fn: Callable[[], object], samples: int) -> list[float]:
    for _ in range(50):
        fn()
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(url: str, var: Path, samples: int) -> None:
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    FileKeyProvider.create(var / "keys.json")
    runtime = build_runtime(Settings(env=Environment.TEST, var_dir=var, database_url=url))
    with runtime.session_factory.begin() as session:
        account_id = service.create_account(
            session,
            username="bench",
            display_name="Bench",
            kind="staff",
            password="violet tram escapes quietly",
            totp_secret=totp.new_secret(),
        )
        issued = sessions.open_session(
            session,
            account_id=account_id,
            privileged=False,
            second_factor_method="totp",
            address="127.0.0.1",
            user_agent="bench",
        )
    auth = Authenticator.of(runtime)
    context = RequestContext(address="127.0.0.1", user_agent="bench")

    def baseline() -> object:
        with runtime.session_factory() as session:
            return session.get(Account, account_id)

    def resolve() -> object:
        return auth.resolve(token=issued.token, context=context)

    base = _measure(baseline, samples)
    cost = _measure(resolve, samples)
    print(f"{engine.dialect.name}: {samples} samples each")
    print(f"{'operation':<34} {'p50 µs':>8} {'p99 µs':>8}")
    for label, values in (("account read by id (baseline)", base), ("session cookie -> Actor", cost)):
        print(f"{label:<34} {statistics.median(values) * 1e6:8.0f} {_p(values, 0.99) * 1e6:8.0f}")
    print(f"ratio p50: {statistics.median(cost) / statistics.median(base):.2f}x")
    runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        if not args.postgres:
            run(f"sqlite:///{var / 'bench.db'}", var, args.samples)
            return
        name = f"carnet_bench_sessions_{uuid.uuid4().hex[:6]}"
        admin = make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
            run(url, var, args.samples)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
