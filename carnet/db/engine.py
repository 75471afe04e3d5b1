"""Engines and sessions for SQLite (embedded, default) and PostgreSQL (production)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from carnet.kernel.errors import ConfigurationError


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


# A connection idle this long is pinged before use. SQLAlchemy's pool_pre_ping pings on every
# checkout: a round trip per transaction, two per guarded request. A connection in constant use
# cannot have gone stale unnoticed (its last statement succeeded moments ago); one that sat
# idle may have been dropped by a restart or a firewall, so only that one is checked.
IDLE_PING_SECONDS = 10.0


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["carnet_checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    idle_since = record.info.get("carnet_checked_in")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return
    try:
        dbapi_connection.execute("SELECT 1")
        dbapi_connection.rollback()
    except Exception as exc:  # any failure: let the pool replace this connection and retry
        raise DisconnectionError("idle connection failed its ping") from exc


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; a malformed URL is a configuration error, not a traceback."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"the database URL is not valid: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        ping_idle = kwargs.pop("pool_pre_ping", None) is not False
        engine = create_engine(parsed, **kwargs)
        if ping_idle:
            event.listen(engine, "checkout", _ping_if_idle)
            event.listen(engine, "checkin", _note_checkin)
        return engine
    raise ConfigurationError(f"unsupported database: {parsed.get_backend_name()} (use sqlite or postgresql)")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
