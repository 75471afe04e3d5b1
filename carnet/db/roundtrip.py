"""One network round trip of server-side prepared statements, on psycopg's libpq layer.

psycopg's pipeline mode (`Connection.pipeline()` and a cursor per statement) costs, for each
statement, a cursor, the conversion of its query, psycopg's prepared-statement bookkeeping and
a share of its pipeline machinery (the BEGIN sent in a sync of its own, results fetched a
statement at a time): a quarter of the app's CPU on the guarded read. Here that work is done
once per statement or per connection, and a round trip does only what must be done: each
statement's parameters adapted by psycopg's own Transformer (its C implementation in
psycopg-binary), queued with libpq's PQsendQueryPrepared (`psycopg.pq`), one Sync, the results
read as they arrive and loaded by the same Transformer, each column then through its
SQLAlchemy result processor when the statement has them.

- The SQL is written with psycopg's `%(name)s` placeholders and rewritten once to PostgreSQL's
  `$n` (`Statement`); a round trip binds the values by name.
- A statement is prepared on a connection the first time it runs there, for the types of its
  parameters (as psycopg keys its own prepared statements), under a name never used before in
  this process; which names a connection holds is kept per connection and its server process
  (a reset connection is a new session), at most MAX_PREPARED of them. The server may forget
  them: psycopg deallocates every prepared statement of a connection after a rollback (or a
  ROLLBACK TO SAVEPOINT, a DROP...) once it prepared one of its own; DISCARD ALL. A round trip
  that finds a statement the server no longer knows is undone and sent again, each statement
  prepared anew: the transaction it began is rolled back; within a transaction, it took a
  savepoint first (one SAVEPOINT command more in the pipeline) and is rolled back to it, so
  what the transaction did before stays. The server forgets this module's statements all at
  once (DEALLOCATE ALL, DISCARD ALL) or one by one only as this module asks (MAX_PREPARED), so
  a round trip that ran one of them prepared before proves it knows them all; the next round
  trip in that transaction, when its caller says nothing else ran on the connection in between
  (`continues`), takes no savepoint: a SAVEPOINT makes the transaction's writes a
  subtransaction's, with an XID of its own, for a case that cannot arise.
- The transaction: when the connection is idle, BEGIN goes first (psycopg's own begin statement
  for the connection's settings); COMMIT goes last when asked. The transaction state is libpq's,
  which psycopg and SQLAlchemy read: their commit or rollback afterwards is as after their own.
- Errors: every value is adapted before anything is sent (a value psycopg cannot adapt leaves
  the connection as it was). A statement's error is raised as psycopg raises it (its class by
  SQLSTATE) once every result of the round trip is read and the pipeline left: the connection
  is then in a failed transaction, which the pool rolls back. Any other failure (the connection
  lost, an unexpected answer) closes the connection, so the pool discards it.
- Waiting releases the GIL (psycopg's own wait: poll(2) in C); the libpq calls made holding it
  do not block (psycopg's connections are non-blocking, and a result is taken only once libpq
  holds it whole).
"""

from __future__ import annotations

import itertools
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
from psycopg import pq
from psycopg.abc import PQGen
from psycopg.abc import Transformer as TransformerType
from psycopg.adapt import PyFormat, Transformer
from psycopg.errors import error_from_result
from psycopg.waiting import Ready, Wait

_IDLE = pq.TransactionStatus.IDLE
_INTRANS = pq.TransactionStatus.INTRANS
_COMMAND_OK = pq.ExecStatus.COMMAND_OK
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_FATAL = pq.ExecStatus.FATAL_ERROR
_BAD = pq.ConnStatus.BAD
_TEXT = pq.Format.TEXT

_PLACEHOLDERS = re.compile(r"%%|%\(([^)]+)\)s|%")

Processor = Callable[[Any], Any] | None


class Statement:
    """A statement with `%(name)s` placeholders, as PostgreSQL's `$n` (each name once, in order
    of first use: `names`); `defaults` give the values a round trip does not bind;
    `processors`, one per column or none, convert each column's value as SQLAlchemy's result
    processing would. `columns` (the result's column names) is known after its first run."""

    __slots__ = (
        "__weakref__",
        "binary",
        "columns",
        "defaults",
        "formats",
        "get",
        "names",
        "processors",
        "sql",
    )

    def __init__(
        self,
        sql: str,
        *,
        defaults: dict[str, Any] | None = None,
        processors: Sequence[Processor] = (),
        binary: bool = False,
    ) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if match.group(0) == "%%":
                return "%"
            if name is None:
                raise ValueError(f"a placeholder other than %(name)s in {sql!r}")
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.sql = _PLACEHOLDERS.sub(number, sql).encode()
        self.names = tuple(names)
        self.defaults = dict(defaults or {})
        # (column index, processor) of each column that has one.
        self.processors = tuple((i, p) for i, p in enumerate(processors) if p is not None)
        self.formats = [PyFormat.AUTO] * len(names)
        # The values in order from a dict by name, without a Python call.
        self.get: Callable[[dict[str, Any]], Any] | None = operator.itemgetter(*names) if names else None
        self.columns: tuple[str, ...] | None = None
        # Rows in PostgreSQL's binary format: nothing to format on the server (a timestamp, a
        # bytea's hex) nor to parse here.
        self.binary = pq.Format.BINARY if binary else pq.Format.TEXT

    def values(self, params: dict[str, Any]) -> Sequence[Any]:
        """The statement's parameters in order, from `params`, else from its defaults."""
        get = self.get
        if get is None:
            return ()
        found = get({**self.defaults, **params} if self.defaults else params)
        return found if len(self.names) > 1 else (found,)


