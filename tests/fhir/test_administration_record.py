"""A dose recorded from the chart (the nurse's administration record) reads over FHIR as the
MedicationAdministration carnet built: its request names the prescription, and it is found by
subject."""

from __future__ import annotations

from carnet.phi.gate import Gate
from carnet.phi.schemas import PrescriptionInput
from tests.factories import link_care, make_facility, make_nurse, make_physician, register_patient
from tests.fhir.conftest import Server, audit_rows


def test_a_recorded_dose_reads_back_with_its_prescription(fhir_server_both: Server) -> None:
    runtime = fhir_server_both.runtime
    facility = make_facility(runtime)
    doctor = make_physician(runtime, facility)
    nurse = make_nurse(runtime, facility)
    patient = register_patient(runtime, facility, family="Dose")
    for who in (doctor, nurse):
        link_care(runtime, patient_id=patient.id, practitioner_id=who.practitioner_id, facility_id=facility)
    rx = Gate(runtime, doctor).prescribe(
        data=PrescriptionInput(
            patient_id=patient.id,
            medication_code="N02BE01",
            medication_display="Paracétamol 1 g",
            substance_code="N02BE01",
            dosage_text="1 g x 3 / jour",
        )
    )
    dose = Gate(runtime, nurse).administer_prescription(
        prescription_id=rx.id or "", given=False, reason="refused", note="reproposer à midi"
    )
    client = fhir_server_both.client_for(nurse)
    read = client.execute(f"MedicationAdministration/{dose.id}", method="get")
    assert read["request"] == {"reference": f"MedicationRequest/{rx.id}"}
    assert read["status"] == "not-done" and read["statusReason"][0]["coding"][0]["code"] == "refused"
    assert read["subject"] == {"reference": f"Patient/{patient.id}"}
    assert read["performer"][0]["actor"]["reference"] == f"Practitioner/{nurse.practitioner_id}"
    assert read["note"] == [{"text": "reproposer à midi"}]
    # The prescription it names reads too (the reference resolves).
    assert client.execute(f"MedicationRequest/{rx.id}", method="get")["id"] == rx.id
    found = client.resources("MedicationAdministration").search(subject=str(patient.id)).fetch()
    assert [r["id"] for r in found] == [dose.id]
    rows = audit_rows(runtime, nurse.account_id)
    assert ("phi:resource:read", "success", "MedicationAdministration") in rows
    # $everything gives it with the rest of the record, the prescription it answers beside it.
    bundle = client.execute(f"Patient/{patient.id}/$everything", method="get")
    entries = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]}
    assert ("MedicationAdministration", dose.id) in entries
    assert ("MedicationRequest", rx.id) in entries
