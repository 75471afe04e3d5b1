"""PostgreSQL connections: pinged only after they sat idle, and replaced when the ping fails."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from carnet.db import engine as engines
from tests.conftest import POSTGRES_ADMIN_URL


def test_an_idle_connection_that_died_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engines.make_engine(POSTGRES_ADMIN_URL, pool_size=1, max_overflow=0)
    admin = engines.make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            first_pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        # The server drops the pooled connection while it sits idle (a restart, a firewall).
        with admin.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": first_pid}).scalar()
        monkeypatch.setattr(engines, "IDLE_PING_SECONDS", 0.0)
        with engine.connect() as conn:
            second_pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        assert second_pid != first_pid  # the failed ping made the pool open a new connection
    finally:
        engine.dispose()
        admin.dispose()


def test_a_connection_used_moments_ago_is_trusted_without_a_ping() -> None:
    """The trade-off, shown: no round trip for a busy connection, so a backend killed within the
    last IDLE_PING_SECONDS fails one request (which the gate turns into an audited error)."""
    engine = engines.make_engine(POSTGRES_ADMIN_URL, pool_size=1, max_overflow=0)
    admin = engines.make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(sa.exc.OperationalError), engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        with engine.connect() as conn:  # the pool noticed and replaced it
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
        admin.dispose()
