"""Prescribing and allergies (run only by the gate kernel, carnet.phi.kernel): prescribe, stop,
record an allergy, read them."""

from __future__ import annotations

from sqlalchemy import select

from carnet.audit.interfaces import AuditKind
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.kernel.ids import new_id, parse_id
from carnet.phi.kernel import RT, GuardedTx, guarded
from carnet.phi.schemas import AllergyInput, AllergyView, PrescriptionInput, PrescriptionView
from carnet.phi.steps import patient_stay, read_one, redact, section, writing_practitioner, written
from carnet.prescriptions.models import Prescription
from carnet.prescriptions.rules import allergy_warnings
from carnet.prescriptions.views import allergy_data, prescription_data
from carnet.records.models import Allergy


@guarded(AuditKind.PHI_CREATE, RT.PRESCRIPTION, targeted=True)
def prescribe(tx: GuardedTx, /, *, data: PrescriptionInput) -> PrescriptionView:
    """Prescribe. An active allergy to the same substance stops it unless the prescriber
    confirms with `allergy_override_reason` (kept on the prescription)."""
    author = writing_practitioner(tx)
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.PRESCRIPTION, write=True)
    override = (data.allergy_override_reason or "").strip() or None
    warnings = allergy_warnings(
        tx, patient_id=patient.id, substance_code=data.substance_code, override=override
    )
    if data.valid_until is not None and data.valid_until <= tx.now:
        raise InvalidInput("valid_until must be in the future")
    prescription = Prescription(
        id=new_id(),
        facility_id=patient.facility_id,
        patient_id=patient.id,
        prescriber_id=author,
        encounter_id=patient_stay(tx, data.encounter_id, patient),
        medication_code=data.medication_code,
        medication_display=data.medication_display,
        substance_code=data.substance_code,
        dosage_text=data.dosage_text,
        status="active",
        authored_at=tx.now,
        valid_until=data.valid_until,
        allergy_override_reason=override if warnings else None,
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(prescription)
    tx.session.flush()
    snapshot = prescription_data(prescription) | {"warnings": warnings}
    return written(tx, patient, RT.PRESCRIPTION, PrescriptionView, snapshot, 1, "create")


@guarded(AuditKind.PHI_UPDATE, RT.PRESCRIPTION, targeted=True)
def stop(tx: GuardedTx, /, *, prescription_id: str, expected_version: int, reason: str) -> PrescriptionView:
    writing_practitioner(tx)
    prescription, patient = tx.record_to_change(Prescription, prescription_id)
    tx.authorize(patient, RT.PRESCRIPTION, write=True)
    if prescription.status != "active":
        raise Conflict("only an active prescription can be stopped")
    if not reason.strip() or len(reason) > 500:
        raise InvalidInput("stopping a prescription needs a reason (at most 500 characters)")
    tx.bump(Prescription, prescription, expected_version, status="stopped", stop_reason=reason.strip())
    data = prescription_data(prescription)
    return written(tx, patient, RT.PRESCRIPTION, PrescriptionView, data, prescription.version_id, "update")


@guarded(AuditKind.PHI_CREATE, RT.ALLERGY, targeted=True)
def record_allergy(tx: GuardedTx, /, *, data: AllergyInput) -> AllergyView:
    author = writing_practitioner(tx)
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.ALLERGY, write=True)
    allergy = Allergy(
        id=new_id(),
        facility_id=patient.facility_id,
        patient_id=patient.id,
        substance_code=data.substance_code,
        substance_display=data.substance_display,
        criticality=data.criticality,
        clinical_status="active",
        recorded_by=author,
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(allergy)
    tx.session.flush()
    return written(tx, patient, RT.ALLERGY, AllergyView, allergy_data(allergy), 1, "create")


@guarded(AuditKind.PHI_READ, RT.ALLERGY, targeted=True)
def list_allergies(tx: GuardedTx, /, *, patient_id: str) -> list[AllergyView]:
    pid = parse_id(patient_id)
    rows, fields = section(
        tx,
        patient_id,
        RT.ALLERGY,
        select(Allergy).where(Allergy.patient_id == pid).order_by(Allergy.created_at),
    )
    return [redact(AllergyView, allergy_data(r), fields) for r in rows]


@guarded(AuditKind.PHI_READ, RT.PRESCRIPTION, targeted=True)
def list_for_patient(tx: GuardedTx, /, *, patient_id: str) -> list[PrescriptionView]:
    pid = parse_id(patient_id)
    rows, fields = section(
        tx,
        patient_id,
        RT.PRESCRIPTION,
        select(Prescription).where(Prescription.patient_id == pid).order_by(Prescription.authored_at.desc()),
    )
    return [redact(PrescriptionView, prescription_data(r), fields) for r in rows]


@guarded(AuditKind.PHI_READ, RT.PRESCRIPTION, targeted=True)
def read(tx: GuardedTx, /, *, prescription_id: str) -> PrescriptionView:
    row, fields = read_one(tx, RT.PRESCRIPTION, prescription_id)
    return redact(PrescriptionView, prescription_data(row), fields)


@guarded(AuditKind.PHI_READ, RT.ALLERGY, targeted=True)
def read_allergy(tx: GuardedTx, /, *, allergy_id: str) -> AllergyView:
    row, fields = read_one(tx, RT.ALLERGY, allergy_id)
    return redact(AllergyView, allergy_data(row), fields)
