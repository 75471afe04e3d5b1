"""Redis, SQL and memory counters agree on the same history, windows included."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import redis

from carnet.access.roles import Role
from carnet.detection.config import DetectionConfig
from carnet.detection.counters import MemoryExposureCounters, RedisExposureCounters, SqlExposureCounters
from carnet.detection.interfaces import (
    ActorCounts,
    Channel,
    EventKind,
    ExposureCounters,
    SearchEvent,
    SearchShape,
)
from carnet.detection.ledger import SqlExposureLedger
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.detection.helpers import make_actor

START = dt.datetime(2026, 3, 4, 9, 0, tzinfo=dt.UTC)
# Thresholds out of reach: this test is about counting, not responding.
QUIET = DetectionConfig(
    # The history passes its own outside-care patients: no role is judged against facility work.
    outside_work={},
    searches_step_up_15m=10**6,
    searches_contain_15m=10**6,
    searches_contain_1h=10**6,
    identifier_searches_step_up_15m=10**6,
    identifier_searches_contain_15m=10**6,
    wildcard_searches_step_up_1h=10**6,
    wildcard_searches_contain_1h=10**6,
    outside_care_step_up_1h=10**6,
    outside_care_contain_1h=10**6,
    outside_care_contain_24h=10**6,
    outside_care_share_min_patients=10**6,
    deep_pages_step_up_1h=10**6,
    deep_pages_contain_1h=10**6,
    export_step_up_24h=10**6,
    denials_step_up_15m=10**6,
    denials_contain_15m=10**6,
    export_denials_contain_1h=10**6,
)


def _history(
    runtime: Runtime, ledger: SqlExposureLedger, username: str, movable: clock.MovableClock
) -> ActorCounts:
    actor = make_actor(runtime, username, Role.FRONT_DESK)
    patients = [uuid.uuid4() for _ in range(30)]
    steps: list[tuple[dt.timedelta, list[uuid.UUID], list[uuid.UUID], Channel, SearchEvent | None]] = [
        (dt.timedelta(0), patients[:10], patients[:2], Channel.LIST, SearchEvent(SearchShape.LIST, "d1", 7)),
        (dt.timedelta(minutes=20), patients[5:15], [], Channel.SEARCH, SearchEvent(SearchShape.NAME, "a")),
        (dt.timedelta(minutes=50), patients[14:20], patients[14:16], Channel.EXPORT, None),
        (dt.timedelta(hours=2), patients[:3], [], Channel.SEARCH, SearchEvent(SearchShape.IDENTIFIER, "i1")),
        (
            dt.timedelta(hours=2, minutes=5),
            patients[20:22],
            [],
            Channel.SEARCH,
            SearchEvent(SearchShape.WILDCARD, "w"),
        ),
        (
            dt.timedelta(hours=2, minutes=6),
            patients[22:23],
            [],
            Channel.SEARCH,
            SearchEvent(SearchShape.NAME, "a"),
        ),
    ]
    for offset, shown, outside, channel, shape in steps:
        movable.set(START + offset)
        with runtime.session_factory.begin() as session:
            ledger.record(
                session,
                actor=actor,
                patient_ids=shown,
                channel=channel,
                resource_type="Patient",
                outside_care=outside,
                query_shape=shape,
            )
    with runtime.session_factory.begin() as session:
        ledger.record_denial(session, actor=actor, resource_type="Patient")
        return ledger.counters.counts(session, actor_ref=actor.actor_ref, at=clock.now(), since=None)


@pytest.fixture
def redis_counters() -> RedisExposureCounters:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    return RedisExposureCounters(client, prefix=f"carnet:test:{uuid.uuid4().hex}")


def test_backends_count_alike(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock, redis_counters: RedisExposureCounters
) -> None:
    results = {}
    backends: dict[str, ExposureCounters] = {
        "sql": SqlExposureCounters(),
        "memory": MemoryExposureCounters(),
        "redis": redis_counters,
    }
    for name, counters in backends.items():
        ledger = SqlExposureLedger(settings=sqlite_runtime.settings, config=QUIET, counters=counters)
        results[name] = _history(sqlite_runtime, ledger, f"desk.{name}", movable_clock)
    assert results["sql"] == results["memory"] == results["redis"]
    counts = results["sql"]
    # At 11:06: last 15 min holds the identifier (3), wildcard (2) and name (1) searches' patients.
    # The approved export's 6 patients (5 not seen otherwise) count in their own window only.
    assert (counts.patients_15m, counts.patients_1h, counts.patients_24h) == (6, 6, 18)
    assert (counts.outside_1h, counts.outside_24h, counts.exported_24h) == (0, 2, 6)
    assert (counts.searches_15m, counts.identifier_searches_15m, counts.wildcard_searches_1h) == (3, 1, 1)
    assert (counts.deep_pages_1h, counts.denials_15m) == (0, 1)
    # The week counts like 15 min and 1 h: own patients seen only in the list are left out.
    assert counts.patients_7d == 16
    redis_counters.reset(actor_ref="nobody")  # resetting an unknown actor is harmless


def test_sql_window_counts_on_each_database(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    """The SQL counters' one statement (distinct patients per window, grouped by patient once)
    counts on PostgreSQL as on SQLite, and as the memory counters do."""
    memory = SqlExposureLedger(settings=runtime.settings, config=QUIET, counters=MemoryExposureCounters())
    sql = SqlExposureLedger(settings=runtime.settings, config=QUIET, counters=SqlExposureCounters())
    expected = _history(runtime, memory, "desk.memory", movable_clock)
    counted = _history(runtime, sql, "desk.sql", movable_clock)
    assert counted == expected
    assert (counted.patients_15m, counted.patients_1h, counted.patients_24h) == (6, 6, 18)
    assert (counted.outside_1h, counted.outside_24h, counted.exported_24h) == (0, 2, 6)
    assert counted.patients_7d == 16


def test_redis_records_and_counts_in_one_call_like_memory(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock, redis_counters: RedisExposureCounters
) -> None:
    """The one-round-trip script keeps times to the microsecond and counts what it just added."""
    memory = MemoryExposureCounters()
    patients = [uuid.uuid4() for _ in range(450)]  # more than one ZADD chunk in the script
    first = movable_clock.now()
    results = []
    for counters in (memory, redis_counters):
        movable_clock.set(first)
        with sqlite_runtime.session_factory.begin() as session:
            counters.add_and_count(
                session, actor_ref="a", at=first, since=None, events=[(EventKind.REFUSAL, "-")]
            )
            movable_clock.advance(dt.timedelta(minutes=3, microseconds=123))
            results.append(
                counters.add_and_count(
                    session,
                    actor_ref="a",
                    at=clock.now(),
                    since=None,
                    patient_ids=patients,
                    outside_care=patients[:7],
                    listed=True,
                    events=[(EventKind.REFUSAL, "-"), (EventKind.SEARCH, "k")],
                )
            )
    assert results[0] == results[1]
    counts = results[1]
    assert counts.first_refusal_at == first
    assert (counts.patients_24h, counts.patients_15m, counts.outside_1h) == (450, 7, 7)
    assert (counts.refusals_1h, counts.searches_15m) == (2, 1)


def test_a_reads_adds_are_those_of_its_groups() -> None:
    """`adds` of a read in care (its own branch) and of every other shape: per `_groups` set, the
    members' text, the horizon and expiry of that set's window, the time as text; then the
    installation's."""
    counters = RedisExposureCounters(None, prefix="carnet:test")
    at = dt.datetime(2026, 3, 4, 9, 0, 0, 123457, tzinfo=dt.UTC)
    ids = [uuid.uuid4() for _ in range(3)]

    def expected(**kw: Any) -> list[tuple[Any, ...]]:
        stamp = at.timestamp()
        out = []
        ids_, outside = kw.get("patient_ids", ()), kw.get("outside_care", ())
        groups = counters._groups(ids_, outside, kw.get("exported", False), kw.get("listed", False))
        for name, group in groups:
            if group:
                keep = 7 * 86400.0 if name == "w" else 86400.0
                key = counters._key("account:1", name)
                out.append((key, repr(stamp - keep), int(keep) + 3600, [str(p) for p in group], repr(stamp)))
        if kw.get("installation"):
            key = counters._key("installation", "p")
            members = [str(p) for p in kw["installation"]]
            out.append((key, repr(stamp - 3600.0), 3600 + 600, members, repr(stamp)))
        return out

    for kw in (
        {"patient_ids": ids},
        {"patient_ids": ids, "installation": ids},
        {"patient_ids": ids[:1], "installation": list(ids[:1])},
        {"patient_ids": ids, "outside_care": ids[:1], "installation": ids},
        {"patient_ids": ids, "exported": True},
        {"patient_ids": ids, "listed": True, "outside_care": ids[1:], "installation": ids[1:]},
    ):
        got = [tuple(add) for add in counters.adds(actor_ref="account:1", at=at, **kw)]
        assert got == expected(**kw)
