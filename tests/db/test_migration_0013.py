"""Migration 0013_readcpu: it goes up and comes back down to exactly what 0012 left, on both
databases (the audit link function, the exposures and care_relationships indexes)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine

from carnet.db import migrate
from carnet.db.engine import make_engine
from tests.conftest import POSTGRES_ADMIN_URL, _postgres_url

BEFORE = "0012_auditlanes"
THIS = "0013_readcpu"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database of its own (nothing migrated yet)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
        yield engine
        engine.dispose()
        return
    name = f"carnet_m_{uuid.uuid4().hex[:10]}"
    admin = make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(_postgres_url(name))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _downgrade(engine: Engine, revision: str) -> None:
    config = migrate.alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def _schema(engine: Engine) -> dict[str, str]:
    """What 0013 touches, as the database itself describes it."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.execute(
                sa.text(
                    "SELECT name, sql FROM sqlite_master"
                    " WHERE tbl_name IN ('exposures', 'care_relationships')"
                )
            ).all()
            return {str(name): str(sql) for name, sql in rows}
        rows = conn.execute(
            sa.text(
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE tablename IN ('exposures', 'care_relationships')"
                " UNION ALL SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p"
                " WHERE p.proname LIKE 'carnet%'"
            )
        ).all()
        return {str(name): str(text) for name, text in rows}


def test_upgrade_then_downgrade_restores_exactly_what_0012_left(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine, BEFORE)
    before = _schema(empty_engine)
    migrate.upgrade(empty_engine, THIS)
    after = _schema(empty_engine)
    assert "ix_exposures_patient" in before and "ix_exposures_patient" not in after
    assert "ix_exposures_actor_at" in after
    assert (
        "ix_care_relationships_practitioner_id" in before
        and "ix_care_relationships_practitioner_id" not in after
    )
    assert "ix_care_relationships_practitioner_patient" in after
    if empty_engine.dialect.name == "postgresql":
        link = "carnet_audit_link(bytea)"
        assert after[link] != before[link] and "carnet_audit_lane(0)" in after[link]
        assert after["carnet_audit_lane(integer)"] == before["carnet_audit_lane(integer)"]
    _downgrade(empty_engine, BEFORE)
    assert _schema(empty_engine) == before
    migrate.upgrade(empty_engine)
    assert _schema(empty_engine) == after
