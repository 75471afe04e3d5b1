"""`carnet import` of third-party shaped data, kept whole (issue 16): resources per second.

Bulk NDJSON as a generator writes it: per patient, a blood pressure (two components, no
top-level value, interpretation, an identifier), a smoking status (SNOMED CT,
valueCodeableConcept, a date), a lab result (valueQuantity, referenceRange) and a Condition
(SNOMED CT, onset a date). Each resource is validated (fhir.resources), mapped by its resource
module's own rules, and kept whole, encrypted, beside its columns. The baseline, in the same
run: the bare encrypted loader writing the same number of patients (the seeding path).

    .venv/bin/python -m benchmarks.import_received --patients 2500
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._db import bench_runtime
from benchmarks.fhir_load import seed_patients
from carnet.phi.importer import import_files
from tests.factories import make_facility

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _category(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": CATEGORY, "code": code}]}]


def resources(n: int) -> dict[str, list[dict[str, Any]]]:
    subject = {"reference": f"Patient/src{n}"}
    patient = {
        "resourceType": "Patient",
        "id": f"src{n}",
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": f"{2_900_000_000_000 + n}"}],
        "name": [{"family": f"Tiers{n}", "given": ["Bench"]}],
        "gender": "male",
        "birthDate": "1968-03-04",
    }
    mmhg = {"unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
    pressure = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:oid:1.2.3.4", "value": f"bp-{n}"}],
        "status": "final",
        "category": _category("vital-signs"),
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": subject,
        "effectiveDateTime": "2024-03-01T10:15:00+01:00",
        "interpretation": [{"text": "high"}],
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": 142, **mmhg},
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                "valueQuantity": {"value": 88, **mmhg},
            },
        ],
    }
    smoking = {
        "resourceType": "Observation",
        "status": "final",
        "category": _category("social-history"),
        "code": {"coding": [{"system": SNOMED, "code": "229819007", "display": "Tobacco use"}]},
        "subject": subject,
        "effectiveDateTime": "2023-11-20",
        "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "8517006", "display": "Ex-smoker"}]},
    }
    lab = {
        "resourceType": "Observation",
        "status": "final",
        "category": _category("laboratory"),
        "code": {"coding": [{"system": LOINC, "code": "718-7", "display": "Hemoglobin"}]},
        "subject": subject,
        "effectiveDateTime": "2024-03-01T08:00:00Z",
        "valueQuantity": {"value": 13.1 + n % 20 / 10, "unit": "g/dL"},
        "referenceRange": [{"low": {"value": 12.0, "unit": "g/dL"}, "high": {"value": 16.0, "unit": "g/dL"}}],
    }
    condition = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": SNOMED, "code": "38341003", "display": "Hypertension"}]},
        "subject": subject,
        "onsetDateTime": "2015-06-01",
    }
    return {"Patient": [patient], "Observation": [pressure, smoking, lab], "Condition": [condition]}


def run(patients: int) -> str:
    load_before = os.getloadavg()
    with bench_runtime("import_received") as runtime, tempfile.TemporaryDirectory() as tmp:
        facility = make_facility(runtime)
        paths = {name: Path(tmp) / f"{name}.ndjson" for name in ("Patient", "Observation", "Condition")}
        files = {name: path.open("w", encoding="utf-8") for name, path in paths.items()}
        for n in range(patients):
            for name, items in resources(n).items():
                for item in items:
                    files[name].write(json.dumps(item) + "\n")
        for f in files.values():
            f.close()
        began = time.perf_counter()
        report = import_files(runtime, paths=list(paths.values()), facility_id=facility, operator="bench")
        seconds = time.perf_counter() - began
        assert not report.rejected, [r.outcome for r in report.rejected[:3]]
        _ids, loader_seconds = seed_patients(runtime, facility, 3_000_000, patients)
    rate = report.total_accepted / seconds
    loader_rate = patients / loader_seconds
    load_after = os.getloadavg()
    return (
        f"carnet import, third-party shaped NDJSON, PostgreSQL: {report.total_accepted:,} resources "
        f"({patients:,} patients) in {seconds:.2f} s = {rate:,.0f} resources/s; "
        f"bare encrypted loader, same run: {loader_rate:,.0f} patients/s; ratio {rate / loader_rate:.2f}x; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=2500)
    args = parser.parse_args()
    print(run(args.patients))


if __name__ == "__main__":
    main()
