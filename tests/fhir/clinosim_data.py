"""Third-party FHIR data for the interoperability tests: clinosim (PyPI), a physiology-driven
synthetic hospital generator nobody here wrote, run with a fixed seed (Bulk Data NDJSON)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

# Files in the order an integrator lists them: patients, then the directory, then the rest.
ORDER = (
    "Patient",
    "Organization",
    "Location",
    "Practitioner",
    "PractitionerRole",
    "Encounter",
    "Condition",
    "AllergyIntolerance",
    "MedicationRequest",
    "MedicationAdministration",
    "MedicationStatement",
    "Immunization",
    "Procedure",
    "ServiceRequest",
    "Specimen",
    "Observation",
    "DiagnosticReport",
    "Coverage",
)


def generate(out: Path, *, population: int, seed: int) -> list[Path]:
    """NDJSON files of a clinosim US cohort, ordered (types carnet does not hold last)."""
    tool = shutil.which("clinosim", path=str(Path(sys.executable).parent))
    assert tool is not None, "clinosim is a test dependency (pyproject.toml)"
    subprocess.run(
        [
            tool,
            "simulate",
            "--country",
            "US",
            "--population",
            str(population),
            "--seed",
            str(seed),
            "--output",
            str(out),
            "--format",
            "fhir-r4",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    files = {p.stem: p for p in (out / "fhir_r4").glob("*.ndjson")}
    ordered = [files.pop(name) for name in ORDER if name in files]
    return ordered + [files[name] for name in sorted(files)]


def valid_r4(resource: dict[str, Any]) -> bool:
    """Is it FHIR R4 as fhir.resources' R4B models read it?"""
    model = get_fhir_model_class(resource["resourceType"])
    try:
        model.model_validate(resource)
    except (ValidationError, TypeError, ValueError, AttributeError):  # fhir_core raises these too
        return False
    return True


def read(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
