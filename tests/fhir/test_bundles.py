"""POST /fhir with fhirpy: a transaction is all or nothing with urn:uuid references resolved,
one audited unit; a batch answers each entry; a wrong role is refused and audited."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fhirpy.base.exceptions import ForbiddenError, OperationOutcome

from carnet.access.roles import Role
from tests.factories import make_account, make_facility, make_physician
from tests.fhir.conftest import Server, audit_rows

INS = "urn:oid:1.2.250.1.213.1.4.8"
ATC = "http://www.whocc.no/atc"
CIP = "urn:oid:1.2.250.1.213.2.3.1"


def _bundle(
    kind: str, facility: uuid.UUID, practitioner: uuid.UUID, *, ins: str, allergic_prescription: bool
) -> dict[str, Any]:
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": INS, "value": ins}],
        "name": [{"family": "Bundle", "given": ["Anne"]}],
        "gender": "female",
        "birthDate": "1982-03-04",
        "managingOrganization": {"reference": f"Organization/{facility}"},
        "generalPractitioner": [{"reference": f"Practitioner/{practitioner}"}],
    }
    allergy = {
        "resourceType": "AllergyIntolerance",
        "patient": {"reference": patient_url},
        "code": {"coding": [{"system": ATC, "code": "J01C", "display": "Pénicillines"}]},
        "criticality": "high",
    }
    prescription = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": patient_url},
        "medicationCodeableConcept": {
            "coding": [
                {"system": CIP, "code": "3400936158542", "display": "Amoxicilline 1 g comprimé"},
                {"system": ATC, "code": "J01C" if allergic_prescription else "N02BE"},
            ]
        },
        "dosageInstruction": [{"text": "1 comprimé 3 fois par jour"}],
    }
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"fullUrl": patient_url, "resource": patient, "request": {"method": "POST", "url": "Patient"}},
            {"resource": allergy, "request": {"method": "POST", "url": "AllergyIntolerance"}},
            {"resource": prescription, "request": {"method": "POST", "url": "MedicationRequest"}},
        ],
    }


def test_transaction_is_all_or_nothing(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both  # SQLite and PostgreSQL: atomicity is the storage's job
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    client = fhir_server.client_for(doctor)

    # The last entry is refused (allergy): nothing of the bundle is written.
    failing = _bundle(
        "transaction", facility, doctor.practitioner_id, ins="2820375000011", allergic_prescription=True
    )
    with pytest.raises(OperationOutcome) as refused:
        client.execute("", method="post", data=failing)
    assert "entry 3" in str(refused.value)
    assert client.resources("Patient").search(identifier="2820375000011").fetch() == []

    ok = _bundle(
        "transaction", facility, doctor.practitioner_id, ins="2820375000011", allergic_prescription=False
    )
    answer = client.execute("", method="post", data=ok)
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 3
    patient_id = answer["entry"][0]["resource"]["id"]
    assert answer["entry"][1]["resource"]["patient"]["reference"] == f"Patient/{patient_id}"
    allergies = client.resources("AllergyIntolerance").search(patient=patient_id).fetch()
    assert len(allergies) == 1
    kinds = audit_rows(runtime, doctor.account_id)
    assert ("phi:resource:transaction", "error", "Patient") in kinds
    assert ("phi:resource:transaction", "success", "Patient") in kinds


def test_batch_answers_each_entry(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    client = fhir_server.client_for(doctor)
    first = _bundle(
        "batch", facility, doctor.practitioner_id, ins="2820375000022", allergic_prescription=False
    )
    answer = client.execute("", method="post", data={**first, "entry": first["entry"][:1]})
    assert answer["entry"][0]["response"]["status"] == "201 Created"
    # The same patient again (duplicate INS) and an entry whose urn:uuid means nothing in a batch.
    again = client.execute("", method="post", data=first)
    statuses = [e["response"]["status"] for e in again["entry"]]
    assert statuses[0] == "412" and statuses[1] in ("400", "404")
    assert again["entry"][0]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_wrong_role_is_refused_and_audited(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    bundle = _bundle(
        "transaction", facility, doctor.practitioner_id, ins="2820375000033", allergic_prescription=False
    )
    with pytest.raises(ForbiddenError):
        fhir_server.client_for(billing).execute("", method="post", data=bundle)
    assert audit_rows(runtime, billing.account_id) == [("phi:resource:transaction", "denied", "Patient")]