class _State:
    """What a connection holds: the statements prepared on it (by statement and parameter
    types), for its server process; psycopg's Transformer of its adapters."""

    __slots__ = ("backend", "begin", "known", "prepared", "transformer")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.backend = conn.pgconn.backend_pid
        self.prepared: dict[tuple[Statement, Any], bytes] = {}
        self.transformer = Transformer(conn)
        self.begin = _begin_statement(conn)
        # The last round trip proved the server knows every statement in `prepared`, and left
        # its transaction open.
        self.known = False


_names = itertools.count(1)
# At most this many statements prepared per connection (psycopg keeps 100 of its own).
MAX_PREPARED = 200


def _begin_statement(conn: psycopg.Connection[Any]) -> bytes:
    """The BEGIN psycopg sends for the connection's transaction settings."""
    parts = [b"BEGIN"]
    if conn.isolation_level is not None:
        level = psycopg.IsolationLevel(conn.isolation_level).name.replace("_", " ")
        parts += [b"ISOLATION LEVEL", level.encode()]
    if conn.read_only is not None:
        parts.append(b"READ ONLY" if conn.read_only else b"READ WRITE")
    if conn.deferrable is not None:
        parts.append(b"DEFERRABLE" if conn.deferrable else b"NOT DEFERRABLE")
    return b" ".join(parts)


def _state(conn: psycopg.Connection[Any]) -> _State:
    # Kept on the connection itself (an attribute of carnet's name): a lookup without a call.
    state: _State | None = getattr(conn, _STATE_ATTRIBUTE, None)
    if state is None or state.backend != conn.pgconn.backend_pid:
        state = _State(conn)
        setattr(conn, _STATE_ATTRIBUTE, state)
    return state


_STATE_ATTRIBUTE = "_carnet_round_trip_state"


def text_array(values: Iterable[Any]) -> str:
    """An array parameter of values whose text form needs no quoting (UUIDs, carnet's role
    names), as PostgreSQL's array literal: the statement casts it or compares with it. psycopg
    adapts a list in Python, element after element; this is one join."""
    return "{" + ",".join(map(str, values)) + "}"


def prepared_on(conn: psycopg.Connection[Any]) -> int:
    """How many statements this module prepared on `conn` (tests)."""
    state: _State | None = getattr(conn, _STATE_ATTRIBUTE, None)
    return len(state.prepared) if state is not None else 0


def run(
    conn: psycopg.Connection[Any],
    calls: Sequence[tuple[Statement, dict[str, Any]]],
    *,
    commit: bool = False,
    continues: bool = False,
) -> list[list[tuple[Any, ...]]]:
    """Send each statement with its values (by name: `Statement.values`), BEGIN first if the
    connection is idle (and not in autocommit: then the statements are one implicit
    transaction), COMMIT last if `commit`, in one round trip; each statement's rows, in order.
    `continues`: the caller vouches that nothing but this module's round trips ran on the
    connection since its last one (then no savepoint is taken where that one proved the server
    knows every prepared statement). See the module for what an error leaves."""
    state = getattr(conn, _STATE_ATTRIBUTE, None)
    if state is None or state.backend != conn.pgconn.backend_pid:
        state = _state(conn)
    transformer = state.transformer
    if conn.autocommit and commit:
        raise psycopg.ProgrammingError("nothing to commit: autocommit is on")
    queued = []
    for statement, params in calls:  # every value adapted before anything is sent
        get = statement.get  # `Statement.values`, inline
        if get is None:
            values: Sequence[Any] = ()
        else:
            values = get({**statement.defaults, **params} if statement.defaults else params)
            if len(statement.formats) == 1:
                values = (values,)
        dumped = transformer.dump_sequence(values, statement.formats)
        queued.append(((statement, transformer.types), dumped, list(transformer.formats or ())))
    try:
        return _send(conn, state, queued, commit, continues=continues)
    except _Forgotten as forgotten:
        within = forgotten.within
    # The server had forgotten a statement (psycopg deallocated every prepared statement, after
    # a rollback, or DISCARD ALL): what the round trip sent is undone, by rolling back the
    # transaction it began or to the savepoint it took first, and it is sent again, each
    # statement prepared anew.
    if within:
        conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", prepare=False)
    else:
        conn.rollback()
    return _send(conn, state, queued, commit, retry=False)


# Taken first by a round trip within a transaction, so that a statement the server forgot can
# be undone alone and sent again (a statement's error otherwise fails the transaction).
_SAVEPOINT = "carnet_round_trip"


