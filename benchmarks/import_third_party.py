"""`carnet import` of third-party data (issue 16): a clinosim cohort (PyPI, fixed seed), Bulk
Data NDJSON of every type it writes, imported on PostgreSQL: accepted resources per second.

Three figures of the same run, on the same files, each in a fresh database: the importer as it
is (the compiled FHIR check first, carnet/fhir/core/model_check.py); the same importer validating every
resource with fhir.resources' models (as before); and the bare encrypted loader writing as many
patients (the seeding path), as the floor of what writing costs. The load average is printed
with them: the machine is shared.

    .venv/bin/python -m benchmarks.import_third_party --population 200
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

from benchmarks._db import bench_runtime
from benchmarks.fhir_load import seed_patients
from carnet.phi import import_rows
from carnet.phi.importer import ImportReport, import_files
from tests.factories import make_facility
from tests.fhir import clinosim_data


def _backend_cpu(database: str | None) -> float | None:
    """CPU seconds (user + system) of the PostgreSQL backends serving `database`, read from
    /proc (PostgreSQL on this machine); None when it cannot be read."""
    if not database or not Path("/proc").is_dir():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total, found = 0.0, False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if database.encode() not in (proc / "cmdline").read_bytes():
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        found = True
    return total if found else None


def _import(paths: list[Path], *, full_validation: bool) -> tuple[ImportReport, float, float, float | None]:
    """The report, wall seconds, this process's CPU seconds, the PostgreSQL backends' CPU seconds."""
    with bench_runtime("import_third_party") as runtime:
        facility = make_facility(runtime)
        database = runtime.engine.url.database
        backend_before = _backend_cpu(database)
        cpu_began = time.process_time()
        began = time.perf_counter()
        if full_validation:
            with mock.patch.object(import_rows, "conforms", lambda _resource: False):
                report = import_files(runtime, paths=paths, facility_id=facility, operator="bench")
        else:
            report = import_files(runtime, paths=paths, facility_id=facility, operator="bench")
        seconds = time.perf_counter() - began
        cpu = time.process_time() - cpu_began
        backend_after = _backend_cpu(database)
        backend = None if backend_before is None or backend_after is None else backend_after - backend_before
        return report, seconds, cpu, backend


def run(population: int, seed: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        paths = clinosim_data.generate(Path(tmp), population=population, seed=seed)
        resources = sum(1 for p in paths for line in p.read_text().splitlines() if line.strip())
        load_before = os.getloadavg()
        report, seconds, cpu, backend = _import(paths, full_validation=False)
        full_report, full_seconds, _cpu, _backend = _import(paths, full_validation=True)
        patients = report.accepted.get("Patient", 0)
        with bench_runtime("import_third_party_loader") as runtime:
            _ids, loader_seconds = seed_patients(runtime, make_facility(runtime), 3_100_000, max(patients, 1))
        load_after = os.getloadavg()
    assert report.accepted == full_report.accepted, (report.accepted, full_report.accepted)
    rate = report.total_accepted / seconds
    full_rate = full_report.total_accepted / full_seconds
    read_rate = resources / seconds
    return (
        f"carnet import, clinosim cohort (population {population}, seed {seed}), PostgreSQL: "
        f"{resources:,} resources read, {report.total_accepted:,} accepted, "
        f"{len(report.rejected):,} rejected in {seconds:.2f} s = {rate:,.0f} accepted/s "
        f"({read_rate:,.0f} read/s); CPU per accepted resource: {1e6 * cpu / report.total_accepted:,.0f} µs"
        f" in this process + {_per(backend, report.total_accepted)} in PostgreSQL; "
        f"validating every resource with fhir.resources, same run: {full_rate:,.0f} accepted/s "
        f"(ratio {rate / full_rate:.2f}x); bare encrypted loader, same run: "
        f"{patients / loader_seconds:,.0f} patients/s; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )


def _per(seconds: float | None, count: int) -> str:
    return "n/a" if seconds is None else f"{1e6 * seconds / count:,.0f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--population", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(run(args.population, args.seed))


if __name__ == "__main__":
    main()
