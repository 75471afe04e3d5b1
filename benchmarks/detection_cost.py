"""Cost of detection on PostgreSQL, as ratios against baselines measured in the same run.

1. A gate-like transaction (audit event + exposure accounting) for a chart read (1 patient) and
   an appointment list (20 patients), with the full detection ledger (SQL window counts, or
   Redis counters), against the same transaction with the bare ledger insert that predates
   detection. The exposures table holds `--history` rows of other staff's last day.
2. The incident report for an actor who exposed `--report-patients` patients: the whole
   command (scope from ledger + audit trail, contacts decrypted, CSV/JSON/summary written),
   against computing the scope alone.

    .venv/bin/python -m benchmarks.detection_cost [--history 200000] [--samples 400] \
        [--report-patients 20000]

Creates and drops its own database on CARNET_BENCH_POSTGRES_URL (default: the local server);
needs Redis on CARNET_BENCH_REDIS_URL (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
import sqlalchemy as sa

from benchmarks._db import bench_database
from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.crypto.blind import IndexKind
from carnet.crypto.keys import FileKeyProvider
from carnet.detection.config import DetectionConfig
from carnet.detection.containment import RedisContainmentFlags
from carnet.detection.counters import RedisExposureCounters, SqlExposureCounters
from carnet.detection.interfaces import Channel
from carnet.detection.ledger import SqlExposureLedger
from carnet.detection.models import Exposure
from carnet.detection.report import incident_scope, write_report
from carnet.kernel import clock
from carnet.kernel.ids import new_id
from carnet.org.models import Facility
from carnet.patients.models import Patient
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Environment, Settings

REDIS_URL = os.environ.get("CARNET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
STAFF = 300


def _staff(rng: random.Random) -> list[Actor]:
    return [
        Actor(
            kind=ActorKind.STAFF,
            username=f"staff{i:04d}",
            roles=frozenset({rng.choice([Role.PHYSICIAN, Role.NURSE])}),
            account_id=uuid.UUID(int=rng.getrandbits(128)),
            session_id=uuid.UUID(int=rng.getrandbits(128)),
            address="10.0.0.1",
        )
        for i in range(STAFF)
    ]


def _history(runtime: Runtime, staff: list[Actor], rows: int, rng: random.Random) -> None:
    now = clock.now()
    patients = [uuid.uuid4() for _ in range(20_000)]
    batch: list[dict[str, object]] = []
    with runtime.session_factory.begin() as session:
        for _ in range(rows):
            batch.append(
                {
                    "id": new_id(),
                    "actor_ref": rng.choice(staff).actor_ref,
                    "patient_id": rng.choice(patients),
                    "channel": "chart",
                    "resource_type": "Patient",
                    "at": now - dt.timedelta(seconds=rng.randrange(28 * 86_400)),
                    "audit_seq": None,
                    "outside_care": False,
                    "fields": None,
                }
            )
            if len(batch) == 5000:
                session.execute(sa.insert(Exposure), batch)
                batch = []
        if batch:
            session.execute(sa.insert(Exposure), batch)
        session.execute(sa.text("ANALYZE exposures"))


def _bare(session: sa.orm.Session, actor: Actor, patients: list[uuid.UUID]) -> None:
    """The ledger before detection: one row per patient, nothing else."""
    at = clock.now()
    session.execute(
        sa.insert(Exposure),
        [
            {
                "id": new_id(),
                "actor_ref": actor.actor_ref,
                "patient_id": p,
                "channel": "chart",
                "resource_type": "Patient",
                "at": at,
                "audit_seq": None,
                "outside_care": False,
                "fields": None,
            }
            for p in patients
        ],
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _measure_requests(runtime: Runtime, staff: list[Actor], samples: int, rng: random.Random) -> list[str]:
    quiet = DetectionConfig()  # defaults: a benign request crosses no threshold
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"carnet:bench:{uuid.uuid4().hex}"
    sql_ledger = SqlExposureLedger(settings=runtime.settings, config=quiet, counters=SqlExposureCounters())
    redis_ledger = SqlExposureLedger(
        settings=runtime.settings,
        config=quiet,
        counters=RedisExposureCounters(client, prefix=prefix),
        flags=RedisContainmentFlags(client, prefix=prefix),
    )

    # Each clinician works within their own 30 patients, as benign staff do.
    care = {actor.actor_ref: [uuid.uuid4() for _ in range(30)] for actor in staff}

    def request(record: Callable[[sa.orm.Session, Actor, list[uuid.UUID]], None], size: int) -> float:
        actor = rng.choice(staff)
        patients = rng.sample(care[actor.actor_ref], size)
        started = time.perf_counter()
        with runtime.session_factory.begin() as session:
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.PHI_READ, outcome=Outcome.SUCCESS, actor=actor, patient_ids=patients
                ),
            )
            record(session, actor, patients)
        return time.perf_counter() - started

    def sql(session: sa.orm.Session, actor: Actor, patients: list[uuid.UUID]) -> None:
        sql_ledger.record(
            session, actor=actor, patient_ids=patients, channel=Channel.CHART, resource_type="Patient"
        )

    def red(session: sa.orm.Session, actor: Actor, patients: list[uuid.UUID]) -> None:
        redis_ledger.record(
            session, actor=actor, patient_ids=patients, channel=Channel.CHART, resource_type="Patient"
        )

    variants = {
        "bare insert (baseline)": _bare,
        "detection, SQL counters": sql,
        "detection, Redis counters": red,
    }
    lines = []
    for size, label in ((1, "chart read, 1 patient"), (20, "appointment list, 20 patients")):
        timings: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():  # warm-up
            for _ in range(20):
                request(fn, size)
        for _ in range(samples):  # interleaved, so drift hits every variant alike
            for name, fn in variants.items():
                timings[name].append(request(fn, size))
        base = statistics.median(timings["bare insert (baseline)"])
        lines.append(f"| {label} | | | |")
        for name, values in timings.items():
            median = statistics.median(values)
            lines.append(
                f"| &nbsp; {name} | {median * 1000:.2f} ms | {_pct(values, 0.95) * 1000:.2f} ms | "
                f"{median / base:.2f}x |"
            )
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    return lines


def _measure_report(runtime: Runtime, count: int, tmp: Path) -> list[str]:
    ring = runtime.keyring
    with runtime.session_factory.begin() as session:
        facility = Facility(name="Bench", finess="750999999", city="Paris")
        session.add(facility)
        session.flush()
        ring.create_data_key(session, facility.id)
        facility_id = facility.id
    now = clock.now()
    ids = [uuid.uuid4() for _ in range(count)]
    with runtime.session_factory.begin() as session:
        rows = []
        for i, pid in enumerate(ids):

            def enc(column: str, value: str, pid: uuid.UUID = pid) -> bytes | None:
                return ring.encrypt(
                    value, facility_id=facility_id, table="patients", column=column, row_id=pid
                )

            rows.append(
                {
                    "id": pid,
                    "facility_id": facility_id,
                    "family_ct": enc("family", f"Family{i}"),
                    "family_bi": ring.index(IndexKind.FAMILY, f"Family{i}"),
                    "given_ct": enc("given", "Jeanne"),
                    "given_bi": ring.index(IndexKind.GIVEN, "Jeanne"),
                    "birth_date_ct": enc("birth_date", "1970-01-01"),
                    "birth_date_bi": ring.index(IndexKind.BIRTH_DATE, "1970-01-01"),
                    "gender": "female",
                    "address_ct": enc("address", '{"line": ["1 rue de la Paix"], "city": "Paris"}'),
                    "phone_ct": enc("phone", "0612345678"),
                    "email_ct": enc("email", f"p{i}@example.org"),
                    "version_id": 1,
                    "created_at": now,
                    "updated_at": now,
                    "opposes_other_facilities": False,
                    "active": True,
                }
            )
        for start in range(0, len(rows), 2000):
            session.execute(sa.insert(Patient), rows[start : start + 2000])
    thief = Actor(
        kind=ActorKind.STAFF, username="thief", roles=frozenset({Role.FRONT_DESK}), account_id=uuid.uuid4()
    )
    since = clock.now() - dt.timedelta(minutes=1)
    with runtime.session_factory.begin() as session:
        records = [
            AuditRecord(
                kind=AuditKind.PHI_LIST, outcome=Outcome.SUCCESS, actor=thief, patient_ids=ids[i : i + 20]
            )
            for i in range(0, count, 20)
        ]
        for start in range(0, len(records), 500):
            runtime.audit.append_many(session, records[start : start + 500])
        for i in range(0, count, 20):
            _bare(session, thief, ids[i : i + 20])
    actor_ref = thief.actor_ref

    started = time.perf_counter()
    with runtime.session_factory() as session:
        scope = incident_scope(
            session, actor=actor_ref, since=since, until=clock.now() + dt.timedelta(minutes=1)
        )
    scope_seconds = time.perf_counter() - started
    assert len(scope.patients) == count
    started = time.perf_counter()
    files = write_report(
        runtime, actor=actor_ref, since=since, until=None, out=tmp / "report", operator="bench"
    )
    report_seconds = time.perf_counter() - started
    assert files.patients == count
    return [
        f"| scope only (ledger + audit trail), {count:,} patients (baseline) | {scope_seconds:.2f} s "
        "| | 1.00x |",
        f"| full report: scope, decrypt contacts, CSV + JSON + summary | {report_seconds:.2f} s | | "
        f"{report_seconds / scope_seconds:.2f}x |",
    ]


def run(history: int, samples: int, report_patients: int) -> str:
    rng = random.Random(6)
    with bench_database("detection") as url, tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        FileKeyProvider.create(var / "keys.json")
        runtime = build_runtime(Settings(env=Environment.TEST, var_dir=var, database_url=url))
        try:
            staff = _staff(rng)
            _history(runtime, staff, history, rng)
            request_lines = _measure_requests(runtime, staff, samples, rng)
            report_lines = _measure_report(runtime, report_patients, var)
        finally:
            runtime.close()
    header = "| measure | median | p95 | ratio to baseline |\n|---|---|---|---|"
    return "\n".join(
        [
            f"Requests (PostgreSQL, {history:,} exposures of {STAFF} staff over 28 days, {samples} samples):",
            "",
            header,
            *request_lines,
            "",
            f"Incident report ({report_patients:,} patients exposed by one actor):",
            "",
            header,
            *report_lines,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--history", type=int, default=200_000)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--report-patients", type=int, default=20_000)
    args = parser.parse_args()
    print(run(args.history, args.samples, args.report_patients))


if __name__ == "__main__":
    main()