class _Forgotten(Exception):
    """The server no longer knew a statement; nothing the round trip sent is left once rolled
    back (to its savepoint if `within` a transaction it did not begin)."""

    def __init__(self, within: bool) -> None:
        super().__init__()
        self.within = within


def _send(
    conn: psycopg.Connection[Any],
    state: _State,
    queued: list[Any],
    commit: bool,
    *,
    retry: bool = True,
    continues: bool = False,
) -> list[list[tuple[Any, ...]]]:
    transformer = state.transformer
    pgconn = conn.pgconn
    prepared = state.prepared
    fresh = []
    statements = []  # each statement, and how many results of housekeeping come before its own
    # A statement prepared before this round trip runs in it: if it answers, the server knew
    # them all (it forgets them all at once).
    runs_older = False
    with conn.lock:
        known, state.known = state.known, False
        begin = not conn.autocommit and pgconn.transaction_status == _IDLE
        savepoint = retry and pgconn.transaction_status == _INTRANS and not (continues and known)
        try:
            pgconn.enter_pipeline_mode()
            if begin:
                pgconn.send_query_params(state.begin, None)
            if savepoint:
                pgconn.send_query_params(b"SAVEPOINT " + _SAVEPOINT.encode(), None)
            for key, dumped, formats in queued:
                name = prepared.get(key)
                before = 0
                if name is None:
                    if len(prepared) >= MAX_PREPARED:  # the oldest makes room, as psycopg's own do
                        oldest = prepared.pop(next(iter(prepared)))
                        pgconn.send_query_params(b"DEALLOCATE " + oldest, None)
                        before += 1
                    name = prepared[key] = b"carnet_%d" % next(_names)
                    fresh.append(key)
                    pgconn.send_prepare(name, key[0].sql, param_types=key[1])
                    before += 1
                elif key not in fresh:
                    runs_older = True
                statements.append((key[0], before, key if before else None))
                pgconn.send_query_prepared(name, dumped, param_formats=formats, result_format=key[0].binary)
            if commit:
                pgconn.send_query_params(b"COMMIT", None)
            pgconn.pipeline_sync()
            results = conn.wait(_communicate(pgconn))
            pgconn.exit_pipeline_mode()
        except BaseException:
            for key in fresh:
                prepared.pop(key, None)
            conn.close()  # in an unknown state: the pool discards it
            raise
    lead = begin + savepoint
    failed = None
    for result in results:
        if result.status == _FATAL:
            failed = result
            break
    if failed is not None:
        # A statement prepared before the error is kept (prepared statements outlive a rollback);
        # one whose prepare did not run is prepared again, under a new name.
        position = lead
        for _statement, before, key in statements:
            position += before
            if key is not None and results[position - 1].status != _COMMAND_OK:
                prepared.pop(key, None)
            position += 1
        error = error_from_result(failed, encoding=conn.info.encoding)
        if isinstance(error, psycopg.errors.InvalidSqlStatementName):
            prepared.clear()  # the server forgot them: prepared again next time
            if retry and (begin or savepoint or conn.autocommit):
                raise _Forgotten(savepoint) from error
        raise error
    expected = lead + commit
    for _statement, before, _key in statements:
        expected += before + 1
    if len(results) != expected:
        conn.close()
        raise psycopg.InternalError(f"{len(results)} results for {len(statements)} statements")
    out: list[list[tuple[Any, ...]]] = []
    position = lead
    for statement, before, _key in statements:
        position += before
        out.append(_rows(transformer, statement, results[position]))
        position += 1
    state.known = pgconn.transaction_status == _INTRANS and (runs_older or len(fresh) == len(prepared))
    return out


def _rows(
    transformer: TransformerType, statement: Statement, result: pq.abc.PGresult
) -> list[tuple[Any, ...]]:
    """A statement's rows, loaded by psycopg's Transformer, through its result processors."""
    if statement.columns is None:
        statement.columns = tuple((result.fname(i) or b"").decode() for i in range(result.nfields))
    count = result.ntuples
    if not count:
        return []
    transformer.set_pgresult(result, format=statement.binary)
    rows: list[tuple[Any, ...]] = transformer.load_rows(0, count, tuple)
    processors = statement.processors
    if not processors:
        return rows
    out = []
    for row in rows:
        values = list(row)
        for i, processor in processors:
            if values[i] is not None:
                values[i] = processor(values[i])
        out.append(tuple(values))
    return out


def _communicate(pgconn: pq.abc.PGconn) -> PQGen[list[pq.abc.PGresult]]:
    """Send what libpq holds, then read every result up to the pipeline's sync."""
    while pgconn.flush():
        ready = yield Wait.RW
        if ready and ready & Ready.R:
            pgconn.consume_input()
    results: list[pq.abc.PGresult] = []
    ended = False  # the previous call answered no result: the end of one command's results
    while True:
        while pgconn.is_busy():
            if (yield Wait.R):
                pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            if ended or pgconn.status == _BAD:
                raise psycopg.OperationalError("the connection ended before the pipeline's sync")
            ended = True
            continue
        ended = False
        if result.status == _SYNC:
            return results
        results.append(result)
