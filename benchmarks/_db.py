"""Throwaway databases for benchmarks: a migrated PostgreSQL database, or a runtime on one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from carnet.crypto.keys import FileKeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Environment, Settings

ADMIN_URL = os.environ.get(
    "CARNET_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def empty_database(prefix: str) -> Iterator[str]:
    """An empty PostgreSQL database for this run (a benchmark's own schema), dropped
    afterwards; yields its URL."""
    name = f"carnet_bench_{prefix}_{os.getpid()}"
    admin = make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def bench_database(prefix: str) -> Iterator[str]:
    """A migrated PostgreSQL database for this run, dropped afterwards; yields its URL."""
    with empty_database(prefix) as url:
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url


@contextmanager
def bench_runtime(
    prefix: str, *, sqlite: bool = False, extra: sa.MetaData | None = None
) -> Iterator[Runtime]:
    """A runtime (test environment, fresh key file in a temporary var dir) on a migrated
    throwaway database: PostgreSQL by default, or SQLite. `extra` tables (a benchmark's own
    baseline) are created beside carnet's."""
    with tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        if sqlite:
            url = f"sqlite:///{var / 'bench.db'}"
            engine = make_engine(url)
            migrate.upgrade(engine)
            engine.dispose()
            yield from _runtime_on(url, var, extra)
        else:
            with bench_database(prefix) as url:
                yield from _runtime_on(url, var, extra)


def _runtime_on(url: str, var: Path, extra: sa.MetaData | None) -> Iterator[Runtime]:
    if extra is not None:
        engine = make_engine(url)
        extra.create_all(engine)
        engine.dispose()
    FileKeyProvider.create(var / "keys.json")
    runtime = build_runtime(Settings(env=Environment.TEST, var_dir=var, database_url=url))
    try:
        yield runtime
    finally:
        runtime.close()
