"""Keep what is received: an Observation carnet accepts is read back as it was written (every
coding with its system, components, valueCodeableConcept, referenceRange, interpretation,
identifiers, a date kept a date), apart from the server's id and meta and references rewritten
to carnet's ids; what carnet cannot take is refused with the element named, nothing written.
The resource is stored encrypted, and a reader without every field of the type gets none of it."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fhirpy.base.exceptions import OperationOutcome
from sqlalchemy import select

from carnet.access.policy import ALL_FIELDS, READ_RULES
from carnet.access.roles import Role
from carnet.phi.gate import Gate
from carnet.phi.importer import import_files
from carnet.records.models import Observation
from carnet.runtime import Runtime
from tests.factories import link_care, make_account, make_facility, make_physician, register_patient
from tests.fhir.conftest import Server

SNOMED = "http://snomed.info/sct"


def _clinic(runtime: Runtime) -> tuple[Any, uuid.UUID]:
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Lefebvre")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    return doctor, uuid.UUID(str(patient.id))


def blood_pressure(patient: str, practitioner: str) -> dict[str, Any]:
    """As a third-party generator writes one: components, no top-level value, a performer,
    an identifier, interpretation, a note."""
    return {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:oid:1.2.3.4", "value": "bp-0001"}],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                        "display": "Vital Signs",
                    }
                ],
                "text": "Vital Signs",
            }
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}],
            "text": "Blood pressure",
        },
        "subject": {"reference": patient, "display": "the patient"},
        "effectiveDateTime": "2024-03-01T10:15:00+01:00",
        "performer": [{"reference": practitioner}],
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "H",
                    }
                ]
            }
        ],
        "note": [{"text": "taken seated, left arm"}],
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}]},
                "valueQuantity": {
                    "value": 142,
                    "unit": "mmHg",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
                "referenceRange": [{"high": {"value": 140, "unit": "mmHg"}}],
            },
            {
                "code": {
                    "coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic"}]
                },
                "valueQuantity": {
                    "value": 88,
                    "unit": "mmHg",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            },
        ],
    }


def smoking_status(patient: str) -> dict[str, Any]:
    """A SNOMED CT code (not LOINC), a valueCodeableConcept, a date (not a dateTime)."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "social-history",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": SNOMED, "code": "229819007", "display": "Tobacco use"}]},
        "subject": {"reference": patient},
        "effectiveDateTime": "2023-11-20",
        "valueCodeableConcept": {
            "coding": [{"system": SNOMED, "code": "8517006", "display": "Ex-smoker"}],
            "text": "ex-smoker",
        },
    }


