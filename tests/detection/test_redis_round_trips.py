"""Detection on the hot path asks Redis once per request at most, and not at all while the
actor is far below every threshold; what it held back reaches Redis with the next script, and a
containment flag set by another worker still stops the actor."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import pytest
import redis

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.detection import ledger as ledger_module
from carnet.detection.containment import RedisContainmentFlags
from carnet.detection.counters import RedisExposureCounters
from carnet.detection.interfaces import Channel, SearchEvent, SearchShape
from carnet.detection.ledger import SqlExposureLedger
from carnet.kernel import clock
from carnet.kernel.errors import AccountContained, StepUpRequired
from carnet.runtime import Runtime
from tests.detection.helpers import make_actor

# A Wednesday, 10:00 in Paris: no off-hours rule applies.
MORNING = dt.datetime(2026, 3, 4, 9, 0, tzinfo=dt.UTC)


class CountingRedis(redis.Redis):
    """A Redis client that counts its round trips (a command, a pipeline, a script call)."""

    trips = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.trips += 1
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def counted(raise_on_error: bool = True) -> Any:
            self.trips += 1
            return execute(raise_on_error)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


@pytest.fixture
def counted(sqlite_runtime: Runtime) -> tuple[SqlExposureLedger, CountingRedis]:
    client = CountingRedis(host="127.0.0.1", port=6379, db=0)
    prefix = f"carnet:test:{uuid.uuid4().hex}"
    ledger = SqlExposureLedger(
        settings=sqlite_runtime.settings,
        counters=RedisExposureCounters(client, prefix=prefix),
        flags=RedisContainmentFlags(client, prefix=prefix),
    )
    return ledger, client


def _read(
    runtime: Runtime, ledger: SqlExposureLedger, actor: Actor, patients: list[uuid.UUID], **kw: Any
) -> None:
    with runtime.session_factory.begin() as session:
        ledger.record(session, actor=actor, patient_ids=patients, channel=kw.pop("channel", Channel.CHART),
                      resource_type="Patient", **kw)  # fmt: skip


def _trips(client: CountingRedis, action: Any) -> int:
    before = client.trips
    action()
    return client.trips - before


def test_one_round_trip_at_most_and_none_while_quiet(
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
    counted: tuple[SqlExposureLedger, CountingRedis],
) -> None:
    runtime = sqlite_runtime
    ledger, client = counted
    movable_clock.set(MORNING)
    actor = make_actor(runtime, "dr.quiet", Role.PHYSICIAN)
    mine = [uuid.uuid4() for _ in range(12)]
    # The first request of an actor and a worker also notes its address and client (campaigns).
    _read(runtime, ledger, actor, mine[:1])

    movable_clock.advance(dt.timedelta(seconds=30))  # the kept counts are too old: ask Redis
    assert _trips(client, lambda: _read(runtime, ledger, actor, mine[:1])) == 1
    # Far below every threshold: the same patient, then a few new ones, without Redis.
    assert _trips(client, lambda: _read(runtime, ledger, actor, mine[:1])) == 0
    assert _trips(client, lambda: _read(runtime, ledger, actor, mine[1:3])) == 0
    assert _trips(client, lambda: _read(runtime, ledger, actor, mine[3:5])) == 0
    # Past the budget of new patients judged on kept counts: Redis again, once, with the held adds.
    assert _trips(client, lambda: _read(runtime, ledger, actor, mine[5:7])) == 1
    with runtime.session_factory() as session:
        counts = ledger.counters.counts(session, actor_ref=actor.actor_ref, at=clock.now(), since=None)
    assert counts.patients_15m == counts.patients_24h == 7  # nothing held back was lost
    # A search is an event detection counts: one round trip, never none.
    search = SearchEvent(SearchShape.IDENTIFIER, "digest-1")
    assert (
        _trips(
            client,
            lambda: _read(runtime, ledger, actor, mine[7:8], channel=Channel.SEARCH, query_shape=search),
        )
        == 1
    )


def test_a_flag_set_by_another_worker_still_stops_the_actor(
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
    counted: tuple[SqlExposureLedger, CountingRedis],
) -> None:
    runtime = sqlite_runtime
    ledger, client = counted
    movable_clock.set(MORNING)
    actor = make_actor(runtime, "dr.flagged", Role.PHYSICIAN)
    patients = [uuid.uuid4() for _ in range(3)]
    _read(runtime, ledger, actor, patients[:1])
    # Another worker contains the account (its flag in Redis, its database row not yet committed).
    ledger.flags.set(actor.actor_ref, f"{clock.now().timestamp()}|many patients in minutes.")
    movable_clock.advance(dt.timedelta(seconds=ledger_module.QUIET_SECONDS + 1))
    before = client.trips
    with pytest.raises(AccountContained, match="many patients in minutes"):
        _read(runtime, ledger, actor, patients[1:2])
    assert client.trips - before == 1  # the flag is read by the request's one script
    with runtime.session_factory() as session:
        counts = ledger.counters.counts(session, actor_ref=actor.actor_ref, at=clock.now(), since=None)
    assert counts.patients_24h == 1  # the refused request added nothing


def test_close_to_a_threshold_every_request_asks_redis(
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
    counted: tuple[SqlExposureLedger, CountingRedis],
) -> None:
    runtime = sqlite_runtime
    ledger, client = counted
    movable_clock.set(MORNING)
    actor = make_actor(runtime, "dr.busy", Role.PHYSICIAN)
    floor = ledger.config.role_volume["physician"].m15
    near = floor - ledger_module.QUIET_HEADROOM + 1  # raised by the headroom, it would be found
    _read(runtime, ledger, actor, [uuid.uuid4() for _ in range(near)])
    assert _trips(client, lambda: _read(runtime, ledger, actor, [uuid.uuid4()])) == 1
    assert _trips(client, lambda: _read(runtime, ledger, actor, [uuid.uuid4()])) == 1


def _redis_counts(ledger: SqlExposureLedger, runtime: Runtime, actor: Actor) -> Any:
    with runtime.session_factory() as session:
        return ledger.counters.counts(session, actor_ref=actor.actor_ref, at=clock.now(), since=None)


def test_patients_read_again_need_no_budget(
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
    counted: tuple[SqlExposureLedger, CountingRedis],
) -> None:
    """A patient whose plain read this worker sent to Redis recently is in every window: reading
    it again adds no patient, so it is judged on kept counts without spending the budget."""
    runtime = sqlite_runtime
    ledger, client = counted
    movable_clock.set(MORNING)
    actor = make_actor(runtime, "dr.rounds", Role.PHYSICIAN)
    mine = [uuid.uuid4() for _ in range(12)]
    _read(runtime, ledger, actor, mine)  # more new patients than the budget: sent to Redis
    movable_clock.advance(dt.timedelta(seconds=30))
    assert _trips(client, lambda: _read(runtime, ledger, actor, mine[:1])) == 1  # kept counts too old
    for patient in mine[1:]:  # a ward round: each of them again, none new
        assert _trips(client, lambda p=patient: _read(runtime, ledger, actor, [p])) == 0
    kept = ledger._quiet[actor.actor_ref]
    assert kept.budget == ledger_module.QUIET_BUDGET
    ledger.flush_held()
    assert _redis_counts(ledger, runtime, actor).patients_15m == kept.counts.patients_15m == 12
    # Read last longer ago than the known age: it may have left the 15-minute window, so it
    # spends the budget again (the fifth such patient asks Redis).
    movable_clock.advance(ledger_module.KNOWN_AGE + dt.timedelta(seconds=1))
    assert _trips(client, lambda: _read(runtime, ledger, actor, mine[:1])) == 1
    assert [_trips(client, lambda p=p: _read(runtime, ledger, actor, [p])) for p in mine[1:6]] == [
        0, 0, 0, 0, 1
    ]  # fmt: skip


def test_a_list_of_patients_in_care_does_not_make_them_known(
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
    counted: tuple[SqlExposureLedger, CountingRedis],
) -> None:
    """A day list counts its patients in care in the 24-hour window only: reading one of them
    afterwards adds it to the short windows, so it spends the budget, and the kept counts stay
    Redis's own after every read."""
    runtime = sqlite_runtime
    ledger, client = counted
    movable_clock.set(MORNING)
    actor = make_actor(runtime, "dr.list", Role.PHYSICIAN)
    mine = [uuid.uuid4() for _ in range(6)]
    _read(runtime, ledger, actor, mine[:1])
    day = SearchEvent(SearchShape.LIST, f"day-list:{MORNING.date().isoformat()}")
    _read(runtime, ledger, actor, mine, channel=Channel.LIST, query_shape=day)
    trips = []
    for patient in mine[1:]:
        trips.append(_trips(client, lambda p=patient: _read(runtime, ledger, actor, [p])))
        kept = ledger._quiet.get(actor.actor_ref)
        assert kept is not None
        ledger.flush_held()
        assert _redis_counts(ledger, runtime, actor).patients_15m == kept.counts.patients_15m
    assert trips == [0, 0, 0, 0, 1]


