"""The export sweeper (carnet.phi.sweep): a job whose worker died is failed with a plain
reason, an unclaimed file is erased after its window, whoever polls or not; run by the server's
timer and by `carnet exports sweep`, audited through the system door. Time moves by the
movable clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from carnet.access.actor import Actor
from carnet.access.exports import approve_export, request_export
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.kernel.errors import NotFound
from carnet.patients.models import ExportFile
from carnet.phi.gate import STUCK_EXPORT, Gate
from carnet.phi.sweep import run_periodically, sweep_exports
from carnet.runtime import Runtime
from carnet.settings import Settings
from tests.factories import link_care, make_account, make_facility, make_physician, register_patient
from tests.fhir.conftest import Server

CARNET = str(Path(sys.executable).parent / "carnet")
PURPOSE = "revue de la file active pour l'audit qualité"


def _jobs(runtime: Runtime, count: int) -> tuple[Actor, list[str]]:
    """A physician with `count` approved, queued export jobs (none run yet)."""
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    officer = make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility)
    patient = register_patient(runtime, facility, family="Balayé")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)
    jobs = []
    for _ in range(count):
        asked = request_export(runtime, actor=doctor, purpose=PURPOSE, scope="care")
        approve_export(runtime, actor=officer, export_id=asked.id)
        jobs.append(gate.queue_export(export_id=asked.id).id)
    return doctor, jobs


def _job(runtime: Runtime, job_id: str) -> ExportFile:
    with runtime.session_factory() as session:
        job = session.get(ExportFile, uuid.UUID(job_id))
        assert job is not None
        session.expunge(job)
        return job


def _sweep_events(runtime: Runtime) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        rows = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.query == "export-sweep").order_by(AuditEvent.seq)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def test_sweep_fails_stuck_jobs_and_erases_unclaimed_files(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    doctor, (dead, done) = _jobs(runtime, 2)
    gate = Gate(runtime, doctor)
    gate.run_export_job(job_id=done, render=lambda _export: '{"resourceType": "Parameters"}\n')

    movable_clock.advance(dt.timedelta(minutes=20))
    assert sweep_exports(runtime).failed == []  # not stuck yet: nothing changes, nothing audited
    assert _sweep_events(runtime) == []

    # The worker of `dead` never ran it; `newer` is kicked off just now (its worker is alive).
    movable_clock.advance(dt.timedelta(minutes=11))
    newer = _jobs(runtime, 1)[1][0]
    report = sweep_exports(runtime)
    assert report.failed == [dead] and report.erased == []
    job = _job(runtime, dead)
    assert job.status == "failed" and job.failure == STUCK_EXPORT and job.ndjson_ct is None
    assert _job(runtime, newer).status == "running"
    assert gate.export_job(job_id=dead).failure == STUCK_EXPORT  # what the requester's poll says
    assert _job(runtime, done).status == "completed" and _job(runtime, done).ndjson_ct is not None

    # A day after completion the unclaimed file is erased, though nobody polled it.
    movable_clock.advance(dt.timedelta(hours=24))
    report = sweep_exports(runtime)
    assert report.erased == [done] and report.failed == [newer]
    job = _job(runtime, done)
    assert job.status == "expired" and job.ndjson_ct is None
    with pytest.raises(NotFound):
        gate.download_export(job_id=done)

    events = _sweep_events(runtime)
    assert len(events) == 2 and all(
        e.outcome == "success" and e.kind == "phi:resource:export" for e in events
    )
    assert dead in events[0].resource_ids and done in events[1].resource_ids
    assert events[0].username == "system:export-sweeper"
    assert sweep_exports(runtime) == type(report)()  # nothing left: nothing changed
    assert len(_sweep_events(runtime)) == 2


def test_a_poll_says_why_a_stuck_job_failed(fhir_server: Server, movable_clock: clock.MovableClock) -> None:
    runtime = fhir_server.runtime
    doctor, (dead,) = _jobs(runtime, 1)
    client = fhir_server.client_for(doctor)
    movable_clock.advance(dt.timedelta(minutes=31))
    with pytest.raises(OperationOutcome) as failed:  # 422, whether the sweeper ran or not
        client.execute(f"$export-status/{dead}", method="get")
    assert "did not complete within 30 minutes" in str(failed.value)
    assert _job(runtime, dead).status == "failed"
    # Anyone else polling it learns nothing (404, as for a missing job).
    other = make_physician(runtime, make_facility(runtime))
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(other).execute(f"$export-status/{dead}", method="get")


def test_the_server_timer_sweeps(sqlite_runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    runtime = sqlite_runtime
    _doctor, (dead,) = _jobs(runtime, 1)
    movable_clock.advance(dt.timedelta(minutes=45))

    async def tick() -> None:
        timer = asyncio.create_task(run_periodically(runtime, every=0.05))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if _job(runtime, dead).status != "running":
                break
        timer.cancel()

    asyncio.run(tick())
    assert _job(runtime, dead).status == "failed"


def _cli(settings: Settings, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}
    env.update({"CARNET_ENV": "test", "CARNET_VAR_DIR": str(settings.var_dir), "CARNET_DATABASE_URL": url})
    return subprocess.run([CARNET, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_command(sqlite_runtime: Runtime, settings: Settings, sqlite_url: str) -> None:
    # The command runs in its own process on the real clock: a job queued two hours "ago".
    _doctor, (dead,) = _jobs(sqlite_runtime, 1)
    with sqlite_runtime.session_factory.begin() as session:
        session.execute(
            sa.update(ExportFile)
            .where(ExportFile.id == uuid.UUID(dead))
            .values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
        )
    result = _cli(settings, sqlite_url, "exports", "sweep", "--stuck-after", "60")
    assert result.returncode == 0, result.stderr
    assert "failed 1 stuck export job(s), erased 0 unclaimed file(s)" in result.stdout
    assert f"failed {dead}" in result.stdout
    assert _job(sqlite_runtime, dead).status == "failed"
    for args in (
        ("--stuck-after", "0"),
        ("--stuck-after", "soon"),
        ("--file-window", "48"),
        ("--operator", "x"),
    ):
        bad = _cli(settings, sqlite_url, "exports", "sweep", *args)
        assert bad.returncode == 2 and "error" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_the_app_runs_the_timer_while_it_serves(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from carnet.app import create_app
    from carnet.phi import sweep

    ticks: list[float] = []
    stopped: list[bool] = []

    async def timer(runtime: Runtime, *, every: float) -> None:
        ticks.append(every)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append(True)
            raise

    monkeypatch.setattr(sweep, "run_periodically", timer)
    with TestClient(create_app(sqlite_runtime)) as client:
        assert client.get("/healthz").status_code == 200
        assert ticks == [sqlite_runtime.settings.export_sweep_seconds] and ticks[0] > 0
    assert stopped == [True]  # cancelled at shutdown
