"""What checking a Patient answer costs: the R4B model (fhir.resources) against the mapper's own
shape (carnet/fhir/core/shapes.py), over every Patient of a seeded hospital as a reader with
identity and contact sees it, interleaved, in the same run.

    .venv/bin/python -m benchmarks.answer_validation [--patients 300] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fhir.resources.R4B.patient import Patient as FhirPatient

from carnet.access.policy import PATIENT_CONTACT, PATIENT_IDENTITY
from carnet.crypto.keys import FileKeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.fhir.core import shapes
from carnet.fhir.core.api import fhir_json
from carnet.fhir.resources.patient import patient_to_fhir
from carnet.patients.models import Patient
from carnet.patients.views import patient_view
from carnet.phi.system import system_access
from carnet.runtime import build_runtime
from carnet.settings import Environment, Settings
from carnet.synth.seed import seed_hospital


class _Reader:
    def __init__(self, runtime: Any, session: Any) -> None:
        self.runtime, self.session = runtime, session

    def dec(self, blob: bytes | None, table: str, column: str, row_id: Any) -> str | None:
        return self.runtime.keyring.decrypt(blob, table=table, column=column, row_id=row_id)  # type: ignore[no-any-return]


def run(patients: int, repeat: int) -> str:
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        FileKeyProvider.create(var / "keys.json")
        url = f"sqlite:///{var / 'c.db'}"
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        runtime = build_runtime(Settings(env=Environment.TEST, var_dir=var, database_url=url))
        try:
            seed_hospital(runtime, patients=patients, seed=11)
            with system_access(runtime, reason="benchmark: map every seeded patient") as door:
                reader: Any = _Reader(runtime, door.session)
                rows = door.session.scalars(sa.select(Patient)).all()
                fields = frozenset(PATIENT_IDENTITY | PATIENT_CONTACT)
                mapped = [patient_to_fhir(patient_view(reader, p, fields).model_dump()) for p in rows]
        finally:
            runtime.close()
    model_us: list[float] = []
    shape_us: list[float] = []
    write_us: list[float] = []
    for _ in range(repeat):
        for resource in mapped:
            t0 = time.perf_counter()
            FhirPatient.model_validate(resource)
            t1 = time.perf_counter()
            ok = shapes.patient_ok(resource)
            t2 = time.perf_counter()
            fhir_json(resource)
            t3 = time.perf_counter()
            assert ok
            model_us.append((t1 - t0) * 1e6)
            shape_us.append((t2 - t1) * 1e6)
            write_us.append((t3 - t2) * 1e6)
    model, shape, write = (statistics.median(x) for x in (model_us, shape_us, write_us))
    return "\n".join(
        [
            f"load average {load[0]:.2f}; {len(mapped)} Patients mapped, {repeat} passes, interleaved",
            "",
            "| check of one Patient answer | p50 | vs the R4B model |",
            "|---|---|---|",
            f"| fhir.resources R4B `Patient.model_validate` (baseline) | {model:.0f} µs | 1.00x |",
            f"| the mapper's shape (JSON Schema, jsonschema_rs) | {shape:.1f} µs | {shape / model:.3f}x |",
            f"| writing it (orjson), for scale | {write:.1f} µs | {write / model:.3f}x |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(run(args.patients, args.repeat))


if __name__ == "__main__":
    main()
