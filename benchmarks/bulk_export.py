"""Cost of a multi-type Bulk Data job (issue #16): every patient-compartment type of a
physician's care population against the Patient-only job of the same patients, same run.

1. patient-only: Gate.run_bulk_export_job of an approved request with `_type=Patient`.
2. all types: the same with every type carnet exports (each patient's chart sections read as a
   read gives them, one NDJSON file per type, encrypted), then every file downloaded.

Each patient holds `--records` Observations and as many Conditions. Process CPU (time.process_time:
the load of a shared machine inflates it less than wall time) and wall time, median of rounds.

    .venv/bin/python -m benchmarks.bulk_export [--patients 200] [--records 3] [--rounds 3] [--sqlite]

PostgreSQL by default (its own throwaway database on CARNET_BENCH_POSTGRES_URL). Detection's
thresholds for the physician's writes and exports are raised for the run: it measures the export
path, not detection's answer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
import uuid

import sqlalchemy as sa

from benchmarks._db import bench_runtime
from benchmarks.export_cost import _officer
from benchmarks.gate_cost import _seed
from carnet.access.actor import Actor
from carnet.access.exports import ExportScope, approve_export, request_export
from carnet.detection.config import RoleVolume
from carnet.detection.ledger import SqlExposureLedger
from carnet.fhir.operations.export import EXPORTED_TYPES, render_bulk
from carnet.kernel import clock
from carnet.patients.models import CareRelationship, Patient
from carnet.phi.gate import Gate
from carnet.phi.schemas import ConditionInput, ObservationInput
from carnet.phi.system import system_access
from carnet.runtime import Runtime


def _records(gate: Gate, patients: list[str], per_patient: int) -> None:
    when = clock.now() - dt.timedelta(days=2)
    for pid in patients:
        for i in range(per_patient):
            gate.record_observation(
                data=ObservationInput(
                    patient_id=pid,
                    category="laboratory",
                    code="718-7",
                    display="Hémoglobine",
                    value_number=12.0 + i,
                    unit="g/dL",
                    effective_at=when + dt.timedelta(minutes=i),
                )
            )
            gate.record_condition(data=ConditionInput(patient_id=pid, code=f"E1{i % 10}", display="Diabète"))


def _all_in_care(runtime: Runtime, actor: Actor) -> list[uuid.UUID]:
    """Every seeded patient in the physician's care team (the seed puts a few only)."""
    assert actor.practitioner_id is not None and actor.facility_id is not None
    with runtime.session_factory() as session:
        ids = list(session.scalars(sa.select(Patient.id)))
        linked = set(session.scalars(sa.select(CareRelationship.patient_id)))
    with system_access(runtime, reason="benchmark seed") as door:
        for pid in set(ids) - linked:
            door.session.add(
                CareRelationship(
                    patient_id=pid,
                    practitioner_id=actor.practitioner_id,
                    facility_id=actor.facility_id,
                    kind="care_team",
                    start_at=clock.now() - dt.timedelta(days=1),
                )
            )
    return ids


def _job(runtime: Runtime, actor: Actor, officer: Actor, types: list[str]) -> tuple[float, float, int]:
    asked = request_export(
        runtime,
        actor=actor,
        purpose="benchmark of the bulk path",
        scope=ExportScope.CARE,
        resource_types=types,
    )
    approve_export(runtime, actor=officer, export_id=asked.id)
    gate = Gate(runtime, actor)
    job = gate.kick_off_export(export_id=asked.id)
    cpu, wall = time.process_time(), time.perf_counter()
    gate.start_export_job(job_id=job.id)
    done = gate.run_bulk_export_job(job_id=job.id, render=render_bulk)
    size = sum(len(gate.download_export_file(job_id=job.id, resource_type=t)) for t in done.outputs or {})
    return time.process_time() - cpu, time.perf_counter() - wall, size


def measure(runtime: Runtime, patients: int, records: int, rounds: int) -> str:
    actor, _some = _seed(runtime, patients)
    care = _all_in_care(runtime, actor)
    ledger = runtime.ledger
    assert isinstance(ledger, SqlExposureLedger)
    huge = RoleVolume(m15=10**9, h1=10**9, h24=10**9)
    ledger.config = ledger.config.model_copy(
        update={
            "export_step_up_24h": 10**9,
            # the officer approves one request per job: an administration volume, not measured here
            "admin_alert_1h": 10**6,
            "admin_alert_24h": 10**6,
            "installation_admin_alert_1h": 10**6,
            "installation_admin_alert_24h": 10**6,
            "role_volume": {k: huge for k in ledger.config.role_volume},
            "weekly_volume": {k: 10**9 for k in ledger.config.weekly_volume},
        }
    )
    _records(Gate(runtime, actor), [str(p) for p in care], records)
    officer = _officer(runtime)
    load_before = os.getloadavg()
    timings: dict[str, list[tuple[float, float, int]]] = {"patient": [], "all": []}
    for _ in range(rounds):
        timings["patient"].append(_job(runtime, actor, officer, ["Patient"]))
        timings["all"].append(_job(runtime, actor, officer, list(EXPORTED_TYPES)))
    load_after = os.getloadavg()
    cpu = {k: statistics.median(t[0] for t in v) for k, v in timings.items()}
    wall = {k: statistics.median(t[1] for t in v) for k, v in timings.items()}
    size = {k: v[-1][2] for k, v in timings.items()}
    return "\n".join(
        [
            f"{runtime.engine.dialect.name}, {len(care):,} patients in care, {records} Observations and"
            f" {records} Conditions each, {rounds} interleaved rounds, median",
            f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}",
            "",
            "| job | process CPU | wall | NDJSON |",
            "|---|---|---|---|",
            _row("Patient only", cpu["patient"], wall["patient"], size["patient"]),
            _row(f"all {len(EXPORTED_TYPES)} types", cpu["all"], wall["all"], size["all"]),
            "",
            f"- all types / Patient only: **{cpu['all'] / cpu['patient']:.1f}x** CPU;"
            f" {cpu['all'] / len(care) * 1e3:,.1f} ms CPU per patient for every type",
            json.dumps({"cpu": cpu, "wall": wall}),
        ]
    )


def _row(name: str, cpu: float, wall: float, size: int) -> str:
    return f"| {name} | {cpu * 1e3:,.0f} ms | {wall * 1e3:,.0f} ms | {size / 1e3:,.0f} kB |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--records", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    with bench_runtime("bulk", sqlite=args.sqlite) as runtime:
        print(measure(runtime, args.patients, args.records, args.rounds))


if __name__ == "__main__":
    main()