def _without_server_parts(resource: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    out.pop("id", None)
    out.pop("meta", None)
    return out


@pytest.mark.parametrize("make", ["blood_pressure", "smoking_status"])
def test_an_observation_reads_back_as_it_was_written(fhir_server_both: Server, make: str) -> None:
    runtime = fhir_server_both.runtime
    doctor, patient_id = _clinic(runtime)
    client = fhir_server_both.client_for(doctor)
    sent = (
        blood_pressure(f"Patient/{patient_id}", f"Practitioner/{doctor.practitioner_id}")
        if make == "blood_pressure"
        else smoking_status(f"Patient/{patient_id}")
    )
    created = client.resource("Observation", **copy.deepcopy(sent))
    created.save()
    read = client.execute(f"Observation/{created['id']}", method="get")
    assert read["id"] == created["id"] and read["meta"]["versionId"] == "1"
    assert _without_server_parts(read) == sent
    # The same from a search and from the version kept.
    found = client.resources("Observation").search(patient=str(patient_id)).fetch()
    assert [_without_server_parts(r.serialize()) for r in found] == [sent]
    first = client.execute(f"Observation/{created['id']}/_history/1", method="get")
    assert _without_server_parts(first) == sent
    # Stored encrypted: the ciphertext holds no plaintext of it.
    with runtime.session_factory() as session:
        blob = session.scalar(
            select(Observation.received_ct).where(Observation.id == uuid.UUID(created["id"]))
        )
    assert blob is not None and b"final" not in blob and b"Observation" not in blob


def test_a_correction_follows_into_the_resource_kept(fhir_server_both: Server) -> None:
    runtime = fhir_server_both.runtime
    doctor, patient_id = _clinic(runtime)
    client = fhir_server_both.client_for(doctor)
    sent = smoking_status(f"Patient/{patient_id}")
    sent["valueString"] = sent.pop("valueCodeableConcept")["text"]
    created = client.resource("Observation", **copy.deepcopy(sent))
    created.save()
    corrected = dict(created.serialize(), status="corrected", valueString="current smoker")
    client.resource("Observation", **corrected).save()
    read = client.execute(f"Observation/{created['id']}", method="get")
    assert read["status"] == "corrected" and read["valueString"] == "current smoker"
    assert read["code"] == sent["code"] and read["effectiveDateTime"] == "2023-11-20"
    assert read["meta"]["versionId"] == "2"


@pytest.mark.parametrize(
    ("element", "change"),
    [
        ("Observation.performer", {"performer": [{"reference": "Practitioner/unknown-one"}]}),
        ("Observation.hasMember", {"hasMember": [{"reference": f"Observation/{uuid.uuid4()}"}]}),
        ("Observation.specimen", {"specimen": {"reference": "Specimen/s1"}}),
        ("Observation.code.coding", {"code": {"text": "no coding"}}),
        ("Observation.effective[x]", {"effectiveDateTime": None}),
    ],
)
def test_what_carnet_cannot_take_is_refused_naming_the_element(
    fhir_server: Server, element: str, change: dict[str, Any]
) -> None:
    runtime = fhir_server.runtime
    doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    sent = {k: v for k, v in {**smoking_status(f"Patient/{patient_id}"), **change}.items() if v is not None}
    with pytest.raises(OperationOutcome) as refused:
        client.resource("Observation", **sent).save()
    assert element in str(refused.value)
    with runtime.session_factory() as session:
        assert session.scalar(select(Observation.id).where(Observation.patient_id == patient_id)) is None


def test_the_whole_resource_is_granted_only_with_every_field() -> None:
    """Fail closed: a read grant that leaves out any field of a type leaves out the resource
    as received too (it would show that field)."""
    for rules in READ_RULES.values():
        for resource, grants in rules.items():
            for _relationships, fields in grants:
                if "received" in fields:
                    assert ALL_FIELDS[resource] <= fields
    for resource, fields in ALL_FIELDS.items():
        if resource.value in ("Observation", "Condition", "AllergyIntolerance", "DiagnosticReport"):
            assert "received" in fields


def test_an_imported_observation_reads_back_as_it_was_sent(runtime: Runtime, tmp_path: Path) -> None:
    """`carnet import` keeps the resource whole too (subject rewritten to carnet's patient);
    one carrying a reference the import does not hold is rejected naming the element."""
    facility = make_facility(runtime)
    urn = f"urn:uuid:{uuid.uuid4()}"
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "2900175000134"}],
        "name": [{"family": "Import", "given": ["Léa"]}],
        "gender": "female",
        "birthDate": "1990-01-02",
    }
    smoking = smoking_status(urn)
    pressure = blood_pressure(urn, "Practitioner/abc")
    pressure.pop("performer")
    with_encounter = dict(smoking_status(urn), encounter={"reference": "urn:uuid:elsewhere"})
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"fullUrl": urn, "resource": patient}]
        + [{"resource": r} for r in (smoking, pressure, with_encounter)],
    }
    path = tmp_path / "third-party.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    report = import_files(runtime, paths=[path], facility_id=facility, operator="test-import")
    assert report.accepted == {"Patient": 1, "Observation": 2}
    assert [r.resource_type for r in report.rejected] == ["Observation"]
    assert "Observation.encounter" in report.rejected[0].outcome["issue"][0]["diagnostics"]

    doctor = make_physician(runtime, facility)
    found = Gate(runtime, make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility))
    pid = found.search_patients(identifier="2900175000134").items[0].id
    link_care(runtime, patient_id=pid, practitioner_id=doctor.practitioner_id, facility_id=facility)
    kept = [o.received for o in Gate(runtime, doctor).list_observations(patient_id=pid)]
    for sent in (smoking, pressure):
        sent["subject"]["reference"] = f"Patient/{pid}"
    assert sorted(json.dumps(k, sort_keys=True) for k in kept) == sorted(
        json.dumps(s, sort_keys=True) for s in (smoking, pressure)
    )


def _condition(patient: str, system: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "verificationStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "encounter-diagnosis",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": system, "code": code, "display": "as the sender says"}], "text": "dx"},
        "subject": {"reference": patient},
        **extra,
    }


@pytest.mark.parametrize(
    ("system", "code", "extra"),
    [
        (SNOMED, "44054006", {"onsetDateTime": "2019-05-02"}),
        ("http://hl7.org/fhir/sid/icd-10-cm", "E11.9", {"onsetPeriod": {"start": "2020-01-01T00:00:00Z"}}),
        ("http://hl7.org/fhir/sid/icd-10", "J45", {"onsetString": "childhood"}),
    ],
)
def test_a_condition_in_any_coding_system_keeps_its_system(
    fhir_server: Server, system: str, code: str, extra: dict[str, Any]
) -> None:
    runtime = fhir_server.runtime
    doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    sent = _condition(f"Patient/{patient_id}", system, code, **extra)
    created = client.resource("Condition", **copy.deepcopy(sent))
    created.save()
    read = client.execute(f"Condition/{created['id']}", method="get")
    # Sent without a recorder: kept so (who recorded it in carnet is in Provenance).
    assert _without_server_parts(read) == sent
    # Resolved through the API: the resource kept follows (R4 con-5 once entered in error).
    client.execute(f"Condition/{created['id']}", method="delete")
    gone = client.execute(f"Condition/{created['id']}", method="get")
    assert gone["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "clinicalStatus" not in gone and gone["code"] == sent["code"]


def test_an_icd10_code_is_checked_as_one_whatever_the_edition(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    sent = _condition(f"Patient/{patient_id}", "http://hl7.org/fhir/sid/icd-10-cm", "not a code")
    with pytest.raises(OperationOutcome) as refused:
        client.resource("Condition", **sent).save()
    assert "Condition.code.coding.code" in str(refused.value)
