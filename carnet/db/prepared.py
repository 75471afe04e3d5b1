"""A Core SELECT run on PostgreSQL as a server-side prepared statement through psycopg itself;
Core INSERTs of plain rows sent together in one psycopg pipeline (`insert_rows`).

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

import psycopg
from sqlalchemy import Connection, Select, Table, insert
from sqlalchemy.exc import DBAPIError


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


@dataclass(frozen=True)
class _CompiledInsert:
    sql: str  # one row
    many: str  # every row at once (PostgreSQL: unnest of one array per column)
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]


class PreparedInsert:
    """An INSERT of every column of `table` (each row names them all), compiled once per
    dialect by SQLAlchemy, each value through its column type's own bind processing (UTC
    datetimes); see `insert_rows`."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.names = tuple(c.key for c in table.columns)
        self._compiled: dict[str, _CompiledInsert] = {}

    def _for(self, connection: Connection) -> _CompiledInsert:
        dialect = connection.dialect
        found = self._compiled.get(dialect.name)
        if found is None:
            sql = str(insert(self.table).compile(dialect=dialect, column_keys=list(self.names)))
            columns = [self.table.c[name] for name in self.names]
            processors = tuple(c.type._cached_bind_processor(dialect) for c in columns)
            # Several rows as one statement: a typed array per column, unnested into rows.
            arrays = ", ".join(f"%({c.key})s::{c.type.compile(dialect=dialect)}[]" for c in columns)
            many = (
                f"INSERT INTO {self.table.name} ({', '.join(c.name for c in columns)})"  # noqa: S608
                f" SELECT * FROM unnest({arrays})"
            )
            found = self._compiled[dialect.name] = _CompiledInsert(sql, many, self.names, processors)
        return found

    def columns(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
        """The rows as one list of bound values per column (for `many`)."""
        compiled = self._for(connection)
        out: dict[str, list[Any]] = {}
        for name, processor in zip(compiled.names, compiled.processors, strict=True):
            values = [row[name] for row in rows]
            if processor is not None:
                values = [processor(v) if v is not None else v for v in values]
            out[name] = values
        return out


def insert_rows(
    connection: Connection, batches: Sequence[tuple[PreparedInsert, Sequence[dict[str, Any]]]]
) -> None:
    """Insert each batch of rows (every column named), in order, in the connection's
    transaction. On PostgreSQL with psycopg: each batch one statement (a typed array per
    column, unnested), all of them in one pipeline (sent before any answer is read; psycopg
    prepares them on the connection), not a Core execution and a round trip per row; its errors
    raised as SQLAlchemy's (IntegrityError...). Elsewhere, one Core executemany per batch."""
    batches = [(prepared, rows) for prepared, rows in batches if rows]
    if not batches:
        return
    if connection.dialect.name != "postgresql" or connection.dialect.driver != "psycopg":
        for prepared, rows in batches:
            connection.execute(insert(prepared.table), list(rows))
        return
    raw: Any = connection.connection.driver_connection
    sql = ""
    try:
        with raw.pipeline(), raw.cursor() as cursor:
            for prepared, rows in batches:
                sql = prepared._for(connection).many
                cursor.execute(sql, prepared.columns(connection, rows))
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, None, exc, psycopg.Error) from exc
