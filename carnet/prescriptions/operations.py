"""Prescribing and allergies (run only by the gate kernel, carnet.phi.kernel): prescribe, stop,
record an allergy, read them."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sqlalchemy import Select, select

from carnet.audit.interfaces import AuditKind
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.kernel.ids import new_id, parse_id
from carnet.phi.kernel import RT, GuardedTx, guarded
from carnet.phi.schemas import (
    AllergyInput,
    AllergyView,
    PrescriptionInput,
    PrescriptionView,
    ReceivedPrescriptionInput,
)
from carnet.phi.steps import (
    patient_stay,
    read_one,
    received_json,
    received_of,
    received_shown,
    redact,
    section,
    writing_practitioner,
    written,
)
from carnet.prescriptions.models import Prescription
from carnet.prescriptions.rules import allergy_warnings
from carnet.prescriptions.views import allergy_data, prescription_data
from carnet.records.models import Allergy


@guarded(AuditKind.PHI_CREATE, RT.PRESCRIPTION, targeted=True)
def prescribe(tx: GuardedTx, /, *, data: PrescriptionInput) -> PrescriptionView:
    """Prescribe. An allergy the drug runs into (its substance, its class, a documented
    cross-reaction) or an active prescription it repeats stops it (rules.py) unless the
    prescriber confirms with `allergy_override_reason`, kept on the prescription with the
    warnings it answered."""
    author = writing_practitioner(tx)
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.PRESCRIPTION, write=True)
    override = (data.allergy_override_reason or "").strip() or None
    warnings = allergy_warnings(
        tx,
        patient_id=patient.id,
        substance_code=data.substance_code,
        override=override,
        medication_display=data.medication_display,
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


# A prescription of another system still being taken: carnet's checks apply to it.
ONGOING = ("active", "on-hold", "draft")


@guarded(AuditKind.PHI_CREATE, RT.PRESCRIPTION, targeted=True)
def record_prescription(tx: GuardedTx, /, *, data: ReceivedPrescriptionInput) -> PrescriptionView:
    """A prescription written in another system (its prescriber named in it, any code system),
    kept whole as received. carnet's checks read its ATC coding when it has one: an ongoing one
    the patient's allergies or current drugs stop is refused as a prescription here is (unless
    the override extension gives the reason). A code in a system the checks cannot read is kept
    as sent and checks nothing: it is never relabelled as a code they know."""
    writing_practitioner(tx)
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.PRESCRIPTION, write=True)
    override = (data.allergy_override_reason or "").strip() or None
    warnings: list[str] = []
    if data.substance_code and data.status in ONGOING:
        warnings = allergy_warnings(
            tx,
            patient_id=patient.id,
            substance_code=data.substance_code,
            override=override,
            medication_display=data.medication_display,
        )
    authored = data.authored_at or tx.now
    if authored.tzinfo is None:
        raise InvalidInput("MedicationRequest.authoredOn: a time needs a time zone")
    encounter_id = patient_stay(tx, data.encounter_id, patient)
    prescription_id = new_id()
    rewritten = {"subject": f"Patient/{patient.id}"}
    if encounter_id is not None:
        rewritten["encounter"] = f"Encounter/{encounter_id}"
    received = received_json(tx, data.received, patient, rewritten)
    prescription = Prescription(
        id=prescription_id,
        facility_id=patient.facility_id,
        patient_id=patient.id,
        prescriber_id=None,  # the other system's, named in the resource (requester)
        encounter_id=encounter_id,
        medication_code=data.medication_code,
        medication_display=data.medication_display,
        substance_code=data.substance_code,
        dosage_text=data.dosage_text,
        status=data.status,
        authored_at=authored,
        valid_until=data.valid_until,
        allergy_override_reason=override if warnings else None,
        received_ct=tx.enc(received, patient.facility_id, "prescriptions", "received", prescription_id),
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(prescription)
    tx.session.flush()
    data_out = prescription_data(prescription, dict(json.loads(received))) | {"warnings": warnings}
    return written(tx, patient, RT.PRESCRIPTION, PrescriptionView, data_out, 1, "create")


STATUS_REASON_MAX = 500


def _status_reason(reason: str, what: str) -> str:
    reason = " ".join((reason or "").split())
    if not reason or len(reason) > STATUS_REASON_MAX:
        raise InvalidInput(f"{what} a prescription needs a reason (at most {STATUS_REASON_MAX} characters)")
    return reason


def _follow(tx: GuardedTx, prescription: Prescription, patient: Any) -> dict[str, Any] | None:
    """A prescription received from another system (kept whole) follows a change made in carnet:
    its status and status reason; the version before keeps it as it was received."""
    stored = received_of(tx, prescription)
    if stored is None:
        return None
    stored["status"] = prescription.status
    if prescription.stop_reason:
        stored["statusReason"] = {"text": prescription.stop_reason}
    else:
        stored.pop("statusReason", None)
    text = json.dumps(stored, ensure_ascii=False, sort_keys=True)
    prescription.received_ct = tx.enc(text, patient.facility_id, "prescriptions", "received", prescription.id)
    tx.session.flush()
    return stored


@guarded(AuditKind.PHI_UPDATE, RT.PRESCRIPTION, targeted=True)
def stop(tx: GuardedTx, /, *, prescription_id: str, expected_version: int, reason: str) -> PrescriptionView:
    writing_practitioner(tx)
    prescription, patient = tx.record_to_change(Prescription, prescription_id)
    tx.authorize(patient, RT.PRESCRIPTION, write=True)
    if prescription.status not in ("active", "on-hold"):
        raise Conflict("only an ongoing or held prescription can be stopped")
    reason = _status_reason(reason, "stopping")
    tx.bump(Prescription, prescription, expected_version, status="stopped", stop_reason=reason)
    data = prescription_data(prescription, _follow(tx, prescription, patient))
    return written(tx, patient, RT.PRESCRIPTION, PrescriptionView, data, prescription.version_id, "update")


@guarded(AuditKind.PHI_UPDATE, RT.PRESCRIPTION, targeted=True)
def hold(tx: GuardedTx, /, *, prescription_id: str, expected_version: int, reason: str) -> PrescriptionView:
    """Suspend an ongoing prescription (before surgery, while a result is awaited): FHIR
    on-hold, the reason kept as its status reason; it still counts as current for duplicates."""
    writing_practitioner(tx)
    prescription, patient = tx.record_to_change(Prescription, prescription_id)
    tx.authorize(patient, RT.PRESCRIPTION, write=True)
    if prescription.status != "active":
        raise Conflict("only an ongoing prescription can be put on hold")
    reason = _status_reason(reason, "holding")
    tx.bump(Prescription, prescription, expected_version, status="on-hold", stop_reason=reason)
    data = prescription_data(prescription, _follow(tx, prescription, patient))
    return written(tx, patient, RT.PRESCRIPTION, PrescriptionView, data, prescription.version_id, "update")


@guarded(AuditKind.PHI_UPDATE, RT.PRESCRIPTION, targeted=True)
def resume(tx: GuardedTx, /, *, prescription_id: str, expected_version: int) -> PrescriptionView:
    """Take a held prescription up again (the hold and its reason stay in the versions)."""
    writing_practitioner(tx)
    prescription, patient = tx.record_to_change(Prescription, prescription_id)
    tx.authorize(patient, RT.PRESCRIPTION, write=True)
    if prescription.status != "on-hold":
        raise Conflict("only a held prescription can be resumed")
    tx.bump(Prescription, prescription, expected_version, status="active", stop_reason=None)
    data = prescription_data(prescription, _follow(tx, prescription, patient))
    return written(tx, patient, RT.PRESCRIPTION, PrescriptionView, data, prescription.version_id, "update")


RENEWABLE = ("active", "on-hold", "completed")


@guarded(AuditKind.PHI_CREATE, RT.PRESCRIPTION, targeted=True)
def renew(
    tx: GuardedTx,
    /,
    *,
    prescription_id: str,
    expected_version: int,
    valid_until: dt.datetime | None = None,
    override_reason: str | None = None,
) -> PrescriptionView:
    """The same drug and dosage prescribed again (FHIR priorPrescription): a new prescription
    by the renewing physician, checked like any other (allergies recorded since, other drugs
    started since; not against the one it renews), which ends the one it renews (completed)."""
    author = writing_practitioner(tx)
    old, patient = tx.record_to_change(Prescription, prescription_id)
    tx.authorize(patient, RT.PRESCRIPTION, write=True)
    if old.status not in RENEWABLE:
        raise Conflict("only an ongoing, held or completed prescription can be renewed")
    if valid_until is not None and valid_until <= tx.now:
        raise InvalidInput("valid_until must be in the future")
    override = (override_reason or "").strip() or None
    if override is not None and len(override) > STATUS_REASON_MAX:
        raise InvalidInput(f"an override reason has at most {STATUS_REASON_MAX} characters")
    warnings = allergy_warnings(
        tx,
        patient_id=patient.id,
        substance_code=old.substance_code,
        override=override,
        medication_display=old.medication_display,
        replacing=old.id,
    )
    if valid_until is None and old.valid_until is not None:
        valid_until = tx.now + max(old.valid_until - old.authored_at, dt.timedelta(days=1))
    if old.status != "completed":
        tx.bump(Prescription, old, expected_version, status="completed")
        kept = _follow(tx, old, patient)
        tx.snapshot(RT.PRESCRIPTION, old.id, old.version_id, patient, "update", prescription_data(old, kept))
    elif old.version_id != expected_version:
        raise Conflict("the resource was changed by someone else: reload and try again")
    renewed = Prescription(
        id=new_id(),
        facility_id=patient.facility_id,
        patient_id=patient.id,
        prescriber_id=author,
        encounter_id=old.encounter_id,
        medication_code=old.medication_code,
        medication_display=old.medication_display,
        substance_code=old.substance_code,
        dosage_text=old.dosage_text,
        status="active",
        authored_at=tx.now,
        valid_until=valid_until,
        renewed_from_id=old.id,
        allergy_override_reason=override if warnings else None,
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(renewed)
    tx.session.flush()
    snapshot = prescription_data(renewed) | {"warnings": warnings, "renews": str(old.id)}
    return written(tx, patient, RT.PRESCRIPTION, PrescriptionView, snapshot, 1, "create")


@guarded(AuditKind.PHI_CREATE, RT.ALLERGY, targeted=True)
def record_allergy(tx: GuardedTx, /, *, data: AllergyInput) -> AllergyView:
    author = writing_practitioner(tx)
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.ALLERGY, write=True)
    allergy_id = new_id()
    received = None
    if data.received is not None:
        # Kept as sent: who recorded it in carnet is the version's author (Provenance).
        received = received_json(tx, data.received, patient, {"patient": f"Patient/{patient.id}"})
    reaction = (data.reaction or "").strip() or None
    allergy = Allergy(
        id=allergy_id,
        facility_id=patient.facility_id,
        patient_id=patient.id,
        substance_code=data.substance_code,
        substance_display=data.substance_display,
        criticality=data.criticality,
        clinical_status=data.clinical_status,
        reaction_ct=tx.enc(reaction, patient.facility_id, "allergies", "reaction", allergy_id),
        recorded_by=author,
        received_ct=tx.enc(received, patient.facility_id, "allergies", "received", allergy_id),
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(allergy)
    tx.session.flush()
    kept = None if received is None else dict(json.loads(received))
    return written(tx, patient, RT.ALLERGY, AllergyView, allergy_data(allergy, kept, reaction), 1, "create")


def allergies_section(pid: uuid.UUID | None) -> Select[Allergy]:
    """The statement of a patient's allergies section (the gate's fast read sends it ahead)."""
    return select(Allergy).where(Allergy.patient_id == pid).order_by(Allergy.created_at)


@guarded(AuditKind.PHI_READ, RT.ALLERGY, targeted=True)
def list_allergies(tx: GuardedTx, /, *, patient_id: str) -> list[AllergyView]:
    rows, fields = section(tx, patient_id, RT.ALLERGY, allergies_section(parse_id(patient_id)))
    return [
        redact(AllergyView, allergy_data(r, received_shown(tx, r, fields), _reaction(tx, r, fields)), fields)
        for r in rows
    ]


def prescriptions_section(pid: uuid.UUID | None) -> Select[Prescription]:
    """The statement of a patient's prescriptions section, newest first."""
    return (
        select(Prescription).where(Prescription.patient_id == pid).order_by(Prescription.authored_at.desc())
    )


