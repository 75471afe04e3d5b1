"""FHIR clinical resources, all through the gate: Appointment, DocumentReference (notes),
MedicationRequest, AllergyIntolerance, Encounter (stays: admit, transfer, discharge, or entered in
error, each a kept version), Observation (search, create, correct, vread, `_history`), Condition
(problems and diagnoses: create, amend, entered in error, vread, `_history`) and Coverage (search by
patient: read as the patient's chart section). Invoices are in carnet.fhir.billing.

Searches are by patient only: there is no browsing of a resource type across patients.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation

from carnet.fhir import mapping
from carnet.fhir.api import (
    expected_version,
    gate_for,
    history_response,
    paged,
    parse_version,
    reference_id,
    resource_response,
    validated,
    vread_response,
)
from carnet.fhir.metadata import SUPPORTED
from carnet.fhir.outcome import FHIR_JSON
from carnet.kernel.errors import InvalidInput
from carnet.phi.gate import AllergyWarning, Gate

router = APIRouter(prefix="/fhir", tags=["fhir"])
FhirBody = Body(..., media_type="application/fhir+json")
Mapper = Callable[[dict[str, Any]], dict[str, Any]]


def _register(resource_type: str, interactions: list[str], search: dict[str, str]) -> None:
    SUPPORTED[resource_type] = {"interactions": interactions, "search": search}


def patient_of(request: Request, allowed: set[str], subject: str = "patient") -> str:
    """The one patient a search is about; unknown parameters are refused (fail closed)."""
    params = dict(request.query_params)
    unknown = sorted(set(params) - allowed - {"_count", "_page", "_format", subject, "subject"})
    if unknown:
        raise InvalidInput("unsupported search parameters: " + ", ".join(unknown))
    value = params.get(subject) or params.get("subject")
    patient = reference_id(value, "Patient")
    if patient is None:
        raise InvalidInput(f"a search needs {subject}=Patient/<id>: there is no browsing across patients")
    return patient


def _read_view(gate: Gate, resource_type: str, resource_id: str) -> Any:
    readers: dict[str, Callable[[str], Any]] = {
        "Appointment": lambda i: gate.read_appointment(appointment_id=i),
        "DocumentReference": lambda i: gate.read_note(note_id=i),
        "MedicationRequest": lambda i: gate.read_prescription(prescription_id=i),
        "AllergyIntolerance": lambda i: gate.read_allergy(allergy_id=i),
        "Condition": lambda i: gate.read_condition(condition_id=i),
        "Encounter": lambda i: gate.read_encounter(encounter_id=i),
    }
    return readers[resource_type](resource_id)


def _read(request: Request, resource_type: str, resource_id: str, to_fhir: Mapper) -> Response:
    gate = gate_for(request, resource_type, "read")
    view = _read_view(gate, resource_type, resource_id)
    return resource_response(request, to_fhir(view.model_dump()))


def _version_of(gate: Gate, request: Request, resource_type: str, resource_id: str) -> int:
    """A delete's version: If-Match, or else the current one (read through the gate)."""
    version = parse_version(request.headers.get("if-match"))
    if version is not None:
        return version
    version_id: int | None = _read_view(gate, resource_type, resource_id).version_id
    return version_id or 1


def date_matches(value: dt.datetime | None, criteria: list[str]) -> bool:
    if value is None:
        return False
    day = value.date()
    for raw in criteria:
        prefix, text = (raw[:2], raw[2:]) if raw[:2] in ("eq", "ge", "le", "gt", "lt") else ("eq", raw)
        try:
            wanted = dt.date.fromisoformat(text[:10])
        except ValueError:
            raise InvalidInput("date must be YYYY-MM-DD with an optional eq/ge/le/gt/lt prefix") from None
        ok = {
            "eq": day == wanted,
            "ge": day >= wanted,
            "le": day <= wanted,
            "gt": day > wanted,
            "lt": day < wanted,
        }[prefix]
        if not ok:
            return False
    return True


# == Appointment ===============================================================================
APPOINTMENT = "Appointment"
_register(
    APPOINTMENT,
    ["read", "vread", "history-instance", "search-type", "create", "update", "delete"],
    {"patient": "reference", "practitioner": "reference", "date": "date", "status": "token"},
)


