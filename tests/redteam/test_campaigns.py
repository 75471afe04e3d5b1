"""Issue 15 over HTTP: a campaign of stolen sessions from one machine is correlated, stepped up
and contained as one, explained in one alert; the benign month keeps night shifts and staff who
join mid-month at work."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from carnet.access.roles import Role
from carnet.detection.models import Alert
from carnet.kernel import clock
from carnet.phi.exercise import exercise_targets
from carnet.redteam.benign import on_nights, run_benign
from carnet.redteam.playbooks import TEAM_PLAYBOOKS, exposure_table, run_playbooks
from carnet.runtime import Runtime
from carnet.synth.seed import base_day, seed_hospital
from tests import factories as f
from tests.fhir.conftest import serve


def test_campaigns_are_mixed_roles() -> None:
    teams = {t.name: t for t in TEAM_PLAYBOOKS}
    assert len(teams["campaign-5"].members) == 5 and len(teams["campaign-20"].members) == 20
    roles = {m.role for m in teams["campaign-20"].members}
    assert roles == {"physician", "nurse", "front_desk", "billing"}


@pytest.mark.slow
def test_a_five_account_campaign_is_contained_as_one(sqlite_runtime: Runtime) -> None:
    seed_hospital(sqlite_runtime, patients=1500, seed=6, facilities=1)
    targets = exercise_targets(sqlite_runtime, sample=300)
    for url in serve(sqlite_runtime):
        (result,) = run_playbooks(
            sqlite_runtime, base_url=url, targets=targets, names=["campaign-5"], max_requests=120
        )
    table = exposure_table([result])
    assert result.contained, table
    assert result.exposed_count <= 60, table
    with sqlite_runtime.session_factory() as session:
        alerts = list(
            session.scalars(
                sa.select(Alert).where(Alert.rule == "campaign", Alert.actor_ref == "system:campaign")
            )
        )
    # One alert explains the campaign and names every account of it.
    assert len(alerts) == 1, [a.sentence for a in alerts]
    for username in result.username.split("+"):
        assert username in alerts[0].sentence


def test_night_rotation_is_one_week_in_three_for_one_clinician_in_five() -> None:
    nights = [[on_nights(position, day) for day in range(21)] for position in range(10)]
    assert sum(nights[0]) == 7 and sum(nights[5]) == 7
    assert not any(nights[1]) and not any(nights[9])


@pytest.mark.slow
def test_night_shifts_and_joiners_are_neither_contained_nor_stepped_up_often(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    seed_hospital(sqlite_runtime, patients=1500, seed=8, facilities=1)
    f.make_account(sqlite_runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=None)  # a second one
    first = base_day().date() - dt.timedelta(days=2)
    result = run_benign(sqlite_runtime, days=4, first_day=first, movable=movable_clock)
    assert result.night_shifts > 0
    assert len(result.joiners) == 6, result.joiners
    assert result.containments == []
    assert result.step_ups_per_clinician_week <= 1.0, result.account_step_ups
