"""POST /fhir with fhirpy: a transaction is all or nothing with urn:uuid references resolved,
one audited unit; a batch answers each entry; a wrong role is refused and audited."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

import pytest
from fhirpy.base.exceptions import ForbiddenError, MultipleResourcesFound, OperationOutcome

from carnet.access.roles import Role
from tests.factories import link_care, make_account, make_facility, make_physician, register_patient
from tests.fhir.conftest import Server, audit_rows

INS = "urn:oid:1.2.250.1.213.1.4.8"
ATC = "http://www.whocc.no/atc"
CIP = "urn:oid:1.2.250.1.213.2.3.1"
EXT = "https://carnet.example.org/fhir/StructureDefinition/"


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


def _chart(fhir_server: Server) -> tuple[Any, Any, str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A physician's client, a patient in their care, two appointments and a note (fhirpy)."""
    runtime = fhir_server.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Lambert")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    client = fhir_server.client_for(doctor)
    appointments = []
    for hours in (1, 3):
        start = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).replace(
            minute=0, second=0, microsecond=0
        ) + dt.timedelta(hours=hours)
        appointment = client.resource(
            "Appointment",
            status="booked",
            start=start.isoformat(),
            end=(start + dt.timedelta(minutes=20)).isoformat(),
            participant=[
                {"actor": {"reference": f"Patient/{patient.id}"}, "status": "accepted"},
                {"actor": {"reference": f"Practitioner/{doctor.practitioner_id}"}, "status": "accepted"},
            ],
        )
        appointment.save()
        appointments.append(appointment.serialize())
    note = client.resource(
        "DocumentReference",
        status="current",
        type={"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        description="Consultation",
        subject={"reference": f"Patient/{patient.id}"},
        content=[{"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"Avant.").decode()}}],
    )
    note.save()
    return doctor, client, patient.id, appointments[0], appointments[1], note.serialize()


def _moved(appointment: dict[str, Any], hours: int) -> dict[str, Any]:
    start = dt.datetime.fromisoformat(appointment["start"]) + dt.timedelta(hours=hours)
    end = dt.datetime.fromisoformat(appointment["end"]) + dt.timedelta(hours=hours)
    return dict(appointment, start=start.isoformat(), end=end.isoformat())


def _amended(note: dict[str, Any], text: bytes) -> dict[str, Any]:
    content = [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(text).decode()}}]
    reason = [{"url": EXT + "amendment-reason", "valueString": "correction"}]
    return dict(note, content=content, extension=reason)


def _put(resource: dict[str, Any], version: str) -> dict[str, Any]:
    url = f"{resource['resourceType']}/{resource['id']}"
    return {"resource": resource, "request": {"method": "PUT", "url": url, "ifMatch": f'W/"{version}"'}}


def test_transaction_updates_and_deletes_all_or_nothing(fhir_server_both: Server) -> None:
    runtime = fhir_server_both.runtime
    doctor, client, patient_id, first, second, note = _chart(fhir_server_both)

    # A stale If-Match on the last entry: the move and the amendment before it roll back.
    stale = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _put(_moved(first, 5), "1"),
            _put(_amended(note, b"Jamais."), "1"),
            {"request": {"method": "DELETE", "url": f"Appointment/{second['id']}", "ifMatch": 'W/"4"'}},
        ],
    }
    with pytest.raises(MultipleResourcesFound):  # 412
        client.execute("", method="post", data=stale)
    assert client.reference("Appointment", first["id"]).to_resource()["meta"]["versionId"] == "1"
    assert client.reference("DocumentReference", note["id"]).to_resource()["meta"]["versionId"] == "1"

    # A delete without the version it expects is refused in a transaction (nothing to overwrite blind).
    blind = {**stale, "entry": [{"request": {"method": "DELETE", "url": f"Appointment/{second['id']}"}}]}
    with pytest.raises(OperationOutcome):
        client.execute("", method="post", data=blind)
    # Reads belong in a batch.
    with pytest.raises(OperationOutcome):
        client.execute(
            "", method="post", data={**stale, "entry": [{"request": {"method": "GET", "url": "Patient/x"}}]}
        )

    ok = {
        **stale,
        "entry": [
            _put(_moved(first, 5), "1"),
            _put(_amended(note, "Après, corrigé.".encode()), "1"),
            {"request": {"method": "DELETE", "url": f"Appointment/{second['id']}", "ifMatch": 'W/"1"'}},
        ],
    }
    answer = client.execute("", method="post", data=ok)
    assert [e["response"]["status"] for e in answer["entry"]] == ["200 OK"] * 3
    assert [e["response"]["etag"] for e in answer["entry"]] == ['W/"2"'] * 3
    cancelled = client.reference("Appointment", second["id"]).to_resource()
    assert cancelled["status"] == "cancelled" and cancelled["cancelationReason"]["text"]
    amended = client.reference("DocumentReference", note["id"]).to_resource()
    assert base64.b64decode(amended["content"][0]["attachment"]["data"]).decode() == "Après, corrigé."
    kinds = audit_rows(runtime, doctor.account_id)
    assert kinds.count(("phi:resource:transaction", "success", "Patient")) == 1
    assert kinds.count(("phi:resource:transaction", "error", "Patient")) == 2

    # Front desk may move an appointment but not amend a note: the whole transaction is refused.
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=_facility_of(client, patient_id))
    refused = {**stale, "entry": [_put(_moved(first, 1), "2"), _put(_amended(note, b"Non."), "2")]}
    with pytest.raises(ForbiddenError):  # a transaction's refusal names no record: 403
        fhir_server_both.client_for(clerk).execute("", method="post", data=refused)
    assert client.reference("Appointment", first["id"]).to_resource()["meta"]["versionId"] == "2"
    assert audit_rows(runtime, clerk.account_id) == [("phi:resource:transaction", "denied", "Patient")]


