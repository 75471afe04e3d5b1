"""`carnet import`'s machinery as issue 16's throughput work left it: references nested anywhere
in a resource are rewritten to carnet's ids or refused naming the element, and the run hands
the garbage collector back as it found it, whatever happens."""

from __future__ import annotations

import gc
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from carnet.kernel.errors import InvalidInput
from carnet.phi.importer import import_files
from carnet.phi.loader import decrypt_field
from carnet.records.models import Observation
from carnet.runtime import Runtime
from tests.factories import make_facility

INS = "urn:oid:1.2.250.1.213.1.4.8"


def _ndjson(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources), encoding="utf-8")
    return path


def _observation(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-01-02T10:00:00+00:00",
        "valueQuantity": {"value": 72, "unit": "/min"},
        **extra,
    }


def _run(runtime: Runtime, tmp_path: Path, observations: list[dict[str, Any]]) -> tuple[Any, uuid.UUID]:
    facility = make_facility(runtime)
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": INS, "value": "290017512345612"}],
        "name": [{"family": "Machinery", "given": ["Léa"]}],
        "gender": "female",
        "birthDate": "1990-01-02",
    }
    practitioner = {
        "resourceType": "Practitioner",
        "id": "dr1",
        "identifier": [{"system": "urn:example:staff", "value": "dr1"}],
        "name": [{"family": "Other"}],
    }
    paths = [
        _ndjson(tmp_path / "Patient.ndjson", [patient]),
        _ndjson(tmp_path / "Practitioner.ndjson", [practitioner]),
        _ndjson(tmp_path / "Observation.ndjson", observations),
    ]
    return import_files(runtime, paths=paths, facility_id=facility, operator="test"), facility


def test_a_nested_reference_is_rewritten_or_refused_naming_its_element(
    runtime: Runtime, tmp_path: Path
) -> None:
    kept = _observation(
        id="o1",
        performer=[{"display": "no reference"}, {"reference": "Practitioner/dr1", "display": "Dr Other"}],
        extension=[{"url": "urn:example:seen-by", "valueReference": {"reference": "Practitioner/dr1"}}],
        note=[{"text": "lists of objects, lists of strings and strings are walked or skipped"}],
    )
    refused = _observation(
        id="o2",
        extension=[
            {"url": "urn:example:fine", "valueString": "x"},
            {"url": "urn:example:device", "valueReference": {"reference": "Device/nowhere"}},
        ],
    )
    report, _facility = _run(runtime, tmp_path, [kept, refused])

    assert report.accepted == {"Patient": 1, "Practitioner": 1, "Observation": 1}
    [rejection] = report.rejected
    assert rejection.source == "Observation.ndjson:2"
    assert rejection.outcome["issue"][0]["diagnostics"] == (
        "Observation.ndjson:2: Observation.extension[1].valueReference: carnet cannot resolve this"
        " reference (refused, not dropped)"
    )
    # The kept resource names carnet's practitioner wherever the sender named its own.
    practitioner = report.ids["Practitioner/dr1"]
    with runtime.session_factory() as session:
        row = session.get(Observation, uuid.UUID(report.ids["Observation/o1"]))
        assert row is not None
        received = decrypt_field(
            runtime.keyring, table="observations", column="received", row_id=row.id, blob=row.received_ct
        )
    assert received["performer"] == [
        {"display": "no reference"},
        {"reference": f"Practitioner/{practitioner}", "display": "Dr Other"},
    ]
    assert received["extension"][0]["valueReference"] == {"reference": f"Practitioner/{practitioner}"}
    assert received["subject"] == {"reference": f"Patient/{report.ids['Patient/p1']}"}
    assert received["note"] == kept["note"]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_run_leaves_the_collector_as_it_found_it(runtime: Runtime, tmp_path: Path, enabled: bool) -> None:
    """The automatic collector is off while a run holds its resources and what it read is frozen;
    after it (done or failed), nothing is left frozen and the collector is on again only if it
    was on before."""
    was = gc.isenabled()
    try:
        if not enabled:
            gc.disable()
        frozen = gc.get_freeze_count()
        report, facility = _run(runtime, tmp_path, [_observation(id="o1")])
        assert report.total_accepted == 3
        assert gc.isenabled() is enabled
        assert gc.get_freeze_count() == frozen  # what the run set aside is handed back
        broken = tmp_path / "broken.json"
        broken.write_text("{not json", encoding="utf-8")
        with pytest.raises(InvalidInput):
            import_files(runtime, paths=[broken], facility_id=facility, operator="test")
        assert gc.isenabled() is enabled
        assert gc.get_freeze_count() == frozen
    finally:
        if was:
            gc.enable()
        else:
            gc.disable()