@guarded(AuditKind.PHI_READ, RT.PRESCRIPTION, targeted=True)
def list_for_patient(tx: GuardedTx, /, *, patient_id: str) -> list[PrescriptionView]:
    rows, fields = section(tx, patient_id, RT.PRESCRIPTION, prescriptions_section(parse_id(patient_id)))
    return [
        redact(PrescriptionView, prescription_data(r, received_shown(tx, r, fields)), fields) for r in rows
    ]


@guarded(AuditKind.PHI_READ, RT.PRESCRIPTION, targeted=True)
def read(tx: GuardedTx, /, *, prescription_id: str) -> PrescriptionView:
    row, fields = read_one(tx, RT.PRESCRIPTION, prescription_id)
    return redact(PrescriptionView, prescription_data(row, received_shown(tx, row, fields)), fields)


@guarded(AuditKind.PHI_READ, RT.ALLERGY, targeted=True)
def read_allergy(tx: GuardedTx, /, *, allergy_id: str) -> AllergyView:
    row, fields = read_one(tx, RT.ALLERGY, allergy_id)
    return redact(
        AllergyView, allergy_data(row, received_shown(tx, row, fields), _reaction(tx, row, fields)), fields
    )


def _reaction(tx: GuardedTx, allergy: Allergy, fields: frozenset[str]) -> str | None:
    """The reaction, decrypted only for a reader who may see it."""
    if "reaction" not in fields or allergy.reaction_ct is None:
        return None
    return tx.dec(allergy.reaction_ct, "allergies", "reaction", allergy.id)
