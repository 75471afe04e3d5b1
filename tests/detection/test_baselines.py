"""Baselines: learnt from the ledger, they lift a busy account's thresholds, within a cap."""

from __future__ import annotations

import datetime as dt

import pytest

from carnet.access.roles import Role
from carnet.detection.baselines import p95, refresh_baselines
from carnet.detection.config import get_detection_config
from carnet.detection.models import ExposureBaseline
from carnet.kernel import clock
from carnet.kernel.errors import StepUpRequired
from carnet.runtime import Runtime
from tests import factories as f
from tests.detection.helpers import expose, make_actor, new_patients

MONDAY = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)  # 09:00 in Paris


def test_p95_is_the_nearest_rank() -> None:
    assert p95([]) == 0
    assert p95([7]) == 7
    assert p95(list(range(1, 101))) == 95
    assert p95([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 40]) == 1


def test_refresh_learns_accounts_and_roles(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    facility = f.make_facility(runtime)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    for day in range(3):
        for hour in range(4):
            movable_clock.set(MONDAY + dt.timedelta(days=day, hours=hour))
            expose(runtime, clerk, new_patients(25))
    movable_clock.set(MONDAY + dt.timedelta(days=3))
    with runtime.session_factory.begin() as session:
        done = refresh_baselines(session, config=get_detection_config(), days=7)
    assert (done.accounts, done.roles, done.exposures) == (1, 1, 300)
    with runtime.session_factory() as session:
        mine = session.get(ExposureBaseline, clerk.actor_ref)
        role = session.get(ExposureBaseline, "role:front_desk")
    assert mine is not None and (mine.m15, mine.h1, mine.h24, mine.off_hours_share) == (25, 25, 100, 0.0)
    assert role is not None and (role.m15, role.h1, role.h24) == (25, 25, 100)


def test_a_busy_account_baseline_lifts_its_threshold_up_to_the_cap(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    runtime = sqlite_runtime
    movable_clock.set(MONDAY)
    busy = make_actor(runtime, "desk.busy", Role.FRONT_DESK)
    quiet = make_actor(runtime, "desk.quiet", Role.FRONT_DESK)
    with runtime.session_factory.begin() as session:
        session.add(
            ExposureBaseline(
                subject=busy.actor_ref, m15=40, h1=90, h24=300, off_hours_share=0.0, computed_at=clock.now()
            )
        )
    for _ in range(4):  # 50 patients every 15 minutes: 200 in the hour
        expose(runtime, busy, new_patients(50))
        movable_clock.advance(dt.timedelta(minutes=15))
    movable_clock.set(MONDAY + dt.timedelta(hours=3))
    for _ in range(2):
        expose(runtime, quiet, new_patients(50))
        movable_clock.advance(dt.timedelta(minutes=15))
    with pytest.raises(StepUpRequired, match="150"):  # the role's floor for an hour
        expose(runtime, quiet, new_patients(50))
    # The cap: twice the floor (300 an hour) whatever the baseline says.
    movable_clock.set(MONDAY + dt.timedelta(hours=6))
    with pytest.raises(StepUpRequired, match=r"\(120\)"):  # 15 minutes: min(3 x 40, 2 x 60)
        expose(runtime, busy, new_patients(120))
