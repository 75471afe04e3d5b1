"""Cost of the gate: a guarded chart read against the same read without the gate, same run.

1. direct: load the patient by id and decrypt the fields a physician sees (what any code could
   do without the gate), returning the same PatientView.
2. direct + audit + exposure: the same, plus the audit event (hash chain) and the exposure
   ledger row in one transaction -- what invariants 2 and 8 cost by themselves.
3. gate: Gate.read_patient -- account and grants checked, facility scope (RLS on PostgreSQL),
   care relationships, policy decision, redaction, audit and exposure in one transaction.

    .venv/bin/python -m benchmarks.gate_cost [--patients 2000] [--samples 2000] [--sqlite]

PostgreSQL by default (creates and drops its own database on CARNET_BENCH_POSTGRES_URL);
--sqlite runs on an embedded file instead. The three are interleaved round by round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
import uuid
from collections.abc import Callable

from benchmarks._db import bench_runtime
from carnet.access.actor import Actor, ActorKind
from carnet.access.models import RoleGrant
from carnet.access.policy import PATIENT_CONTACT, PATIENT_IDENTITY
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.crypto.blind import IndexKind
from carnet.detection.interfaces import Channel
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.org.models import Facility, Practitioner
from carnet.patients.models import CareRelationship, Patient
from carnet.phi.gate import Gate
from carnet.phi.schemas import PatientView
from carnet.phi.system import system_access
from carnet.runtime import Runtime

CARE_SET = 10  # the physician's patients: few distinct ones, so detection's volume rules stay quiet
FIELDS = PATIENT_IDENTITY | PATIENT_CONTACT
ENCRYPTED = ("ins", "family", "given", "birth_date", "address", "phone", "email")


def _seed(runtime: Runtime, patients: int) -> tuple[Actor, list[uuid.UUID]]:
    now = clock.now()
    keyring = runtime.keyring
    with runtime.session_factory.begin() as session:
        facility = Facility(name="Bench", finess="759999999", city="Paris")
        session.add(facility)
        session.flush()
        keyring.create_data_key(session, facility.id)
        practitioner = Practitioner(
            facility_id=facility.id, rpps="19999999999", family="Bench", given="Doc", profession="physician"
        )
        session.add(practitioner)
        session.flush()
        account = Account(
            username="bench-physician",
            display_name="Bench",
            kind="staff",
            facility_id=facility.id,
            practitioner_id=practitioner.id,
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
                role="physician",
                facility_id=facility.id,
                status="active",
                requested_at=now,
                reason="bench",
            )
        )
        facility_id, practitioner_id, account_id = facility.id, practitioner.id, account.id
    ids: list[uuid.UUID] = []
    with system_access(runtime, reason="benchmark seed") as door:
        for i in range(patients):
            pid = uuid.uuid4()
            values = {
                "ins": f"1{i:012d}",
                "family": f"Famille{i}",
                "given": f"Prénom{i}",
                "birth_date": (dt.date(1950, 1, 1) + dt.timedelta(days=i)).isoformat(),
                "address": json.dumps({"line": f"{i} rue de Paris", "city": "Paris"}),
                "phone": f"06{i:08d}",
                "email": f"p{i}@example.org",
            }
            enc = {
                f"{k}_ct": keyring.encrypt(v, facility_id=facility_id, table="patients", column=k, row_id=pid)
                for k, v in values.items()
            }
            door.session.add(
                Patient(
                    id=pid,
                    facility_id=facility_id,
                    gender="female",
                    ins_bi=keyring.index(IndexKind.IDENTIFIER, values["ins"]),
                    family_bi=keyring.index(IndexKind.FAMILY, values["family"]),
                    given_bi=keyring.index(IndexKind.GIVEN, values["given"]),
                    birth_date_bi=keyring.index(IndexKind.BIRTH_DATE, values["birth_date"]),
                    created_at=now,
                    updated_at=now,
                    **enc,
                )
            )
            ids.append(pid)
        door.session.flush()
        for pid in ids[:CARE_SET]:
            door.session.add(
                CareRelationship(
                    patient_id=pid,
                    practitioner_id=practitioner_id,
                    facility_id=facility_id,
                    kind="care_team",
                    start_at=now - dt.timedelta(days=1),
                )
            )
    actor = Actor(
        kind=ActorKind.STAFF,
        username="bench-physician",
        roles=frozenset({Role.PHYSICIAN}),
        account_id=account_id,
        facility_id=facility_id,
        practitioner_id=practitioner_id,
        session_id=uuid.uuid4(),
        address="127.0.0.1",
        second_factor_at=now,
    )
    return actor, ids[:CARE_SET]


def _direct_view(runtime: Runtime, patient: Patient) -> PatientView:
    data: dict[str, object] = {"id": str(patient.id), "facility_id": str(patient.facility_id)}
    for name in ENCRYPTED:
        plain = runtime.keyring.decrypt(
            getattr(patient, f"{name}_ct"), table="patients", column=name, row_id=patient.id
        )
        data[name] = json.loads(plain) if name == "address" and plain else plain
    return PatientView(**data, gender=patient.gender, version_id=patient.version_id, visible=FIELDS)  # type: ignore[arg-type]


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(runtime: Runtime, patients: int, samples: int) -> str:
    actor, care = _seed(runtime, patients)

    def direct(pid: uuid.UUID) -> PatientView:
        with runtime.session_factory() as session:
            patient = session.get(Patient, pid)
            assert patient is not None
            return _direct_view(runtime, patient)

    def direct_audited(pid: uuid.UUID) -> PatientView:
        with runtime.session_factory.begin() as session:
            patient = session.get(Patient, pid)
            assert patient is not None
            view = _direct_view(runtime, patient)
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.PHI_READ,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    resource_type="Patient",
                    resource_ids=[str(pid)],
                    patient_ids=[pid],
                ),
            )
            runtime.ledger.record(
                session, actor=actor, patient_ids=[pid], channel=Channel.CHART, resource_type="Patient"
            )
            return view

    def gated(pid: uuid.UUID) -> PatientView:
        return Gate(runtime, actor).read_patient(patient_id=str(pid))

    assert direct(care[0]).family == gated(care[0]).family  # the same answer
    timings: dict[str, list[float]] = {"direct": [], "audited": [], "gate": []}
    for i in range(samples):
        pid = care[i % len(care)]
        timings["direct"].append(_time(lambda: direct(pid)))  # noqa: B023
        timings["audited"].append(_time(lambda: direct_audited(pid)))  # noqa: B023
        timings["gate"].append(_time(lambda: gated(pid)))  # noqa: B023
    p50 = {k: statistics.median(v) for k, v in timings.items()}
    p90 = {k: statistics.quantiles(v, n=10)[-1] for k, v in timings.items()}
    rows = [
        f"| {label} | {p50[k] * 1e6:,.0f} µs | {p90[k] * 1e6:,.0f} µs |"
        for k, label in (
            ("direct", "direct read + decrypt (no gate)"),
            ("audited", "direct read + decrypt + audit event + exposure row"),
            ("gate", "Gate.read_patient"),
        )
    ]
    return "\n".join(
        [
            f"{runtime.engine.dialect.name}, {patients:,} patients, {samples:,} interleaved samples each",
            "",
            "| operation | p50 | p90 |",
            "|---|---|---|",
            *rows,
            "",
            f"- gate / direct read: **{p50['gate'] / p50['direct']:.2f}x** (p50)",
            "- gate / direct read with the same audit + exposure writes:"
            f" **{p50['gate'] / p50['audited']:.2f}x** (p50)",
        ]
    )


def run(patients: int, samples: int, sqlite: bool) -> str:
    with bench_runtime("gate", sqlite=sqlite) as runtime:
        return measure(runtime, patients, samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    print(run(args.patients, args.samples, args.sqlite))


if __name__ == "__main__":
    main()