def test_an_idle_worker_and_its_exit_send_what_it_holds(
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
    counted: tuple[SqlExposureLedger, CountingRedis],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = sqlite_runtime
    ledger, client = counted
    movable_clock.set(MORNING)
    actor = make_actor(runtime, "dr.idle", Role.PHYSICIAN)
    mine = [uuid.uuid4() for _ in range(3)]
    _read(runtime, ledger, actor, mine[:1])
    assert _trips(client, lambda: _read(runtime, ledger, actor, mine[1:2])) == 0  # held
    ledger_module._flush_at_exit()  # as the worker's exit does
    assert _redis_counts(ledger, runtime, actor).patients_24h == 2
    monkeypatch.setattr(ledger_module, "QUIET_FLUSH_SECONDS", 0.05)
    assert _trips(client, lambda: _read(runtime, ledger, actor, mine[2:3])) == 0  # held
    for _ in range(100):  # no request comes: the worker's timer sends it
        if not ledger._held:
            break
        time.sleep(0.05)
    assert _redis_counts(ledger, runtime, actor).patients_24h == 3


def test_an_enumeration_over_two_workers_is_stepped_up_within_the_bound(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    """New patients read one by one, alternately through two workers (two ledgers sharing
    Redis), are stepped up no later than QUIET_BUDGET patients after one worker alone would be:
    each worker holds back at most QUIET_BUDGET new patients of an actor from the other."""
    runtime = sqlite_runtime
    client = redis.Redis(host="127.0.0.1", port=6379, db=0)

    def first_step_up(workers: int) -> int:
        prefix = f"carnet:test:{uuid.uuid4().hex}"
        ledgers = [
            SqlExposureLedger(
                settings=runtime.settings,
                counters=RedisExposureCounters(client, prefix=prefix),
                flags=RedisContainmentFlags(client, prefix=prefix),
            )
            for _ in range(workers)
        ]
        movable_clock.set(MORNING)
        actor = make_actor(runtime, f"dr.enumerates.{workers}", Role.PHYSICIAN)
        for n in range(1, 200):
            movable_clock.advance(dt.timedelta(seconds=1))
            try:
                _read(runtime, ledgers[n % workers], actor, [uuid.uuid4()])
            except (StepUpRequired, AccountContained):
                return n
        raise AssertionError("never stepped up")

    alone, spread = first_step_up(1), first_step_up(2)
    assert alone <= spread <= alone + ledger_module.QUIET_BUDGET
