"""The benign workload: clinicians working their lists, front desk checking in, booking and
registering, billing invoicing — never contained, rarely asked for a second factor."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from carnet.cli import app
from carnet.detection.models import Exposure
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput
from carnet.redteam.benign import run_benign, staff
from carnet.runtime import Runtime
from carnet.settings import reset_settings_cache
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
    assert result.step_ups_per_clinician_week <= 1.0, (result.role_step_ups, result.account_step_ups)
    for role in ("physician", "nurse", "front_desk", "billing"):
        assert result.step_ups_per_week(role) <= 1.0, (role, result.role_step_ups)


def test_benign_command_refuses_production(sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARNET_ENV", "production")
    monkeypatch.setenv("CARNET_DATABASE_URL", sqlite_runtime.settings.resolved_database_url)
    monkeypatch.setenv("CARNET_VAR_DIR", str(sqlite_runtime.settings.var_dir))
    reset_settings_cache()
    try:
        result = CliRunner().invoke(app, ["redteam", "benign", "--days", "1"])
    finally:
        reset_settings_cache()
    assert result.exit_code == 2 and "CARNET_ENV must be demo or test" in result.output, result.output
    with sqlite_runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Exposure)) == 0


def test_shards_share_out_the_staff(sqlite_runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    seed_hospital(sqlite_runtime, patients=300, seed=8, facilities=1)
    first = base_day().date()
    halves = [
        run_benign(sqlite_runtime, days=1, first_day=first, limit=2, movable=movable_clock, shard=(i, 2))
        for i in range(2)
    ]
    worked = [sum(h.staff_days.values()) for h in halves]
    everyone = len(staff(sqlite_runtime, limit=2))
    assert sum(worked) == everyone and all(worked), (worked, everyone)
    with pytest.raises(InvalidInput, match="i/n"):
        run_benign(sqlite_runtime, days=1, first_day=first, movable=movable_clock, shard=(2, 2))


def test_benign_command_refuses_a_bad_shard(sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARNET_ENV", "test")
    monkeypatch.setenv("CARNET_DATABASE_URL", sqlite_runtime.settings.resolved_database_url)
    monkeypatch.setenv("CARNET_VAR_DIR", str(sqlite_runtime.settings.var_dir))
    reset_settings_cache()
    try:
        result = CliRunner().invoke(app, ["redteam", "benign", "--days", "1", "--shard", "3/2"])
    finally:
        reset_settings_cache()
    assert result.exit_code == 2 and "--shard must be I/N" in result.output, result.output
