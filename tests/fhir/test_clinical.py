"""FHIR clinical work through fhirpy: booking and amending an appointment, writing and
amending a note, prescribing against an allergy, coverage history, invoices; each with the
wrong role refused (answering like a missing record) and every access audited."""

from __future__ import annotations

import base64
import datetime as dt
import uuid

import pytest
from fhirpy.base.exceptions import (
    MultipleResourcesFound,
    OperationOutcome,
    ResourceNotFound,
)

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.billing.models import Invoice, InvoiceLine
from carnet.coverage.models import Coverage
from carnet.kernel import clock
from carnet.phi.system import system_access
from carnet.runtime import Runtime
from tests.factories import (
    link_care,
    make_account,
    make_facility,
    make_nurse,
    make_physician,
    register_patient,
)
from tests.fhir.conftest import Server, audit_rows

ATC = "http://www.whocc.no/atc"
CIP = "urn:oid:1.2.250.1.213.2.3.1"
EXT = "https://carnet.example.org/fhir/StructureDefinition/"


def _clinic(runtime: Runtime) -> tuple[uuid.UUID, Actor, str]:
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    patient = register_patient(runtime, facility, family="Moreau")
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    return facility, doctor, patient.id


def _slot(hours: int) -> tuple[str, str]:
    start = (clock.now() + dt.timedelta(days=2)).replace(minute=0, second=0, microsecond=0) + dt.timedelta(
        hours=hours
    )
    return start.isoformat(), (start + dt.timedelta(minutes=30)).isoformat()


