"""The nurse's administration record (run only by the gate kernel, carnet.phi.kernel): a dose of
an active prescription given, or not given and why, recorded from the chart as a FHIR
MedicationAdministration that carnet builds (kept whole like one received, in `interventions`),
its `request` naming the prescription."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from carnet.audit.interfaces import AuditKind
from carnet.interventions.operations import keep_intervention
from carnet.interventions.schemas import NOT_GIVEN_DISPLAY, NOT_GIVEN_REASONS, InterventionView
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.org.models import Practitioner
from carnet.phi.kernel import RT, GuardedTx, guarded
from carnet.phi.steps import writing_practitioner
from carnet.prescriptions.catalogue import ATC_SYSTEM
from carnet.prescriptions.models import Prescription
from carnet.scheduling.models import Encounter

NOT_GIVEN_SYSTEM = "https://carnet.example/fhir/CodeSystem/medication-not-given-reason"
DOSE_MAX = 100  # the messages below say these numbers
NOTE_MAX = 500


def check_administration(
    *, status: str, expired: bool, given: bool, reason: str | None, dose: str | None, note: str | None
) -> tuple[str | None, str | None, str | None]:
    """The rule, pure: may a dose of a prescription in `status` be recorded so? Returns the
    reason, dose and note as kept (trimmed, None when empty); raises InvalidInput otherwise."""
    # A prescription that is not active is not given; each status says why in its own words.
    if status == "on-hold":
        raise InvalidInput("this prescription is on hold: it is not given until it is resumed")
    if status == "stopped":
        raise InvalidInput("this prescription is stopped: it is not given")
    if status == "completed":
        raise InvalidInput("this prescription is completed: it is not given")
    if status != "active":
        raise InvalidInput("only an active prescription is given")
    if expired:
        raise InvalidInput("this prescription has expired: it is renewed before it is given")
    reason = (reason or "").strip() or None
    dose = " ".join((dose or "").split()) or None
    note = (note or "").strip() or None
    if given and reason is not None:
        raise InvalidInput("a reason is given only for a dose not given")
    if not given and reason not in NOT_GIVEN_REASONS:
        raise InvalidInput("a dose not given needs a reason from the list")
    if dose is not None and len(dose) > DOSE_MAX:
        raise InvalidInput("the dose given has at most 100 characters")
    if note is not None and len(note) > NOTE_MAX:
        raise InvalidInput("a note has at most 500 characters")
    return reason, dose, note


def administration_resource(
    prescription: Prescription,
    *,
    given: bool,
    reason: str | None,
    dose: str | None,
    note: str | None,
    performer: Practitioner,
    stay: Any,
    when: str,
) -> dict[str, Any]:
    """The FHIR R4 MedicationAdministration of one dose, as carnet keeps it."""
    resource: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "status": "completed" if given else "not-done",
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": ATC_SYSTEM,
                    "code": prescription.substance_code,
                    "display": prescription.medication_display,
                }
            ],
            "text": prescription.medication_display,
        },
        "subject": {"reference": f"Patient/{prescription.patient_id}"},
        "effectiveDateTime": when,
        "performer": [
            {
                "actor": {
                    "reference": f"Practitioner/{performer.id}",
                    "display": f"{performer.given} {performer.family}",
                }
            }
        ],
        "request": {"reference": f"MedicationRequest/{prescription.id}"},
    }
    if reason is not None:
        display = NOT_GIVEN_DISPLAY[reason]
        coding = {"system": NOT_GIVEN_SYSTEM, "code": reason, "display": display}
        resource["statusReason"] = [{"coding": [coding], "text": display}]
    if stay is not None:
        resource["context"] = {"reference": f"Encounter/{stay}"}
    if dose is not None:
        resource["dosage"] = {"text": dose}
    if note is not None:
        resource["note"] = [{"text": note}]
    return resource


@guarded(AuditKind.PHI_CREATE, RT.MEDICATION_ADMINISTRATION, targeted=True)
def administer(
    tx: GuardedTx,
    /,
    *,
    prescription_id: str,
    given: bool,
    reason: str | None = None,
    dose: str | None = None,
    note: str | None = None,
) -> InterventionView:
    """A dose of an active prescription given (or not, and why) by the nurse or physician
    writing, in the patient's care (the policy's MedicationAdministration write); the stay in
    progress, if any, is its context."""
    performer_id = writing_practitioner(tx)
    # Locked as a stop or hold locks it: a dose is never recorded against a prescription
    # stopped meanwhile.
    prescription, patient = tx.record_to_change(Prescription, prescription_id)
    tx.authorize(patient, RT.PRESCRIPTION)
    tx.authorize(patient, RT.MEDICATION_ADMINISTRATION, write=True)
    if not patient.active:
        raise Conflict("this patient record is inactive: record it on the active record")
    expired = prescription.valid_until is not None and prescription.valid_until <= tx.now
    reason, dose, note = check_administration(
        status=prescription.status, expired=expired, given=given, reason=reason, dose=dose, note=note
    )
    stay = tx.session.scalar(
        select(Encounter.id)
        .where(Encounter.patient_id == patient.id, Encounter.status == "in-progress")
        .order_by(Encounter.start_at.desc())
        .limit(1)
    )
    performer = tx.session.get(Practitioner, performer_id)
    if performer is None:
        raise InvalidInput("unknown practitioner")
    resource = administration_resource(
        prescription,
        given=given,
        reason=reason,
        dose=dose,
        note=note,
        performer=performer,
        stay=stay,
        when=tx.now.isoformat(),
    )
    return keep_intervention(
        tx,
        RT.MEDICATION_ADMINISTRATION,
        patient,
        resource,
        element="subject",
        code_system=ATC_SYSTEM,
        code=prescription.substance_code,
        display=prescription.medication_display,
        status=resource["status"],
        occurred_at=tx.now,
        encounter_id=stay,
        recorded_by=performer_id,
    )
