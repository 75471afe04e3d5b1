"""The slow drip over simulated days: under every 24-hour floor, it is still contained, by the
patients it reads that have no business with the facility and by its unanswered step-ups."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from carnet.audit.models import AuditEvent
from carnet.cli import app
from carnet.detection.config import get_detection_config
from carnet.detection.models import Alert, Exposure
from carnet.kernel import clock
from carnet.phi.exercise import exercise_targets
from carnet.redteam.drip import run_drip
from carnet.runtime import Runtime
from carnet.settings import reset_settings_cache
from carnet.synth.seed import seed_hospital


def test_a_drip_under_the_daily_floor_is_contained_by_its_patients_outside_the_desks_work(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    seed_hospital(sqlite_runtime, patients=900, seed=8, facilities=1)
    targets = exercise_targets(sqlite_runtime, sample=900)
    floors = get_detection_config().role_volume

    # Billing at 4 an hour stays far under its 24-hour floor; the register's patients it reads
    # mostly have no business with the facility: a step-up it cannot answer, then containment.
    slow = run_drip(
        sqlite_runtime, role="billing", targets=targets, days=2, per_hour=4, movable=movable_clock
    )
    assert slow.busiest_day < floors["billing"].h24
    assert slow.result.contained and slow.hours_to_containment is not None, slow
    assert slow.step_ups >= 1 and slow.result.exposed_count <= 25, slow
    with sqlite_runtime.session_factory() as session:
        rules = set(session.scalars(sa.select(Alert.rule).where(Alert.username == slow.result.username)))
    assert {"outside-work", "persistence"} <= rules

    # Front desk drips 20 an hour: contained the same day.
    fast = run_drip(
        sqlite_runtime, role="front_desk", targets=targets, days=2, per_hour=20, movable=movable_clock
    )
    assert fast.result.contained and fast.hours_to_containment is not None
    assert fast.hours_to_containment <= 24 and fast.step_ups >= 1
    assert fast.result.exposed_count <= 60, fast


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
