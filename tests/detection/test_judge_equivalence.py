"""The compiled rules (`rules.Judge`) find exactly what `rules.evaluate` finds, the reference, on
generated actors, roles, baselines, probation, work, hours, channels, outside-care mixes, counts
around every threshold, and thresholds; and they skip the rules on the reads far below them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import PATIENT_DATA_ROLES, Role
from carnet.detection import rules
from carnet.detection.config import DetectionConfig, RoleVolume, WorkLimits
from carnet.detection.interfaces import ActorCounts, Channel

ROLES = list(Role)
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _small(low: int = 1, high: int = 30) -> st.SearchStrategy[int]:
    return st.integers(low, high)


@st.composite
def configs(draw: Any) -> DetectionConfig:
    """The defaults, or thresholds drawn small (so that counts cross them often)."""
    if draw(st.booleans()):
        return DetectionConfig()

    def volume() -> RoleVolume:
        return RoleVolume(m15=draw(_small()), h1=draw(_small()), h24=draw(_small(1, 60)))

    def limits() -> WorkLimits:
        return WorkLimits(
            step_up_1h=draw(_small(1, 10)),
            step_up_24h=draw(_small(1, 20)),
            contain_1h=draw(_small(1, 20)),
            contain_24h=draw(_small(1, 40)),
        )

    return DetectionConfig(
        role_volume={r: volume() for r in ("physician", "nurse", "front_desk", "billing", "patient")},
        baseline_factor=draw(st.sampled_from([1.5, 3.0, 2.7])),
        baseline_cap_factor=draw(st.sampled_from([1.0, 2.0, 1.3])),
        volume_throttle_factor=draw(st.sampled_from([1.5, 2.0])),
        volume_contain_factor=draw(st.sampled_from([2.5, 3.0])),
        weekly_volume={r: draw(_small(1, 80)) for r in ("physician", "nurse", "front_desk", "billing")},
        client_volume=volume(),
        outside_care_step_up_1h=draw(_small(1, 10)),
        outside_care_contain_1h=draw(_small(1, 10)),
        outside_care_contain_24h=draw(_small(1, 20)),
        outside_care_share_min_patients=draw(_small(1, 15)),
        outside_care_share_contain=draw(st.sampled_from([0.1, 0.5, 1.0, 0.33])),
        outside_work={"front_desk": limits(), "billing": limits()},
        searches_step_up_15m=draw(_small(1, 10)),
        searches_contain_15m=draw(_small(1, 10)),
        searches_contain_1h=draw(_small(1, 15)),
        identifier_searches_step_up_15m=draw(_small(1, 10)),
        identifier_searches_contain_15m=draw(_small(1, 10)),
        wildcard_searches_step_up_1h=draw(_small(1, 6)),
        wildcard_searches_contain_1h=draw(_small(1, 6)),
        deep_pages_step_up_1h=draw(_small(1, 5)),
        deep_pages_contain_1h=draw(_small(1, 5)),
        list_views_step_up_15m=draw(_small(1, 8)),
        list_views_contain_15m=draw(_small(1, 8)),
        refusals_contain_1h=draw(_small(1, 6)),
        refusals_contain_24h=draw(_small(1, 10)),
        export_step_up_24h=draw(_small(1, 10)),
        timezone=draw(st.sampled_from(["Europe/Paris", "UTC", "Asia/Kolkata", "America/St_Johns"])),
        night_roles=draw(st.sampled_from([["physician", "nurse"], [], ["front_desk"]])),
        off_hours_start=draw(st.integers(0, 23)),
        off_hours_end=draw(st.integers(0, 23)),
        off_hours_usual_share=draw(st.sampled_from([0.0, 0.05, 0.5])),
        off_hours_step_up_1h=draw(_small(1, 10)),
        new_address_step_up_1h=draw(_small(1, 10)),
        probation_factor=draw(st.sampled_from([0.5, 0.3, 1.0])),
        care_scoped_roles=draw(st.sampled_from([["physician", "nurse"], ["physician"], []])),
        facility_wide_roles=draw(st.sampled_from([["front_desk", "billing"], ["billing"]])),
    )


baselines = st.none() | st.builds(
    rules.Baseline,
    m15=st.integers(0, 20),
    h1=st.integers(0, 40),
    h24=st.integers(0, 80),
    off_hours_share=st.sampled_from([0.0, 0.01, 0.05, 0.2]),
)
moments = st.none() | st.integers(-3 * 86400, 3600).map(lambda s: EPOCH + dt.timedelta(seconds=s))


@st.composite
def actors(draw: Any) -> Actor:
    kind = draw(st.sampled_from(list(ActorKind)))
    roles = frozenset(draw(st.sets(st.sampled_from(ROLES), max_size=3)))
    return Actor(
        kind=kind,
        username=draw(st.sampled_from(["dr.a", "desk.b", "app-1"])),
        roles=roles,
        account_id=draw(st.none() | st.just(uuid.UUID(int=7))),
        client_id=draw(st.none() | st.just("app-1")),
        address=draw(st.none() | st.just("10.0.0.9")),
        second_factor_at=draw(moments),
    )


def _count() -> st.SearchStrategy[int]:
    # Mostly small (below or around the drawn thresholds), sometimes at the defaults' levels.
    return st.integers(0, 70) | st.sampled_from([0, 0, 0, 1, 199, 200, 399, 400, 599, 600, 1200])


@st.composite
def counts(draw: Any) -> ActorCounts:
    quiet = draw(st.booleans())  # half: the reads' usual, nothing but patients in care

    def n() -> int:
        return 0 if quiet and draw(st.integers(0, 3)) else draw(_count())

    p24 = draw(_count())
    return ActorCounts(
        patients_15m=draw(_count()),
        patients_1h=draw(_count()),
        patients_24h=p24,
        outside_1h=n(),
        outside_24h=min(n(), p24) if draw(st.booleans()) else n(),
        exported_24h=n(),
        patients_7d=draw(_count()),
        searches_15m=n(),
        searches_1h=n(),
        identifier_searches_15m=n(),
        wildcard_searches_1h=n(),
        deep_pages_1h=n(),
        lists_15m=n(),
        denials_15m=n(),
        denials_24h=n(),
        export_denials_1h=n(),
        refusals_1h=n(),
        refusals_24h=n(),
        first_refusal_at=None if quiet else draw(moments),
        first_refusal_24h_at=None if quiet else draw(moments),
    )


def _levels(config: DetectionConfig) -> list[int]:
    """Counts at, just under and just over the config's levels (and the volume thresholds the
    baselines and factors make of them)."""
    found: set[int] = set()
    for value in config.model_dump().values():
        items = value.values() if isinstance(value, dict) else [value]
        for item in items:
            numbers = item.values() if isinstance(item, dict) else [item]
            for number in numbers:
                if isinstance(number, int | float) and not isinstance(number, bool) and number < 5000:
                    for factor in (1.0, config.probation_factor, config.baseline_cap_factor):
                        level = int(number * factor)
                        found |= {max(level - 1, 0), level, level + 1}
    return sorted(found)


FIELDS = [f for f in ActorCounts.__dataclass_fields__ if not f.startswith("first_")]


@st.composite
def contexts(draw: Any) -> tuple[DetectionConfig, rules.Context]:
    config = draw(configs())
    # Every hour of the day, both seasons (and the days the clocks change in Paris).
    day = draw(st.sampled_from([0, 30, 88, 180, 298, 330]))
    at = EPOCH + dt.timedelta(days=day, seconds=draw(st.integers(0, 86399)))
    if draw(st.booleans()):
        ctx = rules.Context(
            actor=draw(actors()),
            counts=draw(counts()),
            at=at,
            channel=draw(st.none() | st.sampled_from(list(Channel))),
            canaries=draw(st.sampled_from([(), (), (), (uuid.UUID(int=1),)])),
            account_baseline=draw(baselines),
            role_baseline=draw(baselines),
            new_address=draw(st.booleans()) and draw(st.booleans()),
            denial=draw(st.integers(0, 5)) == 0,
            work_known=draw(st.booleans()),
            probation=draw(st.booleans()),
        )
        return config, ctx
    # A read of patients in care (the hot path's case), one count moved to a level.
    values = dict.fromkeys(FIELDS, 0)
    for window in ("patients_15m", "patients_1h", "patients_7d"):
        values[window] = draw(st.integers(0, 12))
    values["patients_24h"] = draw(st.integers(0, 30))
    if draw(st.booleans()):  # a few patients outside care (break-the-glass), or outside work
        values["outside_1h"] = draw(st.integers(0, 10))
        values["outside_24h"] = draw(st.integers(0, max(values["patients_24h"], 1)))
    for _ in range(draw(st.integers(0, 2))):
        values[draw(st.sampled_from(FIELDS))] = draw(st.sampled_from(_levels(config)))
    actor = draw(actors())
    if draw(st.integers(0, 3)):  # mostly staff of a role that reads patient data
        held = draw(st.sets(st.sampled_from(sorted(PATIENT_DATA_ROLES)), min_size=1, max_size=2))
        actor = dataclasses.replace(actor, kind=ActorKind.STAFF, roles=frozenset(held))
    ctx = rules.Context(
        actor=actor,
        counts=ActorCounts(**values, first_refusal_24h_at=draw(st.none() | st.none() | moments)),  # type: ignore[arg-type]
        at=at,
        channel=draw(st.sampled_from([Channel.CHART, Channel.CHART, Channel.SEARCH, Channel.LIST])),
        account_baseline=draw(baselines),
        role_baseline=draw(baselines),
        work_known=draw(st.booleans()),
        probation=draw(st.booleans()),
    )
    return config, ctx


def _judge(config: DetectionConfig, ctx: rules.Context) -> rules.Judge:
    return rules.Judge(
        config,
        actor=ctx.actor,
        account_baseline=ctx.account_baseline,
        role_baseline=ctx.role_baseline,
        work_known=ctx.work_known,
        probation=ctx.probation,
    )


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contexts())
def test_the_judge_finds_what_evaluate_finds(case: tuple[DetectionConfig, rules.Context]) -> None:
    config, ctx = case
    judge = _judge(config, ctx)
    reference = rules.evaluate(config, ctx)
    assert judge.findings(ctx) == reference
    if not ctx.denial and judge.silent(ctx.counts, ctx.at, ctx.channel, ctx.canaries, ctx.new_address):
        assert reference == []  # what the ledger relies on when it skips `findings`


@settings(max_examples=300, deadline=None)
@given(contexts(), st.data())
def test_a_judge_made_for_another_standing_still_answers_as_evaluate(
    case: tuple[DetectionConfig, rules.Context], data: st.DataObject
) -> None:
    """`findings` checks that the context is the one it was compiled for (else: `evaluate`)."""
    config, ctx = case
    other = data.draw(contexts())[1]
    judge = _judge(config, other)
    assert judge.findings(ctx) == rules.evaluate(config, ctx)


def _physician(second_factor_at: dt.datetime | None = None) -> Actor:
    return Actor(
        kind=ActorKind.STAFF,
        username="dr.quiet",
        roles=frozenset({Role.PHYSICIAN}),
        account_id=uuid.UUID(int=3),
        address="10.0.0.1",
        second_factor_at=second_factor_at,
    )


def test_a_read_far_below_every_threshold_runs_no_rule() -> None:
    """The reads' usual case: the judge answers alone, day and night, and the counts at each
    threshold are handed to the rules."""
    config = DetectionConfig()
    judge = rules.Judge(
        config,
        actor=_physician(),
        account_baseline=rules.Baseline(m15=10, h1=20, h24=60, off_hours_share=0.0),
        role_baseline=None,
        work_known=False,
        probation=False,
    )
    quiet = ActorCounts(patients_15m=5, patients_1h=12, patients_24h=40, patients_7d=150)
    noon = dt.datetime(2026, 3, 4, 11, 0, tzinfo=dt.UTC)
    assert judge.silent(quiet, noon, Channel.CHART, (), False)
    # 23:00 in Paris: a physician whose baseline shows no night work is noted (RECORD).
    night = dt.datetime(2026, 3, 4, 22, 0, tzinfo=dt.UTC)
    assert not judge.silent(quiet, night, Channel.CHART, (), False)
    # The step-up level of 15 minutes: max(40, 3 x 10) = 40, capped at 80.
    assert judge.silent(ActorCounts(patients_15m=39), noon, Channel.CHART, (), False)
    assert not judge.silent(ActorCounts(patients_15m=40), noon, Channel.CHART, (), False)
    assert not judge.silent(quiet, noon, Channel.CHART, (uuid.UUID(int=1),), False)
    assert not judge.silent(quiet, noon, Channel.EXPORT, (), False)
    asked = ActorCounts(first_refusal_24h_at=noon)
    assert not judge.silent(asked, noon, Channel.CHART, (), False)
