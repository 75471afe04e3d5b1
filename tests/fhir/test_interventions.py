"""Immunization, Procedure, MedicationAdministration and MedicationStatement: recorded through
the gate, kept whole as received (any code system, every element) and read back as written,
apart from the server's id and meta; a reference carnet cannot resolve is refused naming the
element; the wrong role is refused and every access is audited."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
from fhirpy.base.exceptions import ForbiddenError, OperationOutcome, ResourceNotFound

from carnet.access.roles import Role
from tests.factories import link_care, make_account, make_facility, make_physician, register_patient
from tests.fhir.conftest import Server, audit_rows

SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def resources(patient: str) -> dict[str, dict[str, Any]]:
    """As a third-party generator writes them (clinosim's shapes)."""
    return {
        "Immunization": {
            "resourceType": "Immunization",
            "identifier": [{"system": "urn:example:immunization", "value": "imm-1"}],
            "status": "completed",
            "vaccineCode": {
                "coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "10", "display": "IPV"}]
            },
            "patient": {"reference": patient},
            "occurrenceDateTime": "2003-06-09",
            "primarySource": False,
            "protocolApplied": [{"doseNumberPositiveInt": 4}],
            "lotNumber": "L322-200306-327",
            "site": {"coding": [{"system": SNOMED, "code": "368208006", "display": "Left deltoid"}]},
            "doseQuantity": {"value": 0.5, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"},
        },
        "Procedure": {
            "resourceType": "Procedure",
            "status": "completed",
            "code": {
                "coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "96360"}],
                "text": "iv_line",
            },
            "subject": {"reference": patient},
            "category": {"coding": [{"system": SNOMED, "code": "277132007"}]},
            "performedPeriod": {"start": "2026-09-14T09:44:00Z", "end": "2026-09-14T10:15:00Z"},
            "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "S06.0X0A"}]}],
            "outcome": {"coding": [{"system": SNOMED, "code": "385669000", "display": "Successful"}]},
        },
        "MedicationAdministration": {
            "resourceType": "MedicationAdministration",
            "status": "completed",
            "medicationCodeableConcept": {
                "text": "Acetaminophen",
                "coding": [{"system": RXNORM, "code": "161"}],
            },
            "subject": {"reference": patient},
            "effectiveDateTime": "2026-07-07T08:14:48.393442Z",
            "dosage": {"text": "500.0mg TID", "dose": {"value": 500.0, "unit": "mg"}},
        },
        "MedicationStatement": {
            "resourceType": "MedicationStatement",
            "status": "active",
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.whocc.no/atc", "code": "C09AA05"}]
            },
            "subject": {"reference": patient},
            "effectivePeriod": {"start": "2020-01-01"},
            "dosage": [{"text": "5 mg once a day"}],
        },
    }


def _without_server_parts(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def _clinic(server: Server) -> tuple[Any, uuid.UUID, uuid.UUID]:
    runtime = server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Vaccin")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    return doctor, uuid.UUID(str(patient.id)), facility


@pytest.mark.parametrize(
    "rtype", ["Immunization", "Procedure", "MedicationAdministration", "MedicationStatement"]
)
def test_each_reads_back_as_it_was_written(fhir_server_both: Server, rtype: str) -> None:
    doctor, patient_id, _facility = _clinic(fhir_server_both)
    client = fhir_server_both.client_for(doctor)
    sent = resources(f"Patient/{patient_id}")[rtype]
    created = client.resource(rtype, **copy.deepcopy(sent))
    created.save()
    read = client.execute(f"{rtype}/{created['id']}", method="get")
    assert read["meta"]["versionId"] == "1"
    assert _without_server_parts(read) == sent
    element = "patient" if rtype == "Immunization" else "subject"
    found = client.resources(rtype).search(**{element: str(patient_id)}).fetch()
    assert [_without_server_parts(r.serialize()) for r in found] == [sent]
    assert _without_server_parts(client.execute(f"{rtype}/{created['id']}/_history/1", method="get")) == sent
    kinds = [(k, o) for k, o, t in audit_rows(fhir_server_both.runtime, doctor.account_id) if t == rtype]
    assert ("phi:resource:create", "success") in kinds and ("phi:resource:read", "success") in kinds


def test_a_reference_carnet_cannot_resolve_is_refused_naming_the_element(fhir_server: Server) -> None:
    doctor, patient_id, _facility = _clinic(fhir_server)
    client = fhir_server.client_for(doctor)
    sent = resources(f"Patient/{patient_id}")["MedicationAdministration"]
    sent["request"] = {"reference": f"MedicationRequest/{uuid.uuid4()}"}
    with pytest.raises(OperationOutcome) as refused:
        client.resource("MedicationAdministration", **sent).save()
    assert "MedicationAdministration.request" in str(refused.value)
    by_reference = resources(f"Patient/{patient_id}")["MedicationStatement"]
    by_reference["medicationReference"] = {"reference": "Medication/m1"}
    del by_reference["medicationCodeableConcept"]
    with pytest.raises(OperationOutcome) as refused:
        client.resource("MedicationStatement", **by_reference).save()
    assert "MedicationStatement.medicationReference" in str(refused.value)
    assert client.resources("MedicationAdministration").search(subject=str(patient_id)).fetch() == []


def test_the_wrong_role_is_refused_and_audited(fhir_server: Server) -> None:
    doctor, patient_id, facility = _clinic(fhir_server)
    sent = resources(f"Patient/{patient_id}")["Procedure"]
    created = fhir_server.client_for(doctor).resource("Procedure", **sent)
    created.save()
    for role in (Role.FRONT_DESK, Role.BILLING, Role.SYSTEM_ADMINISTRATOR):
        other = make_account(fhir_server.runtime, roles=[role], facility_id=facility)
        client = fhir_server.client_for(other)
        with pytest.raises((ResourceNotFound, OperationOutcome, ForbiddenError)):
            client.execute(f"Procedure/{created['id']}", method="get")
        with pytest.raises((ResourceNotFound, OperationOutcome, ForbiddenError)):
            client.resource("Procedure", **sent).save()
        outcomes = [
            (k, o) for k, o, t in audit_rows(fhir_server.runtime, other.account_id) if t == "Procedure"
        ]
        assert ("phi:resource:read", "denied") in outcomes and ("phi:resource:create", "denied") in outcomes


def test_an_id_of_another_type_answers_as_missing(fhir_server: Server) -> None:
    doctor, patient_id, _facility = _clinic(fhir_server)
    client = fhir_server.client_for(doctor)
    created = client.resource("Immunization", **resources(f"Patient/{patient_id}")["Immunization"])
    created.save()
    with pytest.raises(ResourceNotFound):
        client.execute(f"Procedure/{created['id']}", method="get")


def test_a_transaction_bundle_records_them_with_their_patient(fhir_server: Server) -> None:
    doctor, patient_id, _facility = _clinic(fhir_server)
    client = fhir_server.client_for(doctor)
    sent = resources(f"Patient/{patient_id}")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": r, "request": {"method": "POST", "url": name}} for name, r in sent.items()],
    }
    answer = client.execute("", method="post", data=bundle)
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 4
    for name, resource in sent.items():
        assert [
            _without_server_parts(e["resource"])
            for e in answer["entry"]
            if e["resource"]["resourceType"] == name
        ] == [resource]
