"""Round trip of third-party data: a clinosim cohort (PyPI, fixed seed) imported with `carnet
import`, then read back over FHIR and compared element by element with what was sent: equal
apart from `id`, `meta` and references rewritten to carnet's ids. The rejected count is 0 for
the types carnet takes whole; every other rejection names the element (FHIRPath-like) or the
type carnet does not hold."""

from __future__ import annotations

import copy
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carnet.phi.importer import ImportReport, import_files
from tests.factories import link_care, make_facility, make_physician
from tests.fhir import clinosim_data
from tests.fhir.conftest import Server

# Taken whole: none of these may be rejected.
NEVER_REJECTED = {
    "Patient",
    "Encounter",
    "MedicationRequest",
    "Immunization",
    "Procedure",
    "MedicationAdministration",
    "MedicationStatement",
    "ServiceRequest",
    "Specimen",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Condition",
    "AllergyIntolerance",
}
# Read back as received: every type taken whole, and what else clinosim sends that carnet keeps.
KEPT_WHOLE = NEVER_REJECTED | {"Observation", "DiagnosticReport", "Coverage"}
DIRECTORY_TYPES = {"Practitioner", "PractitionerRole", "Organization", "Location"}
# The element naming the patient, where it is not `subject`.
_PATIENT_ELEMENT = {"Immunization": "patient", "AllergyIntolerance": "patient", "Coverage": "beneficiary"}
ELEMENT = re.compile(r"^[A-Za-z]+\.ndjson:\d+: ([A-Z][A-Za-z]+)[.:]")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return clinosim_data.generate(tmp_path_factory.mktemp("clinosim"), population=20, seed=42)


def _rewritten(value: Any, ids: dict[str, str], types: dict[str, str]) -> Any:
    """The resource as carnet should give it back: every reference to an accepted resource of
    the import rewritten to `Type/<carnet id>`."""
    if isinstance(value, dict):
        out = {k: _rewritten(v, ids, types) for k, v in value.items()}
        reference = out.get("reference")
        if isinstance(reference, str) and reference in ids:
            out["reference"] = f"{types[reference]}/{ids[reference]}"
        return out
    if isinstance(value, list):
        return [_rewritten(v, ids, types) for v in value]
    return value


def _server_parts_removed(resource: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        out["meta"] = meta
    return out


def _import(server: Server, cohort: list[Path]) -> tuple[ImportReport, Any]:
    runtime = server.runtime
    facility = make_facility(runtime)
    report = import_files(runtime, paths=cohort, facility_id=facility, operator="clinosim-test")
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    for key, carnet_id in report.ids.items():
        if key.startswith("Patient/"):
            link_care(
                runtime,
                patient_id=uuid.UUID(carnet_id),
                practitioner_id=doctor.practitioner_id,
                facility_id=facility,
            )
    return report, server.client_for(doctor)


@pytest.fixture
def imported(fhir_server: Server, cohort: list[Path]) -> Iterator[tuple[ImportReport, Any]]:
    yield _import(fhir_server, cohort)


# Read back on PostgreSQL (the fast path's storage), as a deployment reads it.
ON_POSTGRES = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def imported_pg(fhir_server_both: Server, cohort: list[Path]) -> Iterator[tuple[ImportReport, Any]]:
    yield _import(fhir_server_both, cohort)


def test_import_takes_the_listed_types_whole_and_names_every_rejected_element(
    imported: tuple[ImportReport, Any], cohort: list[Path]
) -> None:
    report, _client = imported
    resources = clinosim_data.read(cohort)
    # What the generator wrote that is not FHIR R4 (by fhir.resources, independently of carnet):
    # e.g. a MedicationAdministration.dosage with doseAndRate, an element of MedicationRequest's.
    invalid = Counter(r["resourceType"] for r in resources if not clinosim_data.valid_r4(r))
    rejected = Counter(r.resource_type for r in report.rejected if r.resource_type in NEVER_REJECTED)
    assert rejected == Counter({t: n for t, n in invalid.items() if t in NEVER_REJECTED}), [
        r.outcome["issue"][0]["diagnostics"] for r in report.rejected if r.resource_type in NEVER_REJECTED
    ][:5]
    for rejection in report.rejected:
        diagnostics = rejection.outcome["issue"][0]["diagnostics"]
        named = ELEMENT.match(diagnostics)
        assert named is not None and named.group(1) == rejection.resource_type, diagnostics
        if rejection.resource_type in NEVER_REJECTED:
            assert "not valid FHIR R4" in diagnostics, diagnostics
    sent = Counter(r["resourceType"] for r in resources)
    for rtype in NEVER_REJECTED:
        assert report.accepted.get(rtype, 0) == sent.get(rtype, 0) - invalid.get(rtype, 0), rtype
    assert report.dangling == []


def _read_back(report: ImportReport, client: Any) -> dict[str, dict[str, Any]]:
    """Every resource of the import, as carnet gives it now, by carnet id: each patient's chart
    sections by search (the gate's lists), the rest (directory entries...) read one by one."""
    found: dict[str, dict[str, Any]] = {}
    patients = [carnet_id for key, carnet_id in report.ids.items() if key.startswith("Patient/")]
    for rtype in sorted(KEPT_WHOLE - DIRECTORY_TYPES - {"Patient"}):
        element = _PATIENT_ELEMENT.get(rtype, "subject")
        for patient in patients:
            if rtype == "Coverage":
                # As the server sends it: fhirpy's serialize() drops empty arrays (clinosim's
                # Coverage has `extension: []`), and a patient has a handful of coverages.
                bundle = client.execute(rtype, method="get", params={element: patient, "_count": "100"})
                assert not [link for link in bundle.get("link") or [] if link.get("relation") == "next"]
                for entry in bundle.get("entry") or []:
                    found[entry["resource"]["id"]] = entry["resource"]
                continue
            for resource in client.resources(rtype).search(**{element: patient}).limit(100).fetch_all():
                found[resource["id"]] = resource.serialize()
    # Directory entries, and what a chart section's bound (500) leaves for reading by id.
    for key, carnet_id in report.ids.items():
        rtype = key.partition("/")[0]
        if rtype in KEPT_WHOLE and carnet_id not in found:
            found[carnet_id] = dict(client.execute(f"{rtype}/{carnet_id}", method="get"))
    return found


@ON_POSTGRES
def test_what_was_imported_reads_back_as_it_was_sent(
    imported_pg: tuple[ImportReport, Any], cohort: list[Path]
) -> None:
    report, client = imported_pg
    resources = clinosim_data.read(cohort)
    types = {f"{r['resourceType']}/{r.get('id')}": r["resourceType"] for r in resources}
    carnet = _read_back(report, client)
    compared: Counter[str] = Counter()
    for resource in resources:
        rtype = resource["resourceType"]
        key = f"{rtype}/{resource.get('id')}"
        if rtype not in KEPT_WHOLE or key not in report.ids:
            continue
        expected = _server_parts_removed(_rewritten(copy.deepcopy(resource), report.ids, types))
        read = carnet.get(report.ids[key])
        assert read is not None, f"{key} imported as {rtype}/{report.ids[key]} but not read back"
        assert read["resourceType"] == rtype
        assert _server_parts_removed(read) == expected, key
        compared[rtype] += 1
    # Every type carnet took whole was compared, every resource of it.
    assert set(compared) == KEPT_WHOLE & set(report.accepted)
    for rtype, n in compared.items():
        assert n == report.accepted[rtype], rtype