@router.get("/Appointment")
def search_appointments(request: Request) -> Response:
    gate = gate_for(request, APPOINTMENT, "search")
    patient = patient_of(request, {"practitioner", "date", "status"})
    views = gate.list_appointments(patient_id=patient)
    status = request.query_params.get("status")
    practitioner = reference_id(request.query_params.get("practitioner"), "Practitioner")
    dates = request.query_params.getlist("date")
    kept = [
        v
        for v in views
        if (status is None or v.status in status.split(","))
        and (practitioner is None or v.practitioner_id == practitioner)
        and (not dates or date_matches(v.start_at, dates))
    ]
    return paged(request, APPOINTMENT, [mapping.appointment_to_fhir(v.model_dump()) for v in kept])


@router.post("/Appointment")
def create_appointment(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    gate = gate_for(request, APPOINTMENT, "create")
    resource = validated(Appointment, body, APPOINTMENT)
    if resource.get("status") not in (None, "booked", "proposed", "pending"):
        raise InvalidInput("a new Appointment is booked")
    view = gate.book_appointment(data=mapping.appointment_input(resource))
    return resource_response(request, mapping.appointment_to_fhir(view.model_dump()), status=201)


@router.get("/Appointment/{appointment_id}")
def read_appointment(request: Request, appointment_id: str) -> Response:
    return _read(request, APPOINTMENT, appointment_id, mapping.appointment_to_fhir)


@router.put("/Appointment/{appointment_id}")
def update_appointment(request: Request, appointment_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """Move an appointment (new start/end) or cancel it (status cancelled + cancelationReason)."""
    gate = gate_for(request, APPOINTMENT, "update")
    resource = validated(Appointment, body, APPOINTMENT)
    if resource.get("id") != appointment_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    if resource.get("status") == "cancelled":
        reason = (resource.get("cancelationReason") or {}).get("text")
        if not reason:
            raise InvalidInput("a cancellation needs cancelationReason.text")
        view = gate.cancel_appointment(appointment_id=appointment_id, expected_version=version, reason=reason)
    else:
        start, end = mapping.appointment_times(resource)
        view = gate.amend_appointment(
            appointment_id=appointment_id, expected_version=version, start_at=start, end_at=end
        )
    return resource_response(request, mapping.appointment_to_fhir(view.model_dump()))


@router.delete("/Appointment/{appointment_id}")
def delete_appointment(request: Request, appointment_id: str) -> Response:
    """A delete cancels (the appointment and its history stay)."""
    gate = gate_for(request, APPOINTMENT, "delete")
    version = _version_of(gate, request, APPOINTMENT, appointment_id)
    view = gate.cancel_appointment(
        appointment_id=appointment_id, expected_version=version, reason="deleted through the FHIR API"
    )
    return resource_response(request, mapping.appointment_to_fhir(view.model_dump()))


@router.get("/Appointment/{appointment_id}/_history")
def appointment_history(request: Request, appointment_id: str) -> Response:
    return history_response(request, APPOINTMENT, appointment_id, mapping.appointment_to_fhir)


@router.get("/Appointment/{appointment_id}/_history/{version_id}")
def vread_appointment(request: Request, appointment_id: str, version_id: str) -> Response:
    return vread_response(request, APPOINTMENT, appointment_id, version_id, mapping.appointment_to_fhir)


# == DocumentReference (clinical notes) ========================================================
NOTE = "DocumentReference"
_register(
    NOTE, ["read", "vread", "history-instance", "search-type", "create", "update"], {"patient": "reference"}
)


@router.get("/DocumentReference")
def search_notes(request: Request) -> Response:
    gate = gate_for(request, NOTE, "search")
    patient = patient_of(request, set())
    return paged(
        request, NOTE, [mapping.note_to_fhir(v.model_dump()) for v in gate.list_notes(patient_id=patient)]
    )


@router.post("/DocumentReference")
def create_note(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    gate = gate_for(request, NOTE, "create")
    resource = validated(DocumentReference, body, NOTE)
    view = gate.write_note(**mapping.note_fields(resource))
    return resource_response(request, mapping.note_to_fhir(view.model_dump()), status=201)


@router.get("/DocumentReference/{note_id}")
def read_note(request: Request, note_id: str) -> Response:
    return _read(request, NOTE, note_id, mapping.note_to_fhir)


@router.put("/DocumentReference/{note_id}")
def amend_note(request: Request, note_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """An amendment: a new version of the text, with a reason (extension amendment-reason);
    every earlier version stays readable in _history."""
    gate = gate_for(request, NOTE, "update")
    resource = validated(DocumentReference, body, NOTE)
    if resource.get("id") != note_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    reason = mapping.extension_text(resource, mapping.AMENDMENT_REASON)
    if not reason:
        raise InvalidInput(f"an amendment needs a reason (extension {mapping.AMENDMENT_REASON})")
    view = gate.amend_note(
        note_id=note_id, expected_version=version, text=mapping.note_text(resource), reason=reason
    )
    return resource_response(request, mapping.note_to_fhir(view.model_dump()))


@router.get("/DocumentReference/{note_id}/_history")
def note_history(request: Request, note_id: str) -> Response:
    return history_response(request, NOTE, note_id, mapping.note_to_fhir)


@router.get("/DocumentReference/{note_id}/_history/{version_id}")
def vread_note(request: Request, note_id: str, version_id: str) -> Response:
    return vread_response(request, NOTE, note_id, version_id, mapping.note_to_fhir)


# == MedicationRequest =========================================================================
PRESCRIPTION = "MedicationRequest"
_register(
    PRESCRIPTION,
    ["read", "vread", "history-instance", "search-type", "create", "update"],
    {"patient": "reference", "status": "token"},
)


@router.get("/MedicationRequest")
def search_prescriptions(request: Request) -> Response:
    gate = gate_for(request, PRESCRIPTION, "search")
    patient = patient_of(request, {"status"})
    status = request.query_params.get("status")
    views = [
        v
        for v in gate.list_prescriptions(patient_id=patient)
        if status is None or v.status in status.split(",")
    ]
    return paged(request, PRESCRIPTION, [mapping.prescription_to_fhir(v.model_dump()) for v in views])


@router.post("/MedicationRequest")
def create_prescription(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Prescribe. An active allergy to the substance refuses the prescription (422, nothing
    written) unless it carries an allergy-override-reason extension; then it is created and
    the answer carries the alert as a contained DetectedIssue."""
    gate = gate_for(request, PRESCRIPTION, "create")
    resource = validated(MedicationRequest, body, PRESCRIPTION)
    if resource.get("intent") not in ("order", "original-order", None):
        raise InvalidInput("only orders are prescribed here (intent order)")
    try:
        view = gate.prescribe(data=mapping.prescription_input(resource))
    except AllergyWarning as exc:
        return Response(
            content=_allergy_outcome(str(exc)),
            status_code=422,
            media_type=FHIR_JSON,
        )
    return resource_response(request, mapping.prescription_to_fhir(view.model_dump()), status=201)


def _allergy_outcome(message: str) -> str:
    return json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "code": "business-rule", "diagnostics": message},
                {
                    "severity": "warning",
                    "code": "business-rule",
                    "details": {"text": "drug-allergy alert"},
                    "diagnostics": "to prescribe anyway, add extension "
                    + f"{mapping.ALLERGY_OVERRIDE} with the reason",
                },
            ],
        }
    )


@router.get("/MedicationRequest/{prescription_id}")
def read_prescription(request: Request, prescription_id: str) -> Response:
    return _read(request, PRESCRIPTION, prescription_id, mapping.prescription_to_fhir)


@router.put("/MedicationRequest/{prescription_id}")
def update_prescription(request: Request, prescription_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """The one change a prescription takes: stop it (status stopped, statusReason.text)."""
    gate = gate_for(request, PRESCRIPTION, "update")
    resource = validated(MedicationRequest, body, PRESCRIPTION)
    if resource.get("id") != prescription_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    reason = (resource.get("statusReason") or {}).get("text")
    if resource.get("status") != "stopped" or not reason:
        raise InvalidInput("a prescription is changed by stopping it: status stopped with statusReason.text")
    view = gate.stop_prescription(prescription_id=prescription_id, expected_version=version, reason=reason)
    return resource_response(request, mapping.prescription_to_fhir(view.model_dump()))


@router.get("/MedicationRequest/{prescription_id}/_history")
def prescription_history(request: Request, prescription_id: str) -> Response:
    return history_response(request, PRESCRIPTION, prescription_id, mapping.prescription_to_fhir)


@router.get("/MedicationRequest/{prescription_id}/_history/{version_id}")
def vread_prescription(request: Request, prescription_id: str, version_id: str) -> Response:
    return vread_response(request, PRESCRIPTION, prescription_id, version_id, mapping.prescription_to_fhir)


# == AllergyIntolerance ========================================================================
ALLERGY = "AllergyIntolerance"
_register(ALLERGY, ["read", "vread", "history-instance", "search-type", "create"], {"patient": "reference"})


@router.get("/AllergyIntolerance")
def search_allergies(request: Request) -> Response:
    gate = gate_for(request, ALLERGY, "search")
    patient = patient_of(request, set())
    return paged(
        request,
        ALLERGY,
        [mapping.allergy_to_fhir(v.model_dump()) for v in gate.list_allergies(patient_id=patient)],
    )


@router.post("/AllergyIntolerance")
def create_allergy(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    gate = gate_for(request, ALLERGY, "create")
    resource = validated(AllergyIntolerance, body, ALLERGY)
    view = gate.record_allergy(data=mapping.allergy_input(resource))
    return resource_response(request, mapping.allergy_to_fhir(view.model_dump()), status=201)


@router.get("/AllergyIntolerance/{allergy_id}")
def read_allergy(request: Request, allergy_id: str) -> Response:
    return _read(request, ALLERGY, allergy_id, mapping.allergy_to_fhir)


@router.get("/AllergyIntolerance/{allergy_id}/_history")
def allergy_history(request: Request, allergy_id: str) -> Response:
    return history_response(request, ALLERGY, allergy_id, mapping.allergy_to_fhir)


@router.get("/AllergyIntolerance/{allergy_id}/_history/{version_id}")
def vread_allergy(request: Request, allergy_id: str, version_id: str) -> Response:
    return vread_response(request, ALLERGY, allergy_id, version_id, mapping.allergy_to_fhir)


# == Encounter (stays) =========================================================================
ENCOUNTER = "Encounter"
_register(
    ENCOUNTER,
    ["read", "vread", "history-instance", "search-type", "create", "update", "delete"],
    {"patient": "reference", "status": "token"},
)


@router.get("/Encounter")
def search_encounters(request: Request) -> Response:
    gate = gate_for(request, ENCOUNTER, "search")
    patient = patient_of(request, {"status"})
    status = request.query_params.get("status")
    views = [
        v for v in gate.list_encounters(patient_id=patient) if status is None or v.status in status.split(",")
    ]
    return paged(request, ENCOUNTER, [mapping.encounter_to_fhir(v.model_dump()) for v in views])


@router.post("/Encounter")
def admit(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Admit a patient: a stay in progress (class IMP, AMB or EMER), at a location, with an
    attending physician (the admitting practitioner when none is named)."""
    gate = gate_for(request, ENCOUNTER, "create")
    resource = validated(Encounter, body, ENCOUNTER)
    view = gate.admit_patient(data=mapping.encounter_input(resource))
    return resource_response(request, mapping.encounter_to_fhir(view.model_dump()), status=201)


@router.get("/Encounter/{encounter_id}")
def read_encounter(request: Request, encounter_id: str) -> Response:
    gate = gate_for(request, ENCOUNTER, "read")
    view = gate.read_encounter(encounter_id=encounter_id)
    return resource_response(request, mapping.encounter_to_fhir(view.model_dump()))


@router.put("/Encounter/{encounter_id}")
def update_encounter(request: Request, encounter_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """A transfer (status in-progress, a new location or attending) or a discharge (status
    finished, period.end or now), with If-Match; every earlier version stays in _history."""
    gate = gate_for(request, ENCOUNTER, "update")
    resource = validated(Encounter, body, ENCOUNTER)
    if resource.get("id") != encounter_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    name, arguments = mapping.encounter_change(resource, encounter_id, version)
    view = getattr(gate, name)(**arguments)
    return resource_response(request, mapping.encounter_to_fhir(view.model_dump()))


@router.delete("/Encounter/{encounter_id}")
def delete_encounter(request: Request, encounter_id: str) -> Response:
    """A stay opened by mistake: marked entered-in-error, kept and readable; no longer in
    progress (the patient can be admitted again), so the care relationships it made end."""
    gate = gate_for(request, ENCOUNTER, "delete")
    version = _version_of(gate, request, ENCOUNTER, encounter_id)
    view = gate.mark_encounter_entered_in_error(encounter_id=encounter_id, expected_version=version)
    return resource_response(request, mapping.encounter_to_fhir(view.model_dump()))


@router.get("/Encounter/{encounter_id}/_history")
def encounter_history(request: Request, encounter_id: str) -> Response:
    return history_response(request, ENCOUNTER, encounter_id, mapping.encounter_to_fhir)


@router.get("/Encounter/{encounter_id}/_history/{version_id}")
def vread_encounter(request: Request, encounter_id: str, version_id: str) -> Response:
    return vread_response(request, ENCOUNTER, encounter_id, version_id, mapping.encounter_to_fhir)


# == Condition (problems and diagnoses, ICD-10) =================================================
CONDITION = "Condition"
_register(
    CONDITION,
    ["read", "vread", "history-instance", "search-type", "create", "update", "delete"],
    {"patient": "reference", "clinical-status": "token", "verification-status": "token", "code": "token"},
)


# == chart sections read by patient ============================================================
_register(
    "Observation",
    ["read", "vread", "history-instance", "search-type", "create", "update", "delete"],
    {"patient": "reference", "category": "token", "code": "token"},
)
_register("Coverage", ["search-type"], {"beneficiary": "reference", "patient": "reference"})


def _tokens(raw: str | None) -> list[str] | None:
    """A token search value (`a,b`, each `system|code` or `code`) as its codes."""
    return None if raw is None else [c.rpartition("|")[2] for c in raw.split(",")]


@router.get("/Condition")
def search_conditions(request: Request) -> Response:
    gate = gate_for(request, CONDITION, "search")
    patient = patient_of(request, {"clinical-status", "verification-status", "code"})
    params = request.query_params
    status = _tokens(params.get("clinical-status"))
    verification = _tokens(params.get("verification-status"))
    code = _tokens(params.get("code"))
    views = [
        v
        for v in gate.list_conditions(patient_id=patient)
        # A Condition entered in error has no clinical status (as rendered): it matches none.
        if (status is None or (v.clinical_status in status and v.verification_status != "entered-in-error"))
        and (verification is None or v.verification_status in verification)
        and (code is None or v.code in code)
    ]
    return paged(request, CONDITION, [mapping.condition_to_fhir(v.model_dump()) for v in views])


@router.post("/Condition")
def create_condition(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Record a problem or diagnosis: subject, an ICD-10 code.coding, clinicalStatus
    (default active), verificationStatus (default confirmed), onsetDateTime."""
    gate = gate_for(request, CONDITION, "create")
    resource = validated(Condition, body, CONDITION)
    view = gate.record_condition(data=mapping.condition_input(resource))
    return resource_response(request, mapping.condition_to_fhir(view.model_dump()), status=201)


@router.get("/Condition/{condition_id}")
def read_condition(request: Request, condition_id: str) -> Response:
    return _read(request, CONDITION, condition_id, mapping.condition_to_fhir)


@router.put("/Condition/{condition_id}")
def update_condition(request: Request, condition_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """Amend a problem (clinicalStatus, e.g. resolved; verificationStatus; onsetDateTime) or
    mark it entered-in-error, with If-Match; its ICD-10 code stays. Every version is kept."""
    gate = gate_for(request, CONDITION, "update")
    resource = validated(Condition, body, CONDITION)
    if resource.get("id") != condition_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    name, arguments = mapping.condition_change(resource, condition_id, version)
    view = getattr(gate, name)(**arguments)
    return resource_response(request, mapping.condition_to_fhir(view.model_dump()))


@router.delete("/Condition/{condition_id}")
def delete_condition(request: Request, condition_id: str) -> Response:
    """Mark a problem entered-in-error: kept, still readable with that verification status."""
    gate = gate_for(request, CONDITION, "delete")
    version = _version_of(gate, request, CONDITION, condition_id)
    view = gate.amend_condition(
        condition_id=condition_id, expected_version=version, verification_status="entered-in-error"
    )
    return resource_response(request, mapping.condition_to_fhir(view.model_dump()))


@router.get("/Condition/{condition_id}/_history")
def condition_history(request: Request, condition_id: str) -> Response:
    return history_response(request, CONDITION, condition_id, mapping.condition_to_fhir)


@router.get("/Condition/{condition_id}/_history/{version_id}")
def vread_condition(request: Request, condition_id: str, version_id: str) -> Response:
    return vread_response(request, CONDITION, condition_id, version_id, mapping.condition_to_fhir)


@router.get("/Observation")
def search_observations(request: Request) -> Response:
    gate = gate_for(request, "Observation", "search")
    patient = patient_of(request, {"category", "code"})
    category = request.query_params.get("category")
    code = request.query_params.get("code")
    views = [
        v
        for v in gate.list_observations(patient_id=patient)
        if (category is None or v.category in category.split(","))
        and (code is None or v.code in [c.rpartition("|")[2] for c in code.split(",")])
    ]
    return paged(request, "Observation", [mapping.observation_to_fhir(v.model_dump()) for v in views])


@router.get("/Observation/{observation_id}")
def read_observation(request: Request, observation_id: str) -> Response:
    gate = gate_for(request, "Observation", "read")
    view = gate.read_observation(observation_id=observation_id)
    return resource_response(request, mapping.observation_to_fhir(view.model_dump()))


@router.post("/Observation")
def create_observation(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Record a vital sign or a lab result (LOINC code, a valueQuantity or a valueString)."""
    gate = gate_for(request, "Observation", "create")
    resource = validated(Observation, body, "Observation")
    view = gate.record_observation(data=mapping.observation_input(resource))
    return resource_response(request, mapping.observation_to_fhir(view.model_dump()), status=201)


@router.put("/Observation/{observation_id}")
def update_observation(request: Request, observation_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """Correct a result (status amended or corrected, a new valueQuantity or valueString) or mark
    it entered-in-error, with If-Match; only status and value are taken, every earlier version
    stays in _history."""
    gate = gate_for(request, "Observation", "update")
    resource = validated(Observation, body, "Observation")
    if resource.get("id") != observation_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    _name, arguments = mapping.observation_change(resource, observation_id, version)
    view = gate.amend_observation(**arguments)
    return resource_response(request, mapping.observation_to_fhir(view.model_dump()))


@router.delete("/Observation/{observation_id}")
def delete_observation(request: Request, observation_id: str) -> Response:
    """Mark an Observation entered-in-error: kept, still readable with that status. If-Match,
    or else the current version (read through the gate, as its history)."""
    gate = gate_for(request, "Observation", "delete")
    version = parse_version(request.headers.get("if-match"))
    if version is None:
        version = gate.read_observation(observation_id=observation_id).version_id or 1
    view = gate.amend_observation(
        observation_id=observation_id, expected_version=version, status="entered-in-error"
    )
    return resource_response(request, mapping.observation_to_fhir(view.model_dump()))


@router.get("/Observation/{observation_id}/_history")
def observation_history(request: Request, observation_id: str) -> Response:
    return history_response(request, "Observation", observation_id, mapping.observation_to_fhir)


@router.get("/Observation/{observation_id}/_history/{version_id}")
def vread_observation(request: Request, observation_id: str, version_id: str) -> Response:
    return vread_response(request, "Observation", observation_id, version_id, mapping.observation_to_fhir)


@router.get("/Coverage")
def search_coverage(request: Request) -> Response:
    """Every coverage the patient had (the history of cards and insurers), newest first."""
    params = request.query_params
    subject = "beneficiary" if "beneficiary" in params else "patient"
    gate = gate_for(request, "Coverage", "search")
    patient = patient_of(request, {"beneficiary", "patient"}, subject=subject)
    section = gate.list_coverage(patient_id=patient)
    return paged(request, "Coverage", [mapping.coverage_to_fhir(c.model_dump()) for c in section.coverages])
