"""FHIR ServiceRequest (lab orders) through the gate (fhirpy): a physician orders, results name
the order in basedOn and complete it; a nurse reads but cannot order; the wrong role is refused
and audited, with nothing exposed."""

from __future__ import annotations

import pytest
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from carnet.access.roles import Role
from tests.factories import link_care, make_account, make_nurse, register_patient
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_stays_and_reports import LOINC, _clinic, _exposures, _report, _result

INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def _order(subject: str) -> dict[str, object]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "priority": "urgent",
        "code": {"coding": [{"system": LOINC, "code": "2823-3", "display": "Potassium"}]},
        "subject": {"reference": subject},
        "note": [{"text": "Sous diurétique de l'anse."}],
    }


def test_an_order_is_placed_answered_by_results_and_completed(fhir_server_both: Server) -> None:
    fhir_server = fhir_server_both
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    order = client.resource("ServiceRequest", **_order(f"Patient/{patient_id}"))
    order.save()
    assert order["status"] == "active" and order["intent"] == "order" and order["priority"] == "urgent"
    [placer] = order["identifier"]
    assert placer["type"]["coding"][0]["code"] == "PLAC" and placer["value"]
    assert order["requester"]["reference"] == f"Practitioner/{doctor.practitioner_id}"
    assert order["note"] == [{"text": "Sous diurétique de l'anse."}]

    result = _result(f"Patient/{patient_id}", code="2823-3", value=5.9)
    result["basedOn"] = [{"reference": f"ServiceRequest/{order['id']}"}]
    result["referenceRange"] = [{"low": {"value": 3.5}, "high": {"value": 5.0}}]
    result["interpretation"] = [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}
            ]
        }
    ]
    k = client.resource("Observation", **result)
    k.save()
    report = _report(f"Patient/{patient_id}", [f"Observation/{k['id']}"])
    report["basedOn"] = [{"reference": f"ServiceRequest/{order['id']}"}]
    saved = client.resource("DiagnosticReport", **report)
    saved.save()
    assert saved["basedOn"][0]["reference"] == f"ServiceRequest/{order['id']}"

    again = client.reference("ServiceRequest", order["id"]).to_resource()
    assert again["status"] == "completed" and again["meta"]["versionId"] == "2"
    found = client.resources("ServiceRequest").search(patient=patient_id, status="completed").fetch()
    assert [r["id"] for r in found] == [order["id"]]
    assert client.resources("ServiceRequest").search(patient=patient_id, status="active").fetch() == []

    # Another patient's result cannot answer this order (refused, nothing written).
    other = register_patient(runtime, facility, family="Autre")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=other.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    stray = _result(f"Patient/{other.id}")
    stray["basedOn"] = [{"reference": f"ServiceRequest/{order['id']}"}]
    with pytest.raises(OperationOutcome):
        client.resource("Observation", **stray).save()
    assert client.resources("Observation").search(patient=other.id).fetch() == []


def test_a_nurse_reads_orders_and_the_wrong_roles_are_refused_and_audited(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    order = fhir_server.client_for(doctor).resource("ServiceRequest", **_order(f"Patient/{patient_id}"))
    order.save()

    nurse = make_nurse(runtime, facility)
    assert nurse.practitioner_id is not None
    link_care(runtime, patient_id=patient_id, practitioner_id=nurse.practitioner_id, facility_id=facility)
    nursing = fhir_server.client_for(nurse)
    assert nursing.reference("ServiceRequest", order["id"]).to_resource()["status"] == "active"
    with pytest.raises((OperationOutcome, ResourceNotFound)):
        nursing.resource("ServiceRequest", **_order(f"Patient/{patient_id}")).save()
    assert ("phi:resource:create", "denied", "ServiceRequest") in audit_rows(runtime, nurse.account_id)

    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    stranger = make_account(runtime, roles=[Role.PHYSICIAN], facility_id=facility)
    for actor in (billing, stranger):
        other = fhir_server.client_for(actor)
        with pytest.raises(ResourceNotFound):
            other.reference("ServiceRequest", order["id"]).to_resource()
        with pytest.raises((OperationOutcome, ResourceNotFound)):
            other.resource("ServiceRequest", **_order(f"Patient/{patient_id}")).save()
        rows = audit_rows(runtime, actor.account_id)
        assert ("phi:resource:read", "denied", "ServiceRequest") in rows
        assert ("phi:resource:create", "denied", "ServiceRequest") in rows
        assert _exposures(runtime, actor, "ServiceRequest") == 0


def test_a_bad_order_is_refused_with_an_operation_outcome_and_changes_nothing(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    _facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    for change in ({"intent": "plan"}, {"code": {"text": "potassium"}}, {"priority": "whenever"}):
        with pytest.raises(OperationOutcome):
            client.resource("ServiceRequest", **(_order(f"Patient/{patient_id}") | change)).save()
    assert client.resources("ServiceRequest").search(patient=patient_id).fetch() == []


def test_the_capability_statement_lists_service_request() -> None:
    from carnet.fhir.metadata import SUPPORTED
    from carnet.fhir.routes import routers

    routers()
    assert {"read", "search-type", "create"} <= set(SUPPORTED["ServiceRequest"]["interactions"])
