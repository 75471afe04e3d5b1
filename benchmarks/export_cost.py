"""Cost of an approved export: Gate.export of a physician's whole care population against
decrypting the same patients without the gate, same run.

1. direct: load the patients by id and decrypt the fields a physician sees, no gate.
2. gate: Gate.export of an approved request (scope `care`) -- request check, care relationships
   in chunks, policy per patient, redaction, one exposure row per patient, audit, request used.
   The request and its approval (carnet.access.exports) are timed apart.
3. rendered: the same, rendered as the NDJSON the FHIR API answers (carnet.fhir.operations.export.render).
4. async: the Bulk Data kick-off path -- Gate.queue_export, Gate.run_export_job (the export,
   rendered, the file encrypted and stored), Gate.download_export (decrypted, erased).

    .venv/bin/python -m benchmarks.export_cost [--patients 1000] [--rounds 5] [--sqlite]

PostgreSQL by default (creates and drops its own database on CARNET_BENCH_POSTGRES_URL).
Detection's physician volume and export thresholds are raised for the run: with the defaults an
approved export of more than 20 patients contains its requester (see docs/BENCHMARKS.md), and
this measures the export path, not detection's answer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import uuid

import sqlalchemy as sa

from benchmarks._db import bench_runtime
from benchmarks.gate_cost import _direct_view, _seed
from carnet.access.actor import Actor, ActorKind
from carnet.access.exports import approve_export, request_export
from carnet.access.models import RoleGrant
from carnet.access.roles import Role
from carnet.detection.ledger import SqlExposureLedger
from carnet.fhir.operations.export import render
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.patients.models import CareRelationship, Patient
from carnet.phi.gate import Gate
from carnet.phi.system import system_access
from carnet.runtime import Runtime


def _officer(runtime: Runtime) -> Actor:
    now = clock.now()
    with runtime.session_factory.begin() as session:
        account = Account(
            username="bench-officer",
            display_name="Bench",
            kind="staff",
            password_hash="-",
            status="active",
            created_at=now,
            password_changed_at=now,
        )
        session.add(account)
        session.flush()
        session.add(
            RoleGrant(
                account_id=account.id,
                role="security_officer",
                facility_id=None,
                status="active",
                requested_at=now,
                reason="bench",
            )
        )
        account_id = account.id
    return Actor(
        kind=ActorKind.STAFF,
        username="bench-officer",
        roles=frozenset({Role.SECURITY_OFFICER}),
        account_id=account_id,
        session_id=uuid.uuid4(),
        address="127.0.0.1",
        second_factor_at=now,
    )


def measure(runtime: Runtime, patients: int, rounds: int) -> str:
    actor, care = _seed(runtime, patients)
    with runtime.session_factory() as session:
        all_ids = list(session.scalars(sa.select(Patient.id)))
    assert actor.practitioner_id is not None and actor.facility_id is not None
    with system_access(runtime, reason="benchmark seed") as door:
        for pid in set(all_ids) - set(care):
            door.session.add(
                CareRelationship(
                    patient_id=pid,
                    practitioner_id=actor.practitioner_id,
                    facility_id=actor.facility_id,
                    kind="care_team",
                    start_at=clock.now() - dt.timedelta(days=1),
                )
            )
    officer = _officer(runtime)
    ledger = runtime.ledger
    assert isinstance(ledger, SqlExposureLedger)
    # A large approved export asks for a fresh second factor, which a benchmark cannot give.
    ledger.config = ledger.config.model_copy(update={"export_step_up_24h": 10**9})

    def direct() -> int:
        with runtime.session_factory() as session:
            rows = list(session.scalars(sa.select(Patient).where(Patient.id.in_(all_ids))))
            return len([_direct_view(runtime, p) for p in rows])

    timings: dict[str, list[float]] = {"direct": [], "decide": [], "gate": [], "rendered": [], "async": []}
    exported = 0
    size = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        direct()
        timings["direct"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        asked = request_export(runtime, actor=actor, purpose="benchmark of the export path", scope="care")
        approve_export(runtime, actor=officer, export_id=asked.id)
        timings["decide"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        exported = len(Gate(runtime, actor).export(export_id=asked.id).items)
        timings["gate"].append(time.perf_counter() - t0)
        gate = Gate(runtime, actor)
        for mode in ("rendered", "async"):
            asked = request_export(runtime, actor=actor, purpose="benchmark of the export path", scope="care")
            approve_export(runtime, actor=officer, export_id=asked.id)
            t0 = time.perf_counter()
            if mode == "rendered":
                size = len(render(gate.export(export_id=asked.id)))
            else:
                job = gate.queue_export(export_id=asked.id)
                gate.run_export_job(job_id=job.id, render=render)
                assert len(gate.download_export(job_id=job.id)) == size
            timings[mode].append(time.perf_counter() - t0)
    assert exported == len(all_ids)
    p50 = {k: statistics.median(v) for k, v in timings.items()}
    return "\n".join(
        [
            f"{runtime.engine.dialect.name}, {patients:,} patients in care, {rounds} interleaved rounds",
            "",
            "| operation | p50 |",
            "|---|---|",
            f"| direct: load + decrypt {exported:,} patients (no gate) | {p50['direct'] * 1e3:,.0f} ms |",
            f"| request + approval (two audited transactions) | {p50['decide'] * 1e3:,.0f} ms |",
            f"| Gate.export of the same {exported:,} patients | {p50['gate'] * 1e3:,.0f} ms |",
            f"| ... rendered as NDJSON ({size / 1e6:.1f} MB) | {p50['rendered'] * 1e3:,.0f} ms |",
            f"| async: queue + run (rendered, file encrypted) + download | {p50['async'] * 1e3:,.0f} ms |",
            "",
            f"- gate export / direct: **{p50['gate'] / p50['direct']:.2f}x** (p50);"
            f" {p50['gate'] / exported * 1e6:,.0f} µs per exported patient",
            f"- async / rendered synchronous: **{p50['async'] / p50['rendered']:.2f}x** (p50)",
        ]
    )


def run(patients: int, rounds: int, sqlite: bool) -> str:
    with bench_runtime("export", sqlite=sqlite) as runtime:
        return measure(runtime, patients, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    print(run(args.patients, args.rounds, args.sqlite))


if __name__ == "__main__":
    main()
