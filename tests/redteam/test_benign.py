"""The benign workload: clinicians working their lists, front desk checking in, booking and
registering, billing invoicing — never contained, rarely asked for a second factor."""

from __future__ import annotations

import datetime as dt

from carnet.kernel import clock
from carnet.redteam.benign import run_benign
from carnet.runtime import Runtime
from carnet.synth.seed import base_day, seed_hospital


def test_a_hospitals_staff_at_work_are_never_contained(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    seed_hospital(sqlite_runtime, patients=600, seed=8, facilities=1)
    first = base_day().date() - dt.timedelta(days=3)
    result = run_benign(sqlite_runtime, days=5, first_day=first, limit=4, movable=movable_clock)
    assert result.clinician_days >= 5 and result.patients_opened > 0
    # Front desk and billing worked too: check-ins, bookings, registrations, invoices.
    assert result.staff_days["front_desk"] >= 5 and result.staff_days["billing"] >= 5, result.staff_days
    assert result.bookings > 0 and result.registrations > 0
    assert result.containments == []
    assert result.step_ups_per_clinician_week <= 1.0
    for role in ("physician", "nurse", "front_desk", "billing"):
        assert result.step_ups_per_week(role) <= 1.0, (role, result.role_step_ups)
