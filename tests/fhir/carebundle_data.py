"""Third-party FHIR data for the interoperability tests, from a second generator nobody here
wrote: carebundle (PyPI), US Core transaction Bundles (one per patient: Patient, Practitioner,
a finished Encounter, Conditions in ICD-10-CM, RxNorm MedicationRequests, lab and vital-sign
Observations, DiagnosticReports), byte-identical for a given seed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def generate(out: Path, *, count: int, seed: int) -> list[Path]:
    """`carebundle generate` as an integrator runs it: one transaction Bundle file per patient."""
    tool = shutil.which("carebundle", path=str(Path(sys.executable).parent))
    assert tool is not None, "carebundle is a test dependency (pyproject.toml)"
    subprocess.run(
        [
            tool,
            "generate",
            "--profile",
            "mixed",
            "--count",
            str(count),
            "--seed",
            str(seed),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return sorted(out.glob("*.json"))


def bundles(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in paths]
