"""Beds over FHIR (fhirpy): an Encounter posted with a ward and a bed Location takes the bed;
a taken bed is refused with an OperationOutcome and nothing changes; a transfer keeps the bed
before in Encounter.location[] with its period; Locations of kind bed and room have partOf
and physicalType (bd, ro, wa)."""

from __future__ import annotations

import pytest
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome

from carnet.scheduling.models import Encounter
from tests.factories import link_care, make_beds, make_location, register_patient
from tests.fhir.conftest import Server
from tests.fhir.test_stays_and_reports import _clinic, _stay
from tests.interfaces.records import rows

TYPES = "http://terminology.hl7.org/CodeSystem/location-physical-type"


def _code(location: dict[str, object]) -> str:
    return str(location["physicalType"]["coding"][0]["code"])  # type: ignore[index]


def test_an_encounter_takes_moves_and_frees_a_bed(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    ward, other = make_location(runtime, facility), make_location(runtime, facility)
    here = make_beds(runtime, facility, ward, {"Chambre 1": ["A", "B"]})
    there = make_beds(runtime, facility, other, {"Chambre 7": ["A"]})
    client = fhir_server.client_for(doctor)

    # The Location of a bed: its room (partOf), its physical type; the room's ward.
    bed = client.reference("Location", str(here["Chambre 1/A"])).to_resource()
    assert bed["partOf"]["reference"] == f"Location/{here['Chambre 1']}" and _code(bed) == "bd"
    assert bed["physicalType"]["coding"][0]["system"] == TYPES
    room = client.reference("Location", str(here["Chambre 1"])).to_resource()
    assert room["partOf"]["reference"] == f"Location/{ward}" and _code(room) == "ro"
    assert _code(client.reference("Location", str(ward)).to_resource()) == "wa"

    # Admitted to the ward and a bed: the bed is the stay's.
    body = _stay(patient_id, ward)
    body["location"] = [
        {"location": {"reference": f"Location/{ward}"}, "status": "active"},
        {"location": {"reference": f"Location/{here['Chambre 1/A']}"}, "status": "active"},
    ]
    stay = client.resource("Encounter", **body)
    stay.save()
    [row] = rows(runtime, Encounter)
    assert row.bed_id == here["Chambre 1/A"]
    assert [(e["location"]["reference"], e["status"], _code(e)) for e in stay["location"]] == [
        (f"Location/{ward}", "active", "wa"),
        (f"Location/{here['Chambre 1/A']}", "active", "bd"),
    ]

    # Another patient to the same bed: refused, nothing written.
    other_patient = register_patient(runtime, facility, family="Voisin")
    assert doctor.practitioner_id is not None
    link_care(
        runtime, patient_id=other_patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility
    )
    taken = _stay(other_patient.id, ward)
    taken["location"] = [{"location": {"reference": f"Location/{here['Chambre 1/A']}"}}]
    with pytest.raises((OperationOutcome, MultipleResourcesFound)) as refused:
        client.resource("Encounter", **taken).save()
    assert "taken by another stay" in str(refused.value)
    assert len(rows(runtime, Encounter)) == 1

    # Transfer to a bed of the other ward (a bed alone names its ward): the bed before is
    # kept, completed, with its period.
    stay["location"] = [{"location": {"reference": f"Location/{there['Chambre 7/A']}"}, "status": "active"}]
    stay.save()
    entries = [
        (e["location"]["reference"], e["status"], "end" in e.get("period", {})) for e in stay["location"]
    ]
    assert entries == [
        (f"Location/{other}", "active", False),
        (f"Location/{here['Chambre 1/A']}", "completed", True),
        (f"Location/{there['Chambre 7/A']}", "active", False),
    ]
    # The freed bed takes the other patient.
    client.resource("Encounter", **taken).save()
    assert {r.bed_id for r in rows(runtime, Encounter)} == {here["Chambre 1/A"], there["Chambre 7/A"]}
