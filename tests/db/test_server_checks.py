"""The PostgreSQL settings `carnet serve` warns about at start (carnet.db.server_checks): each
named when off, nothing when on, nothing on SQLite; read from the real server's pg_settings."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from carnet.db.engine import make_engine
from carnet.db.server_checks import server_warnings, warnings_for

CASES = [
    ({"autovacuum": "on", "track_counts": "on"}, []),
    ({"autovacuum": "off", "track_counts": "on"}, ["autovacuum"]),
    ({"autovacuum": "on", "track_counts": "off"}, ["track_counts"]),
    ({"autovacuum": "off", "track_counts": "off"}, ["autovacuum", "track_counts"]),
    ({}, []),  # a server that does not report them: nothing claimed
]


@pytest.mark.parametrize(("settings", "named"), CASES)
def test_warnings_for(settings: dict[str, str], named: list[str]) -> None:
    warnings = warnings_for(settings)
    assert [w.split(" runs with ")[1].split(" off")[0] for w in warnings] == named
    assert all("vacuumdb --all --analyze-in-stages" in w for w in warnings)


@pytest.mark.postgres
def test_the_servers_own_settings(postgres_database: str) -> None:
    engine = make_engine(postgres_database)
    try:
        with engine.connect() as conn:
            actual = {
                name: setting
                for name, setting in conn.execute(
                    sa.text(
                        "SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', 'track_counts')"
                    )
                )
            }
        assert set(actual) == {"autovacuum", "track_counts"}
        assert server_warnings(engine) == warnings_for(actual)
    finally:
        engine.dispose()


def test_nothing_on_sqlite(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        assert server_warnings(engine) == []
    finally:
        engine.dispose()
