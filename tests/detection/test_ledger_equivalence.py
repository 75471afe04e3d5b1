"""The ledger answers every request as the reference ledger does (tests/detection/reference_ledger.py:
the ledger before its per-actor standing and compiled rules), on generated histories of reads,
searches, lists and exports by staff of several roles, with patients in and outside care, at any
hour, under drawn thresholds: the same refusals (step-up, throttle, containment, with the same
words), the same alerts and the same window counts. Both run with Redis, as served (kept counts
and held adds included), on the same clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.detection import ledger as ledger_module
from carnet.detection import rules
from carnet.detection.config import DetectionConfig, RoleVolume
from carnet.detection.containment import RedisContainmentFlags
from carnet.detection.counters import RedisExposureCounters
from carnet.detection.interfaces import Channel, SearchEvent, SearchShape
from carnet.detection.ledger import SqlExposureLedger
from carnet.detection.models import Alert
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.kernel.errors import CarnetError
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Settings
from tests.detection import reference_ledger
from tests.detection.conftest import EveryoneInWork

START = dt.datetime(2026, 3, 4, 16, 0, tzinfo=dt.UTC)  # 17:00 in Paris; histories run into the night
PATIENTS = [uuid.UUID(int=1000 + n) for n in range(14)]
STAFF = (
    ("dr.one", (Role.PHYSICIAN,), "10.0.0.1"),
    ("nurse.two", (Role.NURSE,), "10.0.0.2"),
    ("desk.three", (Role.FRONT_DESK,), "10.0.0.3"),
    ("dr.four", (Role.PHYSICIAN,), "10.0.0.1"),  # the first one's machine address
)


class FrozenClock:
    """The time both ledgers read: moved by the history only."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def now(self) -> dt.datetime:
        return self.at


@pytest.fixture
def twin_runtimes(sqlite_template: Path, settings: Settings, tmp_path: Path) -> Iterator[list[Runtime]]:
    made = []
    for name in ("current", "reference"):
        path = tmp_path / f"{name}.db"
        shutil.copy(sqlite_template, path)
        made.append(build_runtime(settings.model_copy(update={"database_url": f"sqlite:///{path}"})))
    yield made
    for runtime in made:
        runtime.close()


@dataclasses.dataclass(frozen=True)
class Step:
    who: int
    patients: list[int]
    outside: list[int]
    channel: Channel
    shape: SearchEvent | None
    advance: float  # seconds before the request
    prove: bool  # the session's owner answers a second factor just before


def _shape(draw: Any, channel: Channel) -> SearchEvent | None:
    if channel is Channel.SEARCH:
        shape = draw(st.sampled_from([SearchShape.IDENTIFIER, SearchShape.NAME, SearchShape.WILDCARD]))
        return SearchEvent(shape, f"term-{draw(st.integers(0, 12))}", draw(st.integers(1, 7)))
    if channel is Channel.LIST:
        return SearchEvent(SearchShape.LIST, f"cal-{draw(st.integers(0, 9))}", draw(st.integers(1, 7)))
    return None


@st.composite
def steps(draw: Any) -> Step:
    channel = draw(st.sampled_from([Channel.CHART] * 6 + [Channel.SEARCH, Channel.LIST, Channel.EXPORT]))
    patients = draw(
        st.lists(st.integers(0, len(PATIENTS) - 1), min_size=1, max_size=3 if channel is Channel.CHART else 6)
    )
    outside = [p for p in patients if draw(st.integers(0, 5)) == 0]
    return Step(
        who=draw(st.integers(0, len(STAFF) - 1)),
        patients=patients,
        outside=outside,
        channel=channel,
        shape=_shape(draw, channel),
        advance=draw(st.sampled_from([0.0, 0.0, 0.3, 1.0, 2.5, 30.0, 400.0, 900.0, 3600.0])),
        prove=draw(st.integers(0, 6)) == 0,
    )


@st.composite
def configs(draw: Any) -> DetectionConfig:
    small = draw(st.integers(3, 9))
    return DetectionConfig(
        role_volume={
            r: RoleVolume(m15=small, h1=small + draw(st.integers(0, 4)), h24=small + 6)
            for r in ("physician", "nurse", "front_desk", "billing", "patient")
        },
        weekly_volume={r: small + 8 for r in ("physician", "nurse", "front_desk", "billing")},
        outside_care_step_up_1h=draw(st.integers(1, 4)),
        outside_care_contain_1h=draw(st.integers(3, 8)),
        searches_step_up_15m=draw(st.integers(2, 6)),
        wildcard_searches_step_up_1h=draw(st.integers(1, 3)),
        list_views_step_up_15m=draw(st.integers(2, 5)),
        refusals_contain_1h=draw(st.integers(2, 5)),
    )


