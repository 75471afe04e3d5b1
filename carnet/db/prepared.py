"""A Core SELECT run on PostgreSQL as a server-side prepared statement through psycopg itself.

For the statements every request runs (the session cookie's lookup): the SQL is compiled once
by SQLAlchemy, so it is the same statement, and psycopg prepares it on each connection, so
PostgreSQL neither parses nor plans it again. The rows come back as tuples with SQLAlchemy's
own result processing of each column (UTC datetimes, UUIDs), as Core would have returned them,
without Core's per-execution work. Anything but PostgreSQL runs the statement through Core.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select


@dataclass(frozen=True)
class _Compiled:
    sql: str
    defaults: dict[str, Any]
    processors: tuple[Callable[[Any], Any] | None, ...]


class PreparedSelect:
    """`statement` with its bound values named at run time; see the module."""

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def _for(self, connection: Connection) -> _Compiled:
        dialect = connection.dialect
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            processors = tuple(
                c.type._cached_result_processor(dialect, None) for c in self.statement.selected_columns
            )
            found = self._compiled[dialect.name] = _Compiled(str(compiled), dict(compiled.params), processors)
        return found

    def all(self, connection: Connection, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        if connection.dialect.name != "postgresql" or connection.dialect.driver != "psycopg":
            return connection.execute(self.statement, params).all()
        compiled = self._for(connection)
        raw: Any = connection.connection.driver_connection
        rows = raw.execute(compiled.sql, {**compiled.defaults, **params}, prepare=True).fetchall()
        processors = compiled.processors
        return [
            tuple(
                p(v) if p is not None and v is not None else v for p, v in zip(processors, row, strict=True)
            )
            for row in rows
        ]
