"""docs/ARCHITECTURE.md stays true: it names every folder of carnet/, every file it names exists,
and every domain's operations module is in the map."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAP = ROOT / "docs" / "ARCHITECTURE.md"
# The patient-data domains: each owns its operations, run only by the gate kernel.
DOMAINS = ("patients", "scheduling", "records", "prescriptions", "coverage", "billing")


def _folders() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "carnet").glob("*/__init__.py"))


def test_the_map_names_every_folder_of_carnet() -> None:
    text = MAP.read_text(encoding="utf-8")
    folders = _folders()
    assert set(DOMAINS) <= set(folders)
    missing = [f for f in folders if f"`carnet/{f}`" not in text]
    assert not missing, f"docs/ARCHITECTURE.md does not name: {missing}"


def test_every_file_the_map_names_exists() -> None:
    named = re.findall(r"`(carnet/[\w/]+\.py)`", MAP.read_text(encoding="utf-8"))
    assert len(named) > 10
    absent = [n for n in named if not (ROOT / n).is_file()]
    assert not absent, f"docs/ARCHITECTURE.md names files that do not exist: {absent}"


def test_each_domain_owns_its_operations_and_the_map_says_where() -> None:
    text = MAP.read_text(encoding="utf-8")
    for domain in DOMAINS:
        module = f"carnet/{domain}/operations.py"
        assert (ROOT / module).is_file(), module
        assert f"`{module}`" in text, module
