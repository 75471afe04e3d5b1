"""The slow drip over simulated days: under the 24-hour floor it is never stopped (what it
exposes is bounded by that floor), a little above it, it is contained within the first day."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from carnet.audit.models import AuditEvent
from carnet.cli import app
from carnet.detection.config import get_detection_config
from carnet.detection.models import Exposure
from carnet.kernel import clock
from carnet.phi.exercise import exercise_targets
from carnet.redteam.drip import run_drip
from carnet.runtime import Runtime
from carnet.settings import reset_settings_cache
from carnet.synth.seed import seed_hospital


def test_a_drip_under_the_daily_floor_is_bounded_by_it_and_a_faster_one_is_contained(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    seed_hospital(sqlite_runtime, patients=900, seed=8, facilities=1)
    targets = exercise_targets(sqlite_runtime, sample=900)
    floors = get_detection_config().role_volume
    floor = floors["billing"].h24

    slow = run_drip(
        sqlite_runtime, role="billing", targets=targets, days=2, per_hour=4, movable=movable_clock
    )
    assert not slow.result.contained and slow.hours == 48
    assert slow.result.exposed_count == 2 * 24 * 4 and slow.busiest_day < floor

    # Front desk drips 20 an hour: over its daily floor before the first day ends.
    fast = run_drip(
        sqlite_runtime, role="front_desk", targets=targets, days=2, per_hour=20, movable=movable_clock
    )
    assert fast.result.contained and fast.hours_to_containment is not None
    assert fast.hours_to_containment <= 24 and fast.step_ups >= 1
    assert fast.result.exposed_count <= floors["front_desk"].h24 + 20, fast


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ("production", [], "CARNET_ENV must be demo or test"),
        ("test", ["--role", "janitor"], "--role must be one of: billing, front_desk, nurse, physician"),
        ("test", ["--per-hour", "0"], "per-hour"),
    ],
)
def test_drip_command_refuses_production_and_bad_input(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch, env: str, args: list[str], message: str
) -> None:
    monkeypatch.setenv("CARNET_ENV", env)
    monkeypatch.setenv("CARNET_DATABASE_URL", sqlite_runtime.settings.resolved_database_url)
    monkeypatch.setenv("CARNET_VAR_DIR", str(sqlite_runtime.settings.var_dir))
    reset_settings_cache()
    try:
        result = CliRunner().invoke(app, ["redteam", "drip", *args])
    finally:
        reset_settings_cache()
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output
    with sqlite_runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Exposure)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) == 0
