"""Test harness: every storage test runs on real SQLite and real PostgreSQL.

SQLite: a migrated template file copied per test. PostgreSQL: one database per test process
(`carnet_t_<pid>`), migrated once, emptied after each test. Both commit for real, so tests see
exactly what production sees (including transactions that roll back).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from carnet.crypto.keys import FileKeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.kernel import clock
from carnet.phi.schema import metadata
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Environment, Settings

POSTGRES_ADMIN_URL = os.environ.get(
    "CARNET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_url(database: str) -> str:
    return sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A migrated PostgreSQL database for this test process; dropped at the end."""
    name = f"carnet_t_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = _postgres_url(name)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _empty_postgres(engine: Engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: each test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "carnet.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_database")
    yield url
    engine = make_engine(url)
    _empty_postgres(engine)
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only, for tests whose subject is not the storage layer."""
    path = tmp_path / "carnet.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    var = tmp_path / "var"
    var.mkdir()
    FileKeyProvider.create(var / "keys.json")
    return Settings(env=Environment.TEST, var_dir=var, origin="http://localhost:8000")


def _runtime_for(url: str, settings: Settings) -> Iterator[Runtime]:
    settings = settings.model_copy(update={"database_url": url})
    runtime = build_runtime(settings)
    yield runtime
    runtime.close()


@pytest.fixture
def runtime(database_url: str, settings: Settings) -> Iterator[Runtime]:
    """A runtime on each database in turn (SQLite and PostgreSQL)."""
    yield from _runtime_for(database_url, settings)


@pytest.fixture
def sqlite_runtime(sqlite_url: str, settings: Settings) -> Iterator[Runtime]:
    yield from _runtime_for(sqlite_url, settings)


@pytest.fixture
def movable_clock() -> Iterator[clock.MovableClock]:
    previous = clock.current()
    movable = clock.MovableClock()
    clock.install(movable)
    yield movable
    clock.install(previous)
