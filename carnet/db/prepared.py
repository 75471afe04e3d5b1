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
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]


class PreparedInsert:
    """An INSERT of every column of `table` (each row names them all), each value through its
    column type's own bind processing (UTC datetimes); see `insert_rows`."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.names = tuple(c.key for c in table.columns)
        self._compiled: dict[str, _CompiledInsert] = {}
        self._many: dict[int, str] = {}

    def _for(self, connection: Connection) -> _CompiledInsert:
        dialect = connection.dialect
        found = self._compiled.get(dialect.name)
        if found is None:
            insert(self.table).compile(dialect=dialect)  # resolves the foreign keys' column types
            processors = tuple(self.table.c[name].type._cached_bind_processor(dialect) for name in self.names)
            found = self._compiled[dialect.name] = _CompiledInsert(self.names, processors)
        return found

    def many(self, count: int) -> str:
        """`count` rows in one statement (PostgreSQL's own `$n` placeholders, sent as they are by
        psycopg's raw cursor: a statement this long is past psycopg's cache of converted
        queries, and converting `%s` placeholders again at each execution cost more than the
        rows' values): the values are typed by the columns they go to."""
        sql = self._many.get(count)
        if sql is None:
            width = len(self.names)
            rows = ", ".join(
                "(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(count)
            )
            columns = ", ".join(self.table.c[name].name for name in self.names)
            sql = self._many[count] = f"INSERT INTO {self.table.name} ({columns}) VALUES {rows}"  # noqa: S608
        return sql

    def values(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> list[Any]:
        """The rows' bound values, row after row, in the order of `many`."""
        compiled = self._for(connection)
        pairs = list(zip(compiled.names, compiled.processors, strict=True))
        out: list[Any] = []
        for row in rows:
            for name, processor in pairs:
                value = row[name]
                out.append(processor(value) if processor is not None and value is not None else value)
        return out


# PostgreSQL's protocol numbers a statement's parameters with 16 bits: a longer batch is split.
MAX_PARAMETERS = 65535


class DeferredRows:
    """The rows several calls of a group would insert (`insert_rows`), kept to be inserted
    together at the group's end: each table's rows, from every call, in ONE multi-row INSERT,
    so a group sends the same statements whatever its size (carnet.phi.grouped). The tables go
    in the order each was first given rows (a call gives a table its rows before the rows
    naming them: reports before their results), each table's rows in the order given."""

    def __init__(self) -> None:
        self._rows: dict[PreparedInsert, list[dict[str, Any]]] = {}

    def add(self, batches: Sequence[tuple[PreparedInsert, Sequence[dict[str, Any]]]]) -> None:
        for prepared, rows in batches:
            if rows:
                self._rows.setdefault(prepared, []).extend(rows)

    def holds(self, prepared: PreparedInsert, column: str, values: set[Any]) -> bool:
        """Whether a kept row of `prepared` has one of `values` in `column` (a later call about
        to read it from the database: the kept rows must be sent first)."""
        return any(row[column] in values for row in self._rows.get(prepared, ()))

    def send(self, connection: Connection, *, then: Sequence[tuple[str, dict[str, Any]]] = ()) -> list[Any]:
        """Insert every kept row (one pipeline on PostgreSQL) and keep none; `then` as
        `insert_rows` sends it, in the same pipeline."""
        batches, self._rows = list(self._rows.items()), {}
        return insert_rows(connection, batches, then=then)


def insert_rows(
    connection: Connection,
    batches: Sequence[tuple[PreparedInsert, Sequence[dict[str, Any]]]],
    *,
    then: Sequence[tuple[str, dict[str, Any]]] = (),
) -> list[Any]:
    """Insert each batch of rows (every column named), in order, in the connection's
    transaction. On PostgreSQL with psycopg: each batch one multi-row INSERT, all of them in one
    pipeline (sent before any answer is read; psycopg prepares them on the connection), not a
    Core execution and a round trip per row; its errors raised as SQLAlchemy's
    (IntegrityError...). Elsewhere, one Core executemany per batch.

    `then` (PostgreSQL only): statements (psycopg's `%(name)s` placeholders) sent after the rows
    in the same pipeline, each answering one row: their rows, in order (a group's audit
    appends, carnet.phi.grouped)."""
    batches = [(prepared, rows) for prepared, rows in batches if rows]
    if not batches and not then:
        return []
    if connection.dialect.name != "postgresql" or connection.dialect.driver != "psycopg":
        if then:
            raise ValueError("statements in the rows' pipeline are PostgreSQL's")
        for prepared, rows in batches:
            connection.execute(insert(prepared.table), list(rows))
        return []
    raw: Any = connection.connection.driver_connection
    sql = ""
    answering: list[Any] = []
    try:
        with raw.pipeline():
            with psycopg.RawCursor(raw) as cursor:
                for prepared, rows in batches:
                    step = MAX_PARAMETERS // len(prepared.names)
                    for start in range(0, len(rows), step):
                        chunk = rows[start : start + step]
                        sql = prepared.many(len(chunk))
                        cursor.execute(sql, prepared.values(connection, chunk))
            for sql, params in then:
                answering.append(raw.cursor())
                answering[-1].execute(sql, params, prepare=True)
        return [cursor.fetchone() for cursor in answering]
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, None, exc, psycopg.Error) from exc
