"""One round trip of prepared statements on psycopg's libpq layer (carnet.db.roundtrip): the rows
as psycopg loads them, the transaction as psycopg and SQLAlchemy see it, statements prepared
once per connection and again when the server forgot them, every failure leaving the
connection to be rolled back or discarded by the pool, and no GIL held while waiting."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import pq

from carnet.db import roundtrip
from carnet.db.engine import make_engine
from tests.conftest import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.postgres

LIBPQ_URL = sa.engine.make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql").render_as_string(False)
IDLE, INTRANS, INERROR = (
    pq.TransactionStatus.IDLE,
    pq.TransactionStatus.INTRANS,
    pq.TransactionStatus.INERROR,
)

ECHO = roundtrip.Statement(
    "SELECT %(id)s::uuid AS id, %(name)s || '!' AS name, %(at)s::timestamptz AS at, 7 %% 4 AS rest,"
    " %(id)s::uuid = %(id)s::uuid AS same"
)
SERIES = roundtrip.Statement("SELECT n FROM generate_series(1, %(n)s) AS n", defaults={"n": 2})
FAILING = roundtrip.Statement("SELECT 1 / %(zero)s AS never")
IN_ARRAY = roundtrip.Statement("SELECT %(one)s::uuid = ANY(%(ids)s::uuid[]) AS found")


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(LIBPQ_URL) as connection:
        yield connection


def _server_names(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
    conn.commit()
    return {name for (name,) in rows}


def test_rows_transaction_and_statements_prepared_once(conn: psycopg.Connection[Any]) -> None:
    one = uuid.uuid4()
    at = dt.datetime(2026, 12, 7, 9, 30, tzinfo=dt.UTC)
    answers = roundtrip.run(conn, [(ECHO, {"id": one, "name": "x", "at": at}), (SERIES, {"n": 3})])
    assert answers == [[(one, "x!", at, 3, True)], [(1,), (2,), (3,)]]
    assert ECHO.columns == ("id", "name", "at", "rest", "same")
    assert conn.info.transaction_status == INTRANS  # BEGIN went first: the transaction is open
    # Within the transaction: no second BEGIN; COMMIT last; the defaults fill what is not given.
    assert roundtrip.run(conn, [(SERIES, {})], commit=True) == [[(1,), (2,)]]
    assert conn.info.transaction_status == IDLE
    assert roundtrip.prepared_on(conn) == 2
    names = _server_names(conn)
    assert len([n for n in names if n.startswith("carnet_")]) == 2
    # Again: nothing prepared anew.
    roundtrip.run(conn, [(SERIES, {"n": 1}), (ECHO, {"id": one, "name": "y", "at": at})], commit=True)
    assert roundtrip.prepared_on(conn) == 2
    # Values of other types are a statement prepared for those types, as psycopg keys its own.
    assert roundtrip.run(conn, [(ECHO, {"id": None, "name": None, "at": None})], commit=True) == [
        [(None, None, None, 3, None)]
    ]
    assert roundtrip.prepared_on(conn) == 3


def test_text_array(conn: psycopg.Connection[Any]) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    found = roundtrip.run(conn, [(IN_ARRAY, {"one": ids[1], "ids": roundtrip.text_array(ids)})])
    missing = roundtrip.run(conn, [(IN_ARRAY, {"one": uuid.uuid4(), "ids": roundtrip.text_array([])})])
    assert (found, missing) == ([[(True,)]], [[(False,)]])


def test_a_statement_error_is_psycopgs_and_leaves_a_failed_transaction(conn: psycopg.Connection[Any]) -> None:
    roundtrip.run(conn, [(SERIES, {})], commit=True)
    with pytest.raises(psycopg.errors.DivisionByZero):
        roundtrip.run(
            conn, [(SERIES, {}), (FAILING, {"zero": 0}), (ECHO, {"id": None, "name": "", "at": None})]
        )
    assert conn.info.transaction_status == INERROR
    assert conn.pgconn.pipeline_status == pq.PipelineStatus.OFF
    conn.rollback()  # what the pool does
    # The statement prepared before the error is kept (it outlives the rollback), the one after it
    # was never prepared: nothing prepared is forgotten, nothing forgotten is still prepared.
    assert roundtrip.prepared_on(conn) == 2
    assert len([n for n in _server_names(conn) if n.startswith("carnet_")]) == 2
    assert roundtrip.run(conn, [(SERIES, {"n": 1}), (FAILING, {"zero": 1})], commit=True) == [[(1,)], [(1,)]]


def test_a_value_psycopg_cannot_adapt_sends_nothing(conn: psycopg.Connection[Any]) -> None:
    roundtrip.run(conn, [(SERIES, {})], commit=True)
    with pytest.raises(psycopg.ProgrammingError):
        roundtrip.run(conn, [(SERIES, {}), (ECHO, {"id": object(), "name": "", "at": None})])
    assert conn.info.transaction_status == IDLE
    assert not conn.closed
    assert roundtrip.run(conn, [(SERIES, {})], commit=True) == [[(1,), (2,)]]


def test_statements_the_server_forgot_are_prepared_again(conn: psycopg.Connection[Any]) -> None:
    roundtrip.run(conn, [(SERIES, {})], commit=True)
    # psycopg deallocates every prepared statement after a rollback once it prepared one itself.
    conn.execute("SELECT 1", prepare=True)
    conn.rollback()
    # A round trip that begins the transaction: nothing ran, so it is sent again, prepared anew.
    assert roundtrip.run(conn, [(SERIES, {"n": 1})], commit=True) == [[(1,)]]
    # Within a transaction: undone to its savepoint and sent again; what ran before it stays.
    conn.autocommit = True
    conn.execute("DISCARD ALL")
    conn.autocommit = False
    conn.execute("CREATE TEMP TABLE kept (n int)")
    conn.execute("INSERT INTO kept VALUES (1)")
    assert roundtrip.run(conn, [(SERIES, {"n": 1})]) == [[(1,)]]
    assert conn.execute("SELECT n FROM kept").fetchall() == [(1,)]
    assert roundtrip.run(conn, [(SERIES, {"n": 2})], commit=True) == [[(1,), (2,)]]
    assert roundtrip.prepared_on(conn) == 1


def _has_savepoint(conn: psycopg.Connection[Any]) -> bool:
    """Whether the open transaction holds the round trip's savepoint (rolling back to it, a
    no-op when it exists; the transaction is failed when it does not)."""
    try:
        conn.execute(f"ROLLBACK TO SAVEPOINT {roundtrip._SAVEPOINT}", prepare=False)
    except psycopg.errors.InvalidSavepointSpecification:
        return False
    return True


def test_a_round_trip_continuing_a_proven_one_takes_no_savepoint(conn: psycopg.Connection[Any]) -> None:
    roundtrip.run(conn, [(SERIES, {})], commit=True)
    # Begins the transaction and runs a statement prepared before: the server knows them all.
    roundtrip.run(conn, [(SERIES, {"n": 1})])
    at = dt.datetime(2026, 12, 8, tzinfo=dt.UTC)
    assert roundtrip.run(conn, [(ECHO, {"id": uuid.uuid4(), "name": "a", "at": at})], continues=True)
    assert not _has_savepoint(conn)
    conn.rollback()
    # Without the caller's word that nothing else ran in between: a savepoint, as always.
    roundtrip.run(conn, [(SERIES, {"n": 1})])
    roundtrip.run(conn, [(SERIES, {"n": 2})])
    assert _has_savepoint(conn)
    conn.rollback()


def test_a_round_trip_of_fresh_statements_proves_nothing_of_the_older(
    conn: psycopg.Connection[Any],
) -> None:
    """A first round trip that only prepared statements says nothing of those prepared before
    it: the server may have forgotten them, and the next round trip keeps its savepoint."""
    roundtrip.run(conn, [(SERIES, {})], commit=True)
    conn.execute("DEALLOCATE ALL")  # behind this module's back, before the transaction below
    conn.commit()
    fresh = roundtrip.Statement("SELECT %(x)s::int + 1 AS y")
    assert roundtrip.run(conn, [(fresh, {"x": 1})]) == [[(2,)]]  # begins it; prepares `fresh`
    assert roundtrip.run(conn, [(SERIES, {"n": 1})], continues=True) == [[(1,)]]  # prepared anew
    assert _has_savepoint(conn)  # it took one, and went back to it
    conn.execute(f"RELEASE SAVEPOINT {roundtrip._SAVEPOINT}", prepare=False)
    # Every statement now ran or was prepared in this transaction: the next takes none.
    assert roundtrip.run(conn, [(fresh, {"x": 2})], continues=True) == [[(3,)]]
    assert not _has_savepoint(conn)
    conn.rollback()


def test_a_statement_prepared_and_run_again_in_one_round_trip_proves_nothing_of_the_older(
    conn: psycopg.Connection[Any],
) -> None:
    roundtrip.run(conn, [(SERIES, {})], commit=True)
    conn.execute("DEALLOCATE ALL")  # behind this module's back
    conn.commit()
    fresh = roundtrip.Statement("SELECT %(x)s::int * 2 AS y")
    # Its second run finds it prepared, but only by this round trip: SERIES is still unproven.
    assert roundtrip.run(conn, [(fresh, {"x": 1}), (fresh, {"x": 2})]) == [[(2,)], [(4,)]]
    assert roundtrip.run(conn, [(SERIES, {"n": 1})], continues=True) == [[(1,)]]
    assert _has_savepoint(conn)  # it took one, and went back to it
    conn.rollback()


def test_a_lost_connection_is_closed_for_the_pool_to_discard() -> None:
    engine = make_engine(POSTGRES_ADMIN_URL, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            raw: Any = connection.connection.driver_connection
            roundtrip.run(raw, [(SERIES, {})], commit=True)
            pid = raw.info.backend_pid
            with psycopg.connect(LIBPQ_URL, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(psycopg.OperationalError):
                roundtrip.run(raw, [(SERIES, {})], commit=True)
            assert raw.closed
        with engine.connect() as connection:  # the pool replaced it
            raw = connection.connection.driver_connection
            assert raw.info.backend_pid != pid
            assert roundtrip.run(raw, [(SERIES, {"n": 1})], commit=True) == [[(1,)]]
    finally:
        engine.dispose()


def test_a_failed_round_trip_is_rolled_back_by_the_pool() -> None:
    engine = make_engine(POSTGRES_ADMIN_URL, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection:
            raw: Any = connection.connection.driver_connection
            with pytest.raises(psycopg.errors.DivisionByZero):
                roundtrip.run(raw, [(FAILING, {"zero": 0})])
            pid = raw.info.backend_pid
        with engine.connect() as connection:
            raw = connection.connection.driver_connection
            assert (raw.info.backend_pid, raw.info.transaction_status) == (pid, IDLE)
            assert roundtrip.run(raw, [(SERIES, {"n": 1})], commit=True) == [[(1,)]]
    finally:
        engine.dispose()


def test_waiting_for_the_server_releases_the_gil(conn: psycopg.Connection[Any]) -> None:
    """A round trip blocked on a lock another connection holds: this thread (Python code) must
    run meanwhile to release it. A wait holding the GIL would never let it: the round trip would
    fail on its lock timeout instead."""
    key = uuid.uuid4().int % 2**31
    lock = roundtrip.Statement("SELECT true AS waited FROM (SELECT pg_advisory_xact_lock(%(key)s)) AS l")
    with psycopg.connect(LIBPQ_URL) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        conn.execute("SET lock_timeout = '60s'")
        conn.commit()
        answered: list[Any] = []
        waiter = threading.Thread(target=lambda: answered.append(roundtrip.run(conn, [(lock, {"key": key})])))
        waiter.start()
        with psycopg.connect(LIBPQ_URL, autocommit=True) as watcher:
            # Python code of this thread runs while the other waits in the round trip.
            while not watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s",
                (key,),
            ).fetchone()[0]:  # type: ignore[index]
                pass
        holder.rollback()
        waiter.join()
    assert answered == [[[(True,)]]]


def test_the_oldest_statement_makes_room(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roundtrip, "MAX_PREPARED", 2)
    many = [roundtrip.Statement(f"SELECT {n} AS n, %(x)s::int AS x") for n in range(4)]
    answers = roundtrip.run(conn, [(s, {"x": n}) for n, s in enumerate(many)], commit=True)
    assert answers == [[(n, n)] for n in range(4)]
    assert roundtrip.prepared_on(conn) == 2
    assert len([n for n in _server_names(conn) if n.startswith("carnet_")]) == 2
    assert roundtrip.run(conn, [(many[0], {"x": 5}), (many[3], {"x": 6})], commit=True) == [
        [(0, 5)],
        [(3, 6)],
    ]


def test_a_savepoint_rolled_back_within_the_transaction() -> None:
    """psycopg deallocates every prepared statement after a ROLLBACK TO SAVEPOINT once it
    prepared one of its own: a round trip later in the same transaction is undone to its own
    savepoint and sent again."""
    engine = make_engine(POSTGRES_ADMIN_URL, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as connection, connection.begin():
            raw: Any = connection.connection.driver_connection
            roundtrip.run(raw, [(SERIES, {})])
            raw.execute("SELECT 1", prepare=True)  # one of psycopg's own
            savepoint = connection.begin_nested()
            connection.exec_driver_sql("SELECT 2")
            savepoint.rollback()
            assert _server_names_now(raw) == set()  # psycopg deallocated them all
            assert roundtrip.run(raw, [(SERIES, {"n": 1})]) == [[(1,)]]
            assert roundtrip.run(raw, [(SERIES, {"n": 3})]) == [[(1,), (2,), (3,)]]
            assert len([n for n in _server_names_now(raw) if n.startswith("carnet_")]) == 1
    finally:
        engine.dispose()


def _server_names_now(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute("SELECT name FROM pg_prepared_statements", prepare=False).fetchall()
    return {name for (name,) in rows}


def test_autocommit(conn: psycopg.Connection[Any]) -> None:
    conn.autocommit = True
    assert roundtrip.run(conn, [(SERIES, {"n": 1})]) == [[(1,)]]
    assert conn.info.transaction_status == IDLE
    with pytest.raises(psycopg.ProgrammingError):
        roundtrip.run(conn, [(SERIES, {"n": 1})], commit=True)