def test_booking_and_amending_an_appointment(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    client = fhir_server.client_for(clerk)
    start, end = _slot(1)
    appointment = client.resource(
        "Appointment",
        status="booked",
        start=start,
        end=end,
        description="suivi tension",
        participant=[
            {"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"},
            {"actor": {"reference": f"Practitioner/{doctor.practitioner_id}"}, "status": "accepted"},
        ],
    )
    appointment.save()
    assert appointment["meta"]["versionId"] == "1" and appointment["status"] == "booked"

    # Double booking the practitioner is refused, and nothing is written.
    clash = client.resource(
        "Appointment", **{k: v for k, v in appointment.items() if k not in ("id", "meta")}
    )
    with pytest.raises(MultipleResourcesFound):  # 412 (fhirpy's name for it)
        clash.save()

    new_start, new_end = _slot(3)
    appointment["start"], appointment["end"] = new_start, new_end
    appointment.save()
    assert appointment["meta"]["versionId"] == "2"
    assert dt.datetime.fromisoformat(appointment["start"]) == dt.datetime.fromisoformat(new_start)

    listed = client.resources("Appointment").search(patient=f"Patient/{patient_id}", status="booked").fetch()
    assert [a.id for a in listed] == [appointment.id]
    history = client.execute(f"Appointment/{appointment.id}/_history", method="get")
    assert len(history["entry"]) == 2

    appointment["status"] = "cancelled"
    appointment["cancelationReason"] = {"text": "patient request"}
    appointment.save()
    assert appointment["status"] == "cancelled" and appointment["meta"]["versionId"] == "3"

    # Billing may not book, and a search of appointments is refused (like a missing patient).
    billing = fhir_server.client_for(make_account(runtime, roles=[Role.BILLING], facility_id=facility))
    with pytest.raises(ResourceNotFound):
        billing.resources("Appointment").search(patient=patient_id).fetch()
    kinds = audit_rows(runtime, clerk.account_id)
    assert kinds.count(("phi:resource:update", "success", "Appointment")) == 2
    assert ("phi:resource:create", "error", "Appointment") in kinds  # the double booking


def test_writing_and_amending_a_note_keeps_every_version(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    note = client.resource(
        "DocumentReference",
        status="current",
        type={"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        description="Consultation",
        subject={"reference": f"Patient/{patient_id}"},
        content=[
            {"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"Tension 13/8.").decode()}}
        ],
    )
    note.save()
    assert note["docStatus"] == "final"

    note["content"][0]["attachment"]["data"] = base64.b64encode("Tension 14/9, à revoir.".encode()).decode()
    # No reason: refused, nothing changes.
    with pytest.raises(OperationOutcome):
        note.save()
    note["extension"] = [{"url": EXT + "amendment-reason", "valueString": "mesure corrigée"}]
    note.save()
    assert note["docStatus"] == "amended" and note["meta"]["versionId"] == "2"

    read = client.reference("DocumentReference", note.id).to_resource()
    assert base64.b64decode(read["content"][0]["attachment"]["data"]).decode() == "Tension 14/9, à revoir."
    v1 = client.execute(f"DocumentReference/{note.id}/_history/1", method="get")
    assert base64.b64decode(v1["content"][0]["attachment"]["data"]) == b"Tension 13/8."

    # A front-desk clerk may neither read nor write notes.
    clerk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    clerk_client = fhir_server.client_for(clerk)
    with pytest.raises(ResourceNotFound):
        clerk_client.reference("DocumentReference", note.id).to_resource()
    with pytest.raises(ResourceNotFound):  # a write about a patient one may not touch: 404 too
        clerk_client.resource(
            "DocumentReference", **{k: v for k, v in note.items() if k not in ("id", "meta")}
        ).save()
    assert audit_rows(runtime, clerk.account_id) == [
        ("phi:resource:read", "denied", "DocumentReference"),
        ("phi:resource:create", "denied", "DocumentReference"),
    ]


def _prescription(patient_id: str, **extra: object) -> dict[str, object]:
    return {
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {
            "coding": [
                {"system": CIP, "code": "3400936158542", "display": "Amoxicilline 1 g comprimé"},
                {"system": ATC, "code": "J01C"},
            ]
        },
        "dosageInstruction": [{"text": "1 comprimé 3 fois par jour pendant 7 jours"}],
        **extra,
    }


def test_prescribing_against_an_allergy(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    allergy = client.resource(
        "AllergyIntolerance",
        patient={"reference": f"Patient/{patient_id}"},
        code={"coding": [{"system": ATC, "code": "J01C", "display": "Pénicillines"}]},
        criticality="high",
    )
    allergy.save()
    assert client.reference("AllergyIntolerance", allergy.id).to_resource()["criticality"] == "high"
    with pytest.raises(OperationOutcome) as refused:
        client.resource("MedicationRequest", **_prescription(patient_id)).save()
    assert "allergy" in str(refused.value) and "business-rule" in str(refused.value)
    assert client.resources("MedicationRequest").search(patient=patient_id).fetch() == []

    prescribed = client.resource(
        "MedicationRequest",
        **_prescription(
            patient_id,
            extension=[{"url": EXT + "allergy-override-reason", "valueString": "pas d'alternative"}],
        ),
    )
    prescribed.save()
    assert [r["reference"] for r in prescribed["detectedIssue"]] == ["#allergy"]
    assert prescribed["contained"][0]["resourceType"] == "DetectedIssue"
    active = client.resources("MedicationRequest").search(patient=patient_id, status="active").fetch()
    assert [p.id for p in active] == [prescribed.id]

    prescribed["status"] = "stopped"
    prescribed["statusReason"] = {"text": "effet indésirable"}
    prescribed.save()
    assert client.resources("MedicationRequest").search(patient=patient_id, status="active").fetch() == []

    # A nurse may read prescriptions of a ward patient but never prescribes.
    nurse = make_nurse(runtime, facility)
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(nurse).resource("MedicationRequest", **_prescription(patient_id)).save()
    kinds = audit_rows(runtime, doctor.account_id)
    assert ("phi:resource:create", "error", "MedicationRequest") in kinds  # the refused one
    assert ("phi:resource:create", "denied", "MedicationRequest") in audit_rows(runtime, nurse.account_id)


def _bill(runtime: Runtime, facility: uuid.UUID, patient_id: str) -> None:
    now = clock.now()
    with system_access(runtime, reason="test fixture: coverage and invoice") as door:
        for start, status in (
            (now - dt.timedelta(days=800), "cancelled"),
            (now - dt.timedelta(days=30), "active"),
        ):
            cid = uuid.uuid4()
            door.session.add(
                Coverage(
                    id=cid,
                    facility_id=facility,
                    patient_id=uuid.UUID(patient_id),
                    kind="AMO",
                    payer="CPAM Paris",
                    member_id_ct=runtime.keyring.encrypt(
                        "1700512345678",
                        facility_id=facility,
                        table="coverages",
                        column="member_id",
                        row_id=cid,
                    ),
                    status=status,
                    period_start=start,
                    period_end=None if status == "active" else start + dt.timedelta(days=700),
                    version_id=1,
                    created_at=now,
                    updated_at=now,
                )
            )
        invoice = Invoice(
            facility_id=facility,
            patient_id=uuid.UUID(patient_id),
            number=f"F-{uuid.uuid4().hex[:8]}",
            status="issued",
            issued_at=now,
            total_cents=2650,
            currency="EUR",
            version_id=1,
            created_at=now,
            updated_at=now,
        )
        door.session.add(invoice)
        door.session.flush()
        door.session.add(
            InvoiceLine(invoice_id=invoice.id, code="GS", description="Consultation", amount_cents=2650)
        )


def test_coverage_history_and_invoices(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    _bill(runtime, facility, patient_id)
    billing = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    client = fhir_server.client_for(billing)
    coverages = client.resources("Coverage").search(beneficiary=f"Patient/{patient_id}").fetch()
    assert [c["status"] for c in coverages] == ["active", "cancelled"]
    assert coverages[0]["subscriberId"] == "1700512345678"
    invoices = client.resources("Invoice").search(patient=patient_id).fetch()
    assert len(invoices) == 1 and invoices[0]["totalGross"]["value"] == 26.5

    # A physician does not see invoices; a nurse does not see coverage.
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(doctor).resources("Invoice").search(patient=patient_id).fetch()
    nurse = make_nurse(runtime, facility)
    with pytest.raises(ResourceNotFound):
        fhir_server.client_for(nurse).resources("Coverage").search(patient=patient_id).fetch()
    assert audit_rows(runtime, billing.account_id) == [
        ("phi:resource:read", "success", "Coverage"),
        ("phi:resource:read", "success", "Invoice"),
    ]
    assert audit_rows(runtime, doctor.account_id) == [("phi:resource:read", "denied", "Invoice")]


def test_everything_returns_only_what_the_role_opens(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    facility, doctor, patient_id = _clinic(runtime)
    _bill(runtime, facility, patient_id)
    bundle = fhir_server.client_for(doctor).execute(f"Patient/{patient_id}/$everything", method="get")
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert "Patient" in types and "Coverage" in types and "Invoice" not in types
    kinds = audit_rows(runtime, doctor.account_id)
    assert ("phi:resource:read", "success", "Patient") in kinds
    # The invoices, which a physician's role never opens, are not asked: no refusal to count.
    assert not [k for k in kinds if k[1] == "denied"], kinds
    # So a physician opening charts with $everything all morning is not taken for someone
    # probing what they may not see (10 denials in 15 minutes ask for a second factor).
    for _ in range(11):
        fhir_server.client_for(doctor).execute(f"Patient/{patient_id}/$everything", method="get")


def test_a_search_needs_a_patient(fhir_server: Server) -> None:
    runtime = fhir_server.runtime
    _facility, doctor, _patient_id = _clinic(runtime)
    client = fhir_server.client_for(doctor)
    for resource_type in ("Appointment", "MedicationRequest", "Observation", "Condition", "Encounter"):
        with pytest.raises(OperationOutcome):
            client.resources(resource_type).search(status="active").fetch()
