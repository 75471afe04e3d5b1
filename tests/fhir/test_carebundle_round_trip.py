"""Round trip of a second third-party source: carebundle's transaction Bundles (PyPI, fixed
seed), taken whole both by `carnet import` and by `POST /fhir` (a physician in the patient's
care), then read back over FHIR and compared element by element with what was sent: equal apart
from `id`, `meta` (versionId, lastUpdated) and references rewritten to carnet's ids. Its
Encounters are finished visits (another system's, kept whole: not admissions here) and its
MedicationRequests are coded in RxNorm (kept whole, never relabelled as ATC)."""

from __future__ import annotations

import copy
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fhirpy.base.exceptions import OperationOutcome
from sqlalchemy import func, select

from carnet.org.models import DirectoryEntry
from carnet.phi.importer import import_files
from carnet.prescriptions.models import Prescription
from carnet.runtime import Runtime
from carnet.settings import Settings
from tests.factories import link_care, make_facility, make_physician, register_patient
from tests.fhir import carebundle_data
from tests.fhir.conftest import Server
from tests.fhir.test_clinosim_round_trip import ON_POSTGRES, _rewritten, _server_parts_removed
from tests.fhir.test_import import _cli

# Read back as received: every type of the Bundles.
KEPT_WHOLE = {
    "Patient",
    "Practitioner",
    "Encounter",
    "Condition",
    "Observation",
    "MedicationRequest",
    "DiagnosticReport",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return carebundle_data.generate(tmp_path_factory.mktemp("carebundle"), count=4, seed=7)


def _expected(resource: dict[str, Any], ids: dict[str, str], types: dict[str, str]) -> dict[str, Any]:
    return _server_parts_removed(_rewritten(copy.deepcopy(resource), ids, types))


def _diff(read: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Element by element, naming the first that differs."""
    got = _server_parts_removed(read)
    for key in sorted(set(got) | set(expected)):
        assert got.get(key) == expected.get(key), f"{where}.{key}"


def test_carnet_import_takes_each_bundle_whole(
    sqlite_runtime: Runtime, settings: Settings, sqlite_url: str, files: list[Path]
) -> None:
    facility = make_facility(sqlite_runtime)
    result = _cli(settings, sqlite_url, "import", *map(str, files), "--facility", str(facility))
    assert result.returncode == 0, result.stdout + result.stderr
    sent = Counter(e["resource"]["resourceType"] for b in carebundle_data.bundles(files) for e in b["entry"])
    for rtype, n in sent.items():
        assert f"{n} {rtype}" in result.stdout, (rtype, result.stdout)
    assert "rejected" not in result.stdout


@ON_POSTGRES
def test_what_was_imported_reads_back_as_it_was_sent(fhir_server_both: Server, files: list[Path]) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    report = import_files(runtime, paths=files, facility_id=facility, operator="carebundle-test")
    assert report.rejected == [] and report.dangling == []
    bundles = carebundle_data.bundles(files)
    entries = [e for b in bundles for e in b["entry"]]
    assert report.total_accepted == len(entries)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    types = {e["fullUrl"]: e["resource"]["resourceType"] for e in entries}
    for entry in entries:
        if entry["resource"]["resourceType"] == "Patient":
            link_care(
                runtime,
                patient_id=uuid.UUID(report.ids[entry["fullUrl"]]),
                practitioner_id=doctor.practitioner_id,
                facility_id=facility,
            )
    client = fhir_server.client_for(doctor)
    compared: Counter[str] = Counter()
    for entry in entries:
        rtype = entry["resource"]["resourceType"]
        if rtype not in KEPT_WHOLE:
            continue
        carnet_id = report.ids[entry["fullUrl"]]
        read = dict(client.execute(f"{rtype}/{carnet_id}", method="get"))
        assert read["id"] == carnet_id and read["meta"]["versionId"]
        _diff(read, _expected(entry["resource"], report.ids, types), f"{rtype}/{carnet_id}")
        compared[rtype] += 1
    assert set(compared) == KEPT_WHOLE
    # The RxNorm codes stay RxNorm: no column took them for ATC (what carnet's checks read).
    with runtime.session_factory() as session:
        assert set(session.scalars(select(Prescription.substance_code))) == {""}


def _posted(bundle: dict[str, Any], patient: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The Bundle as the integrator posts it for a patient carnet already holds (matched by the
    integrator): its Patient entry replaced by that patient, every other entry as generated."""
    bundle = copy.deepcopy(bundle)
    source = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    bundle["entry"].remove(source)
    ids = {source["fullUrl"]: patient}

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("reference") == source["fullUrl"]:
                value["reference"] = f"Patient/{patient}"
            for item in value.values():
                swap(item)
        elif isinstance(value, list):
            for item in value:
                swap(item)
        return value

    swap(bundle["entry"])
    return bundle, ids


def _cared_patient(server: Server) -> tuple[Any, uuid.UUID, str]:
    runtime = server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    patient = register_patient(runtime, facility, family="Tiers").id
    link_care(
        runtime,
        patient_id=uuid.UUID(str(patient)),
        practitioner_id=doctor.practitioner_id,
        facility_id=facility,
    )
    return doctor, facility, str(patient)


def test_a_posted_transaction_bundle_is_taken_whole(fhir_server: Server, files: list[Path]) -> None:
    doctor, facility, _patient = _cared_patient(fhir_server)
    assert doctor.practitioner_id is not None
    client = fhir_server.client_for(doctor)
    compared: Counter[str] = Counter()
    for number, generated in enumerate(carebundle_data.bundles(files)):
        patient = str(register_patient(fhir_server.runtime, facility, family=f"Tiers{number}").id)
        link_care(
            fhir_server.runtime,
            patient_id=uuid.UUID(patient),
            practitioner_id=doctor.practitioner_id,
            facility_id=facility,
        )
        bundle, ids = _posted(generated, patient)
        answer = client.execute("", method="post", data=bundle)
        assert answer["type"] == "transaction-response"
        statuses = [e["response"]["status"] for e in answer["entry"]]
        assert len(statuses) == len(bundle["entry"]) and all(s.startswith("201") for s in statuses), statuses
        types = {e["fullUrl"]: e["resource"]["resourceType"] for e in bundle["entry"]}
        types.update(dict.fromkeys(ids, "Patient"))
        for sent, entry in zip(bundle["entry"], answer["entry"], strict=True):
            ids[sent["fullUrl"]] = entry["response"]["location"].split("/")[1]
        for sent, entry in zip(bundle["entry"], answer["entry"], strict=True):
            location = entry["response"]["location"].split("/_history")[0]
            read = dict(client.execute(location, method="get"))
            _diff(read, _expected(sent["resource"], ids, types), location)
            compared[sent["resource"]["resourceType"]] += 1
    # The patient is carnet's (registered, matched by the integrator): no Patient entry is sent.
    assert set(compared) == KEPT_WHOLE - {"Patient"}


def test_a_posted_patient_entry_is_kept_whole(fhir_server: Server, files: list[Path]) -> None:
    """A transaction Bundle registering the generator's Patient (with its directory entries):
    read back as it was sent, references carnet's."""
    doctor, facility, _patient = _cared_patient(fhir_server)
    assert doctor.practitioner_id is not None
    client = fhir_server.client_for(doctor)
    generated = carebundle_data.bundles(files)[0]
    entries = [
        e
        for e in generated["entry"]
        if e["resource"]["resourceType"] in ("Patient", "Practitioner", "Organization", "Location")
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": copy.deepcopy(entries)}
    answer = client.execute("", method="post", data=bundle)
    ids = {
        sent["fullUrl"]: entry["response"]["location"].split("/")[1]
        for sent, entry in zip(bundle["entry"], answer["entry"], strict=True)
    }
    types = {e["fullUrl"]: e["resource"]["resourceType"] for e in entries}
    sent = next(e for e in entries if e["resource"]["resourceType"] == "Patient")
    link_care(
        fhir_server.runtime,
        patient_id=uuid.UUID(ids[sent["fullUrl"]]),
        practitioner_id=doctor.practitioner_id,
        facility_id=facility,
    )
    read = dict(client.execute(f"Patient/{ids[sent['fullUrl']]}", method="get"))
    _diff(read, _expected(sent["resource"], ids, types), "Patient")
    assert len(_server_parts_removed(read)) > 6  # more than carnet's columns hold


def test_a_refused_bundle_keeps_nothing_not_even_its_directory_entries(
    fhir_server: Server, files: list[Path]
) -> None:
    doctor, facility, patient = _cared_patient(fhir_server)
    client = fhir_server.client_for(doctor)
    bundle, _ids = _posted(carebundle_data.bundles(files)[1], patient)
    # The last entry names a stay no system sent: the whole Bundle is refused, naming it.
    last = bundle["entry"][-1]["resource"]
    last["encounter"] = {"reference": f"Encounter/{uuid.uuid4()}"}
    with pytest.raises(OperationOutcome) as refused:
        client.execute("", method="post", data=bundle)
    assert "encounter" in str(refused.value)
    with fhir_server.runtime.session_factory() as session:
        kept = session.scalar(
            select(func.count()).select_from(DirectoryEntry).where(DirectoryEntry.facility_id == facility)
        )
    assert kept == 0
    assert client.resources("Encounter").search(patient=patient).fetch_all() == []
