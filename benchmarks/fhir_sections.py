"""The FHIR searches by patient and `$everything` under load on PostgreSQL: the gate's fast path
(carnet/phi/fastpath_search.py) against the kernel's general path, in the same run.

Two uvicorn servers on the same database and Redis: one as served (the fast path), one with
CARNET_GATE_GENERAL_ONLY=1 (every operation on the kernel's general path). For each operation —
`GET /fhir/<Type>?patient=<id>` for Observation, Condition, AllergyIntolerance,
MedicationRequest, Encounter and DiagnosticReport, `GET /fhir/Patient/<id>/$everything`, and the
patient read for reference — the same wrk load (`--clients` physicians, each on the 30 patients
in their care, 8 Observations, 2 Conditions, an allergy, 3 prescriptions, a stay and a lab
report each) runs against one server then the other, the order swapped every round; the figure
is the median of `--rounds`. CPU per request is the server's processes plus the PostgreSQL
backends of this run's database (process CPU: the machine's load inflates it less than wall
time). As in benchmarks.fhir_load, every account has four weeks of history and its baseline, so
detection sees ordinary work at any hour; the run exits 1 when any measured request answered an
error.

    .venv/bin/python -m benchmarks.fhir_sections [--patients 2000] [--seconds 8] [--clients 16]

Creates and drops its own database on CARNET_BENCH_POSTGRES_URL (default: the local server) and
empties Redis database CARNET_BENCH_REDIS_URL (default redis://127.0.0.1:6379/11).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis

from benchmarks._db import bench_database
from benchmarks.fhir_load import (
    ORIGIN,
    REDIS_URL,
    Pair,
    Result,
    baseline_accounts,
    cpu_seconds,
    make_clinicians,
    seed_patients,
    start_server,
    wrk_load,
)
from carnet.crypto.keys import FileKeyProvider
from carnet.kernel import clock
from carnet.phi.loader import SeedBatch, load_batch
from carnet.phi.system import system_access
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Environment, Settings
from tests.factories import make_facility

OPERATIONS = {
    "Observation?patient=": "/fhir/Observation?patient={}",
    "Condition?patient=": "/fhir/Condition?patient={}",
    "AllergyIntolerance?patient=": "/fhir/AllergyIntolerance?patient={}",
    "MedicationRequest?patient=": "/fhir/MedicationRequest?patient={}",
    "Encounter?patient=": "/fhir/Encounter?patient={}",
    "DiagnosticReport?patient=": "/fhir/DiagnosticReport?patient={}",
    "Patient/$everything": "/fhir/Patient/{}/$everything",
    "Patient read (reference)": "/fhir/Patient/{}",
}
LOINC = (("8867-4", "Fréquence cardiaque", "/min"), ("8480-6", "Pression systolique", "mm[Hg]"))
LOINC += (("2345-7", "Glucose", "mmol/L"), ("2160-0", "Créatinine", "umol/L"))


def seed_charts(runtime: Runtime, facility: uuid.UUID, patients: list[uuid.UUID]) -> int:
    """Each patient's chart, through the encrypted loader: 8 Observations (4 in a lab report),
    2 Conditions, 1 allergy, 3 prescriptions, 1 finished stay. Returns the rows written."""
    now = clock.now()
    stamp = {"version_id": 1, "created_at": now, "updated_at": now}
    written = 0
    for chunk in range(0, len(patients), 500):
        batch = SeedBatch()
        for n, pid in enumerate(patients[chunk : chunk + 500], start=chunk):
            base = {"facility_id": facility, "patient_id": pid, **stamp}
            report = uuid.uuid4()
            batch.add(
                "encounters",
                {
                    **base, "id": uuid.uuid4(), "kind": "inpatient", "status": "finished",
                    "start_at": now - dt.timedelta(days=40), "end_at": now - dt.timedelta(days=35),
                    "location_id": None, "attending_id": None, "received": None,
                },
            )  # fmt: skip
            batch.add(
                "diagnostic_reports",
                {
                    **base, "id": report, "code": "24323-8", "display": "Bilan métabolique",
                    "status": "final", "issued_at": now - dt.timedelta(days=2),
                    "conclusion": "Bilan normal.", "performer_id": None, "received": None, "order_id": None,
                },
            )  # fmt: skip
            for k in range(8):
                code, display, unit = LOINC[k % len(LOINC)]
                batch.add(
                    "observations",
                    {
                        **base, "id": uuid.uuid4(), "encounter_id": None,
                        "report_id": report if k >= 4 else None,
                        "category": "laboratory" if k >= 4 else "vital-signs", "code": code,
                        "display": display, "value_number": 60.0 + (n + k) % 40, "unit": unit,
                        "value_text": None, "effective_at": now - dt.timedelta(days=k, hours=n % 24),
                        "status": "final", "performer_id": None, "received": None, "order_id": None,
                        "reference_range": None, "interpretation": None,
                    },
                )  # fmt: skip
            for code, display in (("I10", "Hypertension essentielle"), ("E11.9", "Diabète de type 2")):
                batch.add(
                    "conditions",
                    {
                        **base, "id": uuid.uuid4(), "code": code, "display": display,
                        "clinical_status": "active", "verification_status": "confirmed",
                        "onset_at": now - dt.timedelta(days=400), "recorded_by": None, "received": None,
                    },
                )  # fmt: skip
            batch.add(
                "allergies",
                {
                    **base, "id": uuid.uuid4(), "substance_code": "J01CA",
                    "substance_display": "Pénicillines", "criticality": "high", "reaction_ct": None,
                    "clinical_status": "active", "recorded_by": None, "received": None,
                },
            )  # fmt: skip
            for k, (code, display, atc) in enumerate(
                (
                    ("3400930000001", "Amlodipine 5 mg", "C08CA01"),
                    ("3400930000002", "Metformine 850 mg", "A10BA02"),
                    ("3400930000003", "Paracétamol 1 g", "N02BE01"),
                )
            ):
                batch.add(
                    "prescriptions",
                    {
                        **base, "id": uuid.uuid4(), "prescriber_id": None, "encounter_id": None,
                        "medication_code": code, "medication_display": display, "substance_code": atc,
                        "dosage_text": "1 comprimé le matin", "status": "active",
                        "authored_at": now - dt.timedelta(days=3 + k), "valid_until": None,
                        "renewed_from_id": None, "stop_reason": None, "allergy_override_reason": None,
                        "received": None,
                    },
                )  # fmt: skip
        with system_access(runtime, reason="benchmark charts", operator="bench") as door:
            written += sum(load_batch(door, batch).values())
    return written


def run(patients: int, seconds: float, clients: int, workers: int, rounds: int) -> tuple[str, int]:
    with bench_database("sections") as url, tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        FileKeyProvider.create(var / "keys.json")
        runtime = build_runtime(Settings(env=Environment.TEST, var_dir=var, database_url=url, origin=ORIGIN))
        try:
            return _measure(runtime, url, var, patients, seconds, clients, workers, rounds)
        finally:
            runtime.close()


def _measure(
    runtime: Runtime,
    url: str,
    var: Path,
    patients: int,
    seconds: float,
    clients: int,
    workers: int,
    rounds: int,
) -> tuple[str, int]:
    load_start = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    facility = make_facility(runtime)
    ids, _ = seed_patients(runtime, facility, 0, patients)
    history: list[tuple[uuid.UUID, list[uuid.UUID]]] = []
    clinicians = make_clinicians(runtime, facility, ids, min(clients, len(ids) // 30), history=history)
    charted = sorted({p for c in clinicians for p in c.patients})
    rows = seed_charts(runtime, facility, charted)
    baseline_accounts(runtime, history)
    redis.Redis.from_url(REDIS_URL).flushdb()
    fast = start_server(url, var, workers)
    general = start_server(url, var, workers, general_only=True)
    servers = {"fast": fast, "general": general}
    # (operation, path) -> [(result, app ms, db ms)] per round
    measured: dict[tuple[str, str], list[tuple[Result, float, float]]] = {}
    try:
        pairs_of: dict[str, list[Pair]] = {}
        for label, template in OPERATIONS.items():
            pairs = [(c.headers, template.format(p)) for c in clinicians for p in c.patients]
            random.Random(label).shuffle(pairs)
            pairs_of[label] = pairs
        for path, (_process, base) in servers.items():  # each answers before it is measured
            for label in OPERATIONS:
                headers, target = pairs_of[label][0]
                answer = httpx.get(base + target, headers=headers, timeout=30)
                if answer.status_code != 200:
                    raise RuntimeError(f"{label} ({path}): {answer.status_code} {answer.text[:300]}")
        for _process, base in servers.values():  # warm: pools, prepared statements, caches
            for label in OPERATIONS:
                wrk_load(base, "warm-up", clients, 2, pairs_of[label])
        for round_ in range(rounds):
            for label in OPERATIONS:
                order = ["fast", "general"] if round_ % 2 == 0 else ["general", "fast"]
                for path in order:
                    process, base = servers[path]
                    before = cpu_seconds(process.pid, url)
                    result = wrk_load(base, f"{label} ({path})", clients, seconds, pairs_of[label])
                    after = cpu_seconds(process.pid, url)
                    n = max(1, result.requests)
                    app_ms = (after[0] - before[0]) / n * 1000
                    db_ms = (after[1] - before[1]) / n * 1000
                    measured.setdefault((label, path), []).append((result, app_ms, db_ms))
    finally:
        for process, _base in servers.values():
            process.terminate()
            process.wait(timeout=30)
    load_end = os.getloadavg()
    errors = sum(r.errors for runs in measured.values() for r, _a, _d in runs)
    lines = [
        f"run {started:%Y-%m-%d %H:%M} UTC, {rounds} rounds of {seconds:.0f} s per operation and path, "
        f"{clients} clients, {workers} workers per server; {patients:,} patients, "
        f"{len(charted):,} charted ({rows:,} rows)",
        f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} at the start, "
        f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at the end ({os.cpu_count()} cores)",
        "",
        "| operation | fast: req/s | general: req/s | fast / general throughput (each round) |"
        " fast: CPU/req app + PG | general: CPU/req app + PG | fast / general CPU |"
        " fast p50 / p99 | general p50 / p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in OPERATIONS:
        f_runs, g_runs = measured[(label, "fast")], measured[(label, "general")]
        ratios = [f[0].throughput / max(g[0].throughput, 1e-9) for f, g in zip(f_runs, g_runs, strict=True)]
        middle = sorted(range(rounds), key=lambda i: ratios[i])[rounds // 2]
        f_res, g_res = f_runs[middle][0], g_runs[middle][0]
        f_app, f_db = (statistics.median(x) for x in zip(*[(a, d) for _r, a, d in f_runs], strict=True))
        g_app, g_db = (statistics.median(x) for x in zip(*[(a, d) for _r, a, d in g_runs], strict=True))
        lines.append(
            f"| {label} | {f_res.throughput:,.0f} | {g_res.throughput:,.0f} | "
            f"**{ratios[middle]:.2f}x** ({', '.join(f'{x:.2f}' for x in ratios)}) | "
            f"{f_app:.2f} + {f_db:.2f} = {f_app + f_db:.2f} ms | "
            f"{g_app:.2f} + {g_db:.2f} = {g_app + g_db:.2f} ms | "
            f"**{(f_app + f_db) / (g_app + g_db):.2f}x** | "
            f"{f_res.pct(50):.1f} / {f_res.pct(99):.1f} ms | {g_res.pct(50):.1f} / {g_res.pct(99):.1f} ms |"
        )
    lines.append("")
    lines.append(f"errors in measured requests: {errors}")
    return "\n".join(lines), errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.patients < 30 * args.clients or args.rounds < 1:
        parser.error("--patients at least 30 per client, --rounds at least 1")
    began = time.perf_counter()
    report, errors = run(args.patients, args.seconds, args.clients, args.workers, args.rounds)
    print(report)
    print(f"(whole run {time.perf_counter() - began:.0f} s)")
    if errors:
        print(f"FAILED: {errors} measured requests answered an error", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
