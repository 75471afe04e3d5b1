"""`carnet import`: FHIR Bundles and Bulk NDJSON through the audited system door. A transaction
is all or nothing; each rejected resource is reported with its OperationOutcome; references
resolve within the run; the imported patients are then readable through the gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.phi.gate import Gate
from carnet.phi.importer import import_files
from carnet.runtime import Runtime
from carnet.settings import Settings
from tests.factories import link_care, make_account, make_facility, make_physician

INS = "urn:oid:1.2.250.1.213.1.4.8"
CARNET = str(Path(sys.executable).with_name("carnet"))


def _patient(source_id: str, ins: str, family: str = "Import", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": source_id,
        "identifier": [{"system": INS, "value": ins}],
        "name": [{"family": family, "given": ["Léa"]}],
        "gender": "female",
        "birthDate": "1990-01-02",
        **extra,
    }


def _observation(subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2026-01-02T10:00:00+00:00",
        "valueQuantity": {"value": 72, "unit": "/min"},
    }


def _ndjson(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources), encoding="utf-8")
    return path


def test_ndjson_keeps_the_valid_and_reports_each_rejected(runtime: Runtime, tmp_path: Path) -> None:
    facility = make_facility(runtime)
    patients = _ndjson(
        tmp_path / "Patient.ndjson",
        [
            _patient("a", "2900175000001"),
            _patient("b", "2900175000002", family="Deux"),
            _patient("c", "2900175000001", family="Doublon"),  # the same INS again
            {k: v for k, v in _patient("d", "2900175000004").items() if k != "birthDate"},
        ],
    )
    observations = _ndjson(
        tmp_path / "Observation.ndjson",
        [
            _observation("Patient/a"),
            _observation("Patient/b"),
            _observation("Patient/zzz"),
            {"resourceType": "Dupont Jean", "birthDate": "1990-01-02"},  # not a type: never echoed
        ],
    )
    report = import_files(
        runtime, paths=[patients, observations], facility_id=facility, operator="test-import"
    )
    assert report.accepted == {"Patient": 2, "Observation": 2}
    assert sorted(r.source for r in report.rejected) == [
        "Observation.ndjson:3",
        "Observation.ndjson:4",
        "Patient.ndjson:3",
        "Patient.ndjson:4",
    ]
    assert "Dupont" not in json.dumps([(r.resource_type, r.outcome) for r in report.rejected])
    for r in report.rejected:
        assert r.outcome["resourceType"] == "OperationOutcome"
        assert "Doublon" not in json.dumps(r.outcome)  # diagnostics name fields, never the data

    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    found = Gate(runtime, clerk).search_patients(identifier="2900175000002")
    assert [p.family for p in found.items] == ["Deux"]
    with runtime.session_factory() as session:
        events = session.execute(
            select(AuditEvent.kind, AuditEvent.username).where(AuditEvent.username == "system:test-import")
        ).all()
    kinds = [k for k, _u in events]
    assert kinds.count("phi:system:access") == 2 and kinds.count("phi:resource:create") == 2


def test_a_transaction_bundle_is_all_or_nothing(runtime: Runtime, tmp_path: Path) -> None:
    facility = make_facility(runtime)
    urn = f"urn:uuid:{uuid.uuid4()}"

    def bundle(valid: bool) -> dict[str, Any]:
        observation = _observation(urn)
        if not valid:
            observation.pop("effectiveDateTime")
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": urn,
                    "resource": _patient("x", "2900175000009"),
                    "request": {"method": "POST", "url": "Patient"},
                },
                {"resource": observation, "request": {"method": "POST", "url": "Observation"}},
            ],
        }

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bundle(False)))
    report = import_files(runtime, paths=[bad], facility_id=facility, operator="test-import")
    assert report.accepted == {} and len(report.rejected) == 2
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    assert Gate(runtime, clerk).search_patients(identifier="2900175000009").items == []

    good = tmp_path / "good.json"
    good.write_text(json.dumps(bundle(True)))
    report = import_files(runtime, paths=[good], facility_id=facility, operator="test-import")
    assert report.accepted == {"Patient": 1, "Observation": 1} and report.rejected == []
    assert len(Gate(runtime, clerk).search_patients(identifier="2900175000009").items) == 1


def _cli(settings: Settings, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}
    env.update({"CARNET_ENV": "test", "CARNET_VAR_DIR": str(settings.var_dir), "CARNET_DATABASE_URL": url})
    return subprocess.run([CARNET, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_command(sqlite_runtime: Runtime, settings: Settings, sqlite_url: str, tmp_path: Path) -> None:
    facility = make_facility(sqlite_runtime)
    good = _ndjson(
        tmp_path / "Patient.ndjson", [_patient("a", "2900175000011"), _patient("b", "2900175000011")]
    )
    result = _cli(
        settings, sqlite_url, "import", str(good), "--facility", str(facility), "--operator", "hl7-feed"
    )
    assert result.returncode == 1, result.stderr  # one rejected
    assert "imported: 1 Patient" in result.stdout
    assert "rejected Patient.ndjson:2 (Patient)" in result.stdout and "INS" in result.stdout
    assert "Traceback" not in result.stderr + result.stdout

    for args in (("import", str(tmp_path / "missing.ndjson")), ("import", str(good), "--facility", "nope")):
        bad = _cli(settings, sqlite_url, *args)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert "error" in bad.stderr


def _report(subject: str, results: list[str], source_id: str | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8", "display": "Bilan"}]},
        "subject": {"reference": subject},
        "issued": "2026-01-02T11:00:00+00:00",
        "conclusion": "Bilan normal.",
        "result": [{"reference": r} for r in results],
    }
    if source_id:
        report["id"] = source_id
    return report


def test_lab_reports_link_their_results_in_any_order_and_file(runtime: Runtime, tmp_path: Path) -> None:
    facility = make_facility(runtime)
    patient_urn, first, second = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": patient_urn, "resource": _patient("p", "2900175000071")},
            # The report before its results: they link all the same.
            {"resource": _report(patient_urn, [first, second])},
            {"fullUrl": first, "resource": _observation(patient_urn)},
            {"fullUrl": second, "resource": _observation(patient_urn)},
        ],
    }
    path = tmp_path / "lab.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    observations = _ndjson(tmp_path / "Observation.ndjson", [dict(_observation("Patient/p"), id="o1")])
    reports = _ndjson(
        tmp_path / "DiagnosticReport.ndjson",
        [_report("Patient/p", ["Observation/o1"]), _report("Patient/p", ["Observation/nowhere"])],
    )
    report = import_files(
        runtime, paths=[path, observations, reports], facility_id=facility, operator="lab-import"
    )
    assert report.accepted == {"Patient": 1, "DiagnosticReport": 2, "Observation": 3}
    assert [(r.source, r.resource_type) for r in report.rejected] == [
        ("DiagnosticReport.ndjson:2", "DiagnosticReport")
    ]
    assert "DiagnosticReport.result[0]" in report.rejected[0].outcome["issue"][0]["diagnostics"]

    doctor = make_physician(runtime, facility)
    patient = (
        Gate(runtime, make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility))
        .search_patients(identifier="2900175000071")
        .items[0]
    )
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    labs = Gate(runtime, doctor).list_diagnostic_reports(patient_id=patient.id)
    assert sorted(len(lab.result_ids or []) for lab in labs) == [1, 2]
    assert {lab.conclusion for lab in labs} == {"Bilan normal."}
    observation_ids = {o.id for o in Gate(runtime, doctor).list_observations(patient_id=patient.id)}
    assert {i for lab in labs for i in lab.result_ids or []} == observation_ids
