"""Name-only patient search through the gate, at 1,000 and at 100,000 patients (issue 18).

A ward physician with 800 patients in care searches by family name alone (the gate's name rule:
among the actor's own patients). Measured in the same run against its baseline: the same
answer found the way the gate found it before the keyed name prefixes existed, by decrypting
the family name of every patient in the care list and matching in memory (no audit, no
detection: the search's own cost only).

    .venv/bin/python -m benchmarks.name_search [--patients 100000] [--samples 200]

PostgreSQL (CARNET_BENCH_POSTGRES_URL, default the local server), a throwaway database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable

from sqlalchemy import select

from benchmarks._db import bench_runtime
from benchmarks.fhir_load import (
    WARD_CARE_LIST,
    baseline_accounts,
    make_clinicians,
    plain_patient,
    searchable_families,
    seed_patients,
)
from carnet.crypto.blind import name_matches
from carnet.patients.models import CareRelationship, Patient
from carnet.phi.gate import Gate
from carnet.phi.system import system_access
from carnet.runtime import Runtime
from tests.factories import make_facility


def _p(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def _interleaved(
    gate_search: Callable[[str], int],
    scan: Callable[[str], int],
    by_identifier: Callable[[int], int],
    families: list[str],
    samples: int,
) -> tuple[list[float], list[float], list[float]]:
    """Gate name search, baseline and the gate's identifier search alternate, sample after
    sample (same neighbours); the name answers must agree."""
    via_gate: list[float] = []
    via_scan: list[float] = []
    via_id: list[float] = []
    for i in range(samples):
        family = families[i % len(families)]
        began = time.perf_counter()
        found = gate_search(family)
        via_gate.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        expected = scan(family)
        via_scan.append((time.perf_counter() - began) * 1000)
        assert found == expected, (family, found, expected)
        began = time.perf_counter()
        assert by_identifier(i % len(families)) == 1
        via_id.append((time.perf_counter() - began) * 1000)
    return via_gate, via_scan, via_id


def _decrypting(runtime: Runtime, practitioner: uuid.UUID, family: str) -> int:
    """The care list's family names all decrypted, then matched (the baseline)."""
    with system_access(runtime, reason="benchmark baseline: care-list name scan", operator="bench") as door:
        rows = door.session.execute(
            select(Patient.id, Patient.family_ct).where(
                Patient.id.in_(
                    select(CareRelationship.patient_id).where(
                        CareRelationship.practitioner_id == practitioner
                    )
                ),
                Patient.merged_into_id.is_(None),
            )
        ).all()
        decrypt = runtime.keyring.decrypt
        return sum(
            1
            for pid, blob in rows
            if name_matches(decrypt(blob, table="patients", column="family", row_id=pid) or "", family)
        )


def run(patients: int, samples: int) -> str:
    lines = [
        "| patients | gate name search p50 | p99 | care-list decryption (baseline) p50 | p99 "
        "| gate / baseline (p50) | gate identifier search p50 (same gate work, one hit) "
        "| name search minus identifier search (p50) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    load_start = os.getloadavg()
    with bench_runtime("names") as runtime:
        facility = make_facility(runtime)
        ids, _ = seed_patients(runtime, facility, 0, 1000)
        history: list[tuple[uuid.UUID, list[uuid.UUID]]] = []
        ward = make_clinicians(runtime, facility, ids, 1, per=WARD_CARE_LIST, history=history)[0]
        index_of = {pid: n for n, pid in enumerate(ids)}
        families = searchable_families(ward.patients, index_of)
        identifiers = [plain_patient(index_of[p])["ins"] for p in ward.patients[1::160][:5]]
        baseline_accounts(runtime, history)
        actor = ward.actor
        assert actor is not None
        practitioner = actor.practitioner_id
        assert practitioner is not None
        gate = Gate(runtime, actor)
        for size in (1000, patients):
            if size > 1000:
                seed_patients(runtime, facility, 1000, size - 1000)
            via_gate, via_scan, via_id = _interleaved(
                lambda family: len(gate.search_patients(family=family).items),
                lambda family: _decrypting(runtime, practitioner, family),
                lambda k: len(gate.search_patients(identifier=identifiers[k]).items),
                families,
                samples,
            )
            lines.append(
                f"| {size:,} | {_p(via_gate, 50):.2f} ms | {_p(via_gate, 99):.2f} ms | "
                f"{_p(via_scan, 50):.2f} ms | {_p(via_scan, 99):.2f} ms | "
                f"{_p(via_gate, 50) / _p(via_scan, 50):.2f}x | {_p(via_id, 50):.2f} ms | "
                f"{_p(via_gate, 50) - _p(via_id, 50):+.2f} ms |"
            )
    load_end = os.getloadavg()
    lines.append("")
    lines.append(
        f"- {WARD_CARE_LIST} patients in the physician's care, 5 family names, {samples} searches each way; "
        f"load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    print(run(args.patients, args.samples))


if __name__ == "__main__":
    main()
