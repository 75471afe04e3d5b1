"""CPU per accepted resource of one `carnet import` (issue 16), for before/after comparisons on a
busy machine: this process's CPU and the PostgreSQL backends' (from /proc), beside the wall rate.

It imports only what it is given, so the same files can be imported by two source trees in turn,
each a fresh process (cold, as the CLI) and a fresh database:

    .venv/bin/python -m benchmarks.import_cpu --population 100 --keep /tmp/cohort   # generate once
    for r in 1 2 3; do
      (cd /tmp/main-tree && PYTHONPATH=. $PWD/.venv/bin/python -m benchmarks.import_cpu --data /tmp/cohort)
      .venv/bin/python -m benchmarks.import_cpu --data /tmp/cohort
    done

(`/tmp/main-tree`: `git archive <commit> carnet benchmarks tests | tar -x -C /tmp/main-tree`, then
this file copied into its `benchmarks/`; run from inside it, since `python -m` puts the current
folder first on the path.)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks._db import bench_runtime
from carnet.phi.importer import import_files
from tests.factories import make_facility
from tests.fhir import clinosim_data


def _backend_cpu(database: str | None) -> float:
    """CPU seconds of the PostgreSQL backends serving `database` (PostgreSQL on this machine)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or not database:
            continue
        try:
            if database.encode() not in (proc / "cmdline").read_bytes():
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _ordered(folder: Path) -> list[Path]:
    files = {p.stem: p for p in folder.glob("*.ndjson")}
    return [files.pop(n) for n in clinosim_data.ORDER if n in files] + [files[n] for n in sorted(files)]


def run(folder: Path) -> str:
    paths = _ordered(folder)
    with bench_runtime("import_cpu") as runtime:
        facility = make_facility(runtime)
        database = runtime.engine.url.database
        backend = _backend_cpu(database)
        cpu, began = time.process_time(), time.perf_counter()
        report = import_files(runtime, paths=paths, facility_id=facility, operator="bench")
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        backend = _backend_cpu(database) - backend
    accepted = report.total_accepted
    return (
        f"{accepted:,} accepted, {len(report.rejected):,} rejected in {seconds:.2f} s ="
        f" {accepted / seconds:,.0f} accepted/s; CPU per accepted resource:"
        f" {1e6 * cpu / accepted:,.0f} µs in this process +"
        f" {1e6 * backend / accepted:,.0f} µs in PostgreSQL; load average {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="a folder of NDJSON files (clinosim's fhir_r4)")
    parser.add_argument("--population", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", type=Path, help="generate the clinosim cohort into this folder and stop")
    args = parser.parse_args()
    if args.keep is not None:
        paths = clinosim_data.generate(args.keep, population=args.population, seed=args.seed)
        print(paths[0].parent)
        return
    if args.data is None:
        parser.error("--data FOLDER (or --keep FOLDER to generate one)")
    print(run(args.data))


if __name__ == "__main__":
    main()
