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


def _import(paths: list[Path], *, full_validation: bool) -> tuple[ImportReport, float]:
    with bench_runtime("import_third_party") as runtime:
        facility = make_facility(runtime)
        began = time.perf_counter()
        if full_validation:
            with mock.patch.object(import_rows, "conforms", lambda _resource: False):
                report = import_files(runtime, paths=paths, facility_id=facility, operator="bench")
        else:
            report = import_files(runtime, paths=paths, facility_id=facility, operator="bench")
        return report, time.perf_counter() - began


def run(population: int, seed: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        paths = clinosim_data.generate(Path(tmp), population=population, seed=seed)
        resources = sum(1 for p in paths for line in p.read_text().splitlines() if line.strip())
        load_before = os.getloadavg()
        report, seconds = _import(paths, full_validation=False)
        full_report, full_seconds = _import(paths, full_validation=True)
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
        f"({read_rate:,.0f} read/s); "
        f"validating every resource with fhir.resources, same run: {full_rate:,.0f} accepted/s "
        f"(ratio {rate / full_rate:.2f}x); bare encrypted loader, same run: "
        f"{patients / loader_seconds:,.0f} patients/s; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--population", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(run(args.population, args.seed))


if __name__ == "__main__":
    main()