def _facility_of(client: Any, patient_id: str) -> uuid.UUID:
    patient = client.reference("Patient", patient_id).to_resource()
    return uuid.UUID(patient["managingOrganization"]["reference"].split("/")[1])


def test_batch_reads_updates_and_deletes_each_on_its_own(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    doctor, client, patient_id, first, second, _note = _chart(fhir_server)
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
            {"request": {"method": "GET", "url": f"Appointment?patient=Patient/{patient_id}&status=booked"}},
            {"request": {"method": "GET", "url": f"Patient/{uuid.uuid4()}"}},
            _put(_moved(first, 6), "9"),  # stale: 412, the others go on
            {"request": {"method": "DELETE", "url": f"Appointment/{second['id']}"}},  # reads the version
            {"request": {"method": "GET", "url": "Patient/$export?_exportId=x"}},
        ],
    }
    answer = client.execute("", method="post", data=batch)
    entries = answer["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["200", "200", "404", "412", "200", "400"]
    assert entries[0]["resource"]["id"] == patient_id and entries[0]["response"]["etag"] == 'W/"1"'
    assert entries[1]["resource"]["type"] == "searchset"
    assert {e["resource"]["id"] for e in entries[1]["resource"]["entry"]} == {first["id"], second["id"]}
    assert entries[4]["resource"]["status"] == "cancelled"
    assert client.reference("Appointment", first["id"]).to_resource()["meta"]["versionId"] == "1"
    kinds = audit_rows(runtime, doctor.account_id)
    # Each GET is the read (or search) it is, audited as such; the missing one as an error.
    assert ("phi:resource:read", "error", "Patient") in kinds
    assert kinds[-7:-1] == [  # (the last: the check of the first appointment above)
        ("phi:resource:read", "success", "Patient"),
        ("phi:resource:read", "success", "Appointment"),
        ("phi:resource:read", "error", "Patient"),
        ("phi:resource:update", "error", "Appointment"),
        ("phi:resource:read", "success", "Appointment"),
        ("phi:resource:update", "success", "Appointment"),
    ]

    # Billing's batch reads are refused one by one (like missing records), each audited.
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=_facility_of(client, patient_id))
    refused = fhir_server.client_for(billing).execute(
        "",
        method="post",
        data={**batch, "entry": [{"request": {"method": "GET", "url": f"Appointment/{first['id']}"}}]},
    )
    assert refused["entry"][0]["response"]["status"] == "404"
    assert audit_rows(runtime, billing.account_id) == [("phi:resource:read", "denied", "Appointment")]
