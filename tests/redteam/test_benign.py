"""The benign workload: clinicians working their day lists are never contained."""

from __future__ import annotations

import datetime as dt

from carnet.kernel import clock
from carnet.redteam.benign import run_benign
from carnet.runtime import Runtime
from carnet.synth.seed import base_day, seed_hospital


def test_clinicians_working_their_lists_are_never_contained(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    seed_hospital(sqlite_runtime, patients=600, seed=8, facilities=1)
    first = base_day().date() - dt.timedelta(days=3)
    result = run_benign(sqlite_runtime, days=5, first_day=first, limit=4, movable=movable_clock)
    assert result.clinician_days >= 5 and result.patients_opened > 0
    assert result.containments == []
    assert result.step_ups_per_clinician_week <= 1.0