def _actors(runtimes: list[Runtime]) -> list[Actor]:
    """The same accounts in both databases (none opened by an administrator: no probation)."""
    actors = []
    for username, roles, address in STAFF:
        account_id = uuid.uuid4()
        for runtime in runtimes:
            with runtime.session_factory.begin() as session:
                session.add(
                    Account(
                        id=account_id,
                        username=f"{username}.{account_id.hex[:6]}",
                        display_name=username,
                        kind="staff",
                        password_hash="!",
                        status="active",
                        created_at=START - dt.timedelta(days=30),
                        password_changed_at=START,
                    )
                )
        actors.append(
            Actor(
                kind=ActorKind.STAFF,
                username=f"{username}.{account_id.hex[:6]}",
                roles=frozenset(roles),
                account_id=account_id,
                session_id=uuid.uuid4(),
                address=address,
                user_agent="Mozilla/5.0 (ward)",
                second_factor_at=START - dt.timedelta(hours=1),
            )
        )
    return actors


def _outcome(runtime: Runtime, ledger: Any, actor: Actor, step: Step) -> str:
    try:
        with runtime.session_factory.begin() as session:
            ledger.record(
                session,
                actor=actor,
                patient_ids=[PATIENTS[p] for p in step.patients],
                channel=step.channel,
                resource_type="Patient",
                outside_care=[PATIENTS[p] for p in step.outside],
                query_shape=step.shape,
                fields=["name", "birthDate"],
            )
    except CarnetError as refused:
        return f"{type(refused).__name__}: {refused}"
    return "answered"


def _alerts(runtime: Runtime, actors: list[Actor]) -> list[tuple[str, str, int, str]]:
    names = {a.actor_ref: n for n, a in enumerate(actors)}
    with runtime.session_factory() as session:
        rows = session.scalars(sa.select(Alert)).all()
        return sorted(
            (str(names.get(a.actor_ref, a.actor_ref)), a.rule, int(a.level), a.sentence) for a in rows
        )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(config=configs(), history=st.lists(steps(), min_size=5, max_size=30))
def test_the_ledger_answers_as_the_reference_ledger(
    twin_runtimes: list[Runtime],
    monkeypatch: pytest.MonkeyPatch,
    config: DetectionConfig,
    history: list[Step],
) -> None:
    ticks = [1000.0]  # the processes' monotonic clock, moved with the history
    fake_time = types.SimpleNamespace(
        monotonic=lambda: ticks[0], sleep=time.sleep, perf_counter=time.perf_counter
    )
    frozen = FrozenClock(START)
    previous = clock.current()
    clock.install(frozen)
    client = redis.Redis(host="127.0.0.1", port=6379, db=0)
    ledgers: list[Any] = []
    try:
        for module in (ledger_module, reference_ledger):
            monkeypatch.setattr(module, "time", fake_time)
            monkeypatch.setattr(module, "QUIET_FLUSH_SECONDS", 3600.0)  # sent by scripts only
            monkeypatch.setattr(module, "_provided_work", [EveryoneInWork()])
        for runtime, kind in zip(
            twin_runtimes, (SqlExposureLedger, reference_ledger.SqlExposureLedger), strict=True
        ):
            prefix = f"carnet:test:{uuid.uuid4().hex}"
            ledgers.append(
                kind(
                    settings=runtime.settings,
                    config=config,
                    counters=RedisExposureCounters(client, prefix=prefix),
                    flags=RedisContainmentFlags(client, prefix=prefix),
                )
            )
        actors = _actors(twin_runtimes)
        for n, step in enumerate(history):
            frozen.at += dt.timedelta(seconds=step.advance)
            ticks[0] += step.advance + 0.01
            if step.prove:
                actors[step.who] = dataclasses.replace(actors[step.who], second_factor_at=frozen.at)
            got = [
                _outcome(runtime, ledger, actors[step.who], step)
                for runtime, ledger in zip(twin_runtimes, ledgers, strict=True)
            ]
            assert got[0] == got[1], f"step {n}: {step}"
        for ledger in ledgers:
            ledger.flush_held()
        assert _alerts(twin_runtimes[0], actors) == _alerts(twin_runtimes[1], actors)
        for actor in actors:
            counts = [
                ledger.counters.counts(None, actor_ref=actor.actor_ref, at=frozen.at, since=None)
                for ledger in ledgers
            ]
            assert counts[0] == counts[1]
    finally:
        clock.install(previous)


def test_quiet_reads_run_no_rule(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch, movable_clock: clock.MovableClock
) -> None:
    """Reads of patients in care far below every threshold are judged by the compiled rules
    alone: `rules.evaluate` is not called (and the kept counts spare Redis)."""
    movable_clock.set(START - dt.timedelta(hours=6))  # 11:00 in Paris
    client = redis.Redis(host="127.0.0.1", port=6379, db=0)
    prefix = f"carnet:test:{uuid.uuid4().hex}"
    ledger = SqlExposureLedger(
        settings=sqlite_runtime.settings,
        counters=RedisExposureCounters(client, prefix=prefix),
        flags=RedisContainmentFlags(client, prefix=prefix),
    )
    actor = _actors([sqlite_runtime])[0]
    calls = []
    evaluate = rules.evaluate

    def counted(config: DetectionConfig, ctx: rules.Context) -> Any:
        calls.append(ctx)
        return evaluate(config, ctx)

    monkeypatch.setattr(rules, "evaluate", counted)
    for patient in PATIENTS[:3] * 3:
        with sqlite_runtime.session_factory.begin() as session:
            ledger.record(
                session, actor=actor, patient_ids=[patient], channel=Channel.CHART, resource_type="Patient"
            )
    assert calls == []
