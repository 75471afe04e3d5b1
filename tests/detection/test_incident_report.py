"""`carnet incident report`: the exact patients an actor exposed, checked against the audit trail."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.cli import app
from carnet.detection.report import write_report
from carnet.kernel import clock
from carnet.kernel.errors import NotFound
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from carnet.settings import reset_settings_cache
from tests import factories as f


def _exposed_per_audit_trail(runtime: Runtime, actor_ref: str) -> set[str]:
    """Independently of the report: the patients of the actor's successful patient-data events."""
    with runtime.session_factory() as session:
        rows = session.execute(
            sa.select(AuditEvent.kind, AuditEvent.patient_ids).where(
                AuditEvent.actor_ref == actor_ref, AuditEvent.outcome == "success"
            )
        )
        return {p for kind, ids in rows if kind.startswith("phi:resource:") for p in json.loads(ids)}


def _scenario(runtime: Runtime) -> tuple[str, dict[str, str], str]:
    """A physician reads three of their patients and is refused one outside their care."""
    facility = f.make_facility(runtime)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    doctor = f.make_physician(runtime, facility)
    colleague = f.make_physician(runtime, facility)
    names = ["Arnaud", "Benoit", "Chevalier", "Dumas", "Etienne"]
    patients = {name: f.register_patient(runtime, facility, family=name, by=clerk).id for name in names}
    for name in names[:4]:
        f.link_care(
            runtime, patient_id=patients[name], practitioner_id=doctor.practitioner_id, facility_id=facility
        )
    f.link_care(
        runtime,
        patient_id=patients["Etienne"],
        practitioner_id=colleague.practitioner_id,
        facility_id=facility,
    )
    gate = Gate(runtime, doctor)
    for name in names[:3]:
        gate.read_patient(patient_id=patients[name])
    with pytest.raises(NotFound):
        gate.read_patient(patient_id=patients["Etienne"])  # refused: nothing left
    Gate(runtime, colleague).read_patient(patient_id=patients["Etienne"])
    return doctor.actor_ref, patients, clerk.actor_ref


def test_the_report_lists_exactly_what_the_audit_trail_says(runtime: Runtime, tmp_path: Path) -> None:
    start = clock.now()
    actor_ref, patients, _clerk = _scenario(runtime)

    files = write_report(
        runtime, actor=actor_ref, since=start, until=None, out=tmp_path / "r", operator="dpo"
    )

    document = json.loads(files.json.read_text())
    listed = {p["patient_id"] for p in document["patients"]}
    assert listed == _exposed_per_audit_trail(runtime, actor_ref)
    assert listed == {patients[n] for n in ("Arnaud", "Benoit", "Chevalier")}
    by_name = {p["family"]: p for p in document["patients"]}
    assert set(by_name) == {"Arnaud", "Benoit", "Chevalier"}
    arnaud = by_name["Arnaud"]
    assert arnaud["phone"] == "06 12 34 56 78" and arnaud["address"] == "1 rue de Test, Paris"
    assert arnaud["channels"] == ["chart"] and arnaud["sources"] == ["audit", "ledger"]
    assert "family" in arnaud["fields"] or "name" in arnaud["fields"]
    rows = files.csv.read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("patient_id,family,given")
    summary = files.summary.read_text()
    assert "Patients whose data was exposed: 3" in summary and "they agree on every patient" in summary
    assert not any(name in summary for name in patients)  # no patient data on the one-pager
    for path in (files.csv, files.json, files.summary):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    # Decrypting contacts went through the elevated door, which states why.
    with runtime.session_factory() as session:
        door = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.kind == AuditKind.PHI_SYSTEM_ACCESS.value)
        ).all()
        reported = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.kind == AuditKind.INCIDENT_REPORT.value)
        ).all()
    assert any("incident report for" in json.loads(e.detail)["reason"] for e in door)
    assert [e.username for e in reported] == ["system:dpo"]


def test_the_cli_writes_the_report_and_refuses_bad_input(
    sqlite_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = sqlite_runtime
    start = clock.now()
    actor_ref, patients, clerk_ref = _scenario(runtime)
    settings = runtime.settings
    monkeypatch.setenv("CARNET_ENV", "test")
    monkeypatch.setenv("CARNET_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("CARNET_VAR_DIR", str(settings.var_dir))
    reset_settings_cache()
    runner = CliRunner()
    try:
        out = tmp_path / "cli-report"
        since = start.isoformat()
        result = runner.invoke(
            app, ["incident", "report", "--actor", clerk_ref, "--since", since, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert "5 patients exposed" in result.output
        assert not any(name in result.output for name in patients)  # nothing of a patient on screen
        document = json.loads((out / "patients.json").read_text())
        assert {p["patient_id"] for p in document["patients"]} == _exposed_per_audit_trail(runtime, clerk_ref)

        for args, message in [
            (["--actor", "nobody", "--since", since], "no account named"),
            (["--actor", actor_ref, "--since", "yesterday"], "ISO 8601"),
            (["--actor", actor_ref, "--since", since, "--until", "2000-01-01"], "must come after"),
        ]:
            result = runner.invoke(app, ["incident", "report", *args])
            assert result.exit_code == 2, result.output
            assert message in result.output and "Traceback" not in result.output
    finally:
        reset_settings_cache()


def test_an_unknown_client_has_an_empty_report(sqlite_runtime: Runtime, tmp_path: Path) -> None:
    files = write_report(
        sqlite_runtime,
        actor=f"client:{uuid.uuid4()}",
        since=clock.now(),
        until=None,
        out=tmp_path,
        operator="x",
    )
    assert files.patients == 0
    assert "Patients whose data was exposed: 0" in files.summary.read_text()
