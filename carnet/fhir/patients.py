"""FHIR Patient: read, vread, _history, search, create (If-None-Exist), update (If-Match),
delete (kept, marked inactive) and $everything, all through the gate."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.patient import Patient

from carnet.access.policy import SEARCH_MAX_COUNT, SEARCH_MAX_PAGE
from carnet.fhir import mapping, records
from carnet.fhir.api import (
    base_url,
    expected_version,
    fhir_response,
    gate_for,
    history_response,
    parse_version,
    resource_response,
    searchset,
    validated,
    vread_response,
)
from carnet.fhir.metadata import OPERATIONS, SUPPORTED
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.phi.schemas import PatientPage

router = APIRouter(prefix="/fhir/Patient", tags=["fhir"])
PATIENT = "Patient"
SEARCH_PARAMS = {
    "identifier": "token",
    "family": "string",
    "given": "string",
    "name": "string",
    "birthdate": "date",
    "gender": "token",
}
_CONTROL = {"_count", "_page", "_format"}

SUPPORTED[PATIENT] = {
    "interactions": ["read", "vread", "history-instance", "search-type", "create", "update", "delete"],
    "search": SEARCH_PARAMS,
    "conditionalCreate": True,
}

OPERATIONS["everything"] = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
# FHIR R5's Patient $merge, offered on R4: references (each at the version read) and a reason.
OPERATIONS["merge"] = "http://hl7.org/fhir/OperationDefinition/Patient-merge"
# carnet's reversal of a merge done in error (no standard operation exists), same parameters.
OPERATIONS["unmerge"] = "https://carnet.example.org/fhir/OperationDefinition/Patient-unmerge"
MERGE_PARAMETERS = {"source-patient", "target-patient", "reason"}
MERGE_UNSUPPORTED = {"source-patient-identifier", "target-patient-identifier", "result-patient", "preview"}

FhirBody = Body(..., media_type="application/fhir+json")


def _search(gate: Gate, params: dict[str, str], *, count: int, page: int) -> PatientPage:
    unknown = sorted(set(params) - set(SEARCH_PARAMS) - _CONTROL)
    if unknown:
        raise InvalidInput("unsupported search parameters: " + ", ".join(unknown))
    identifier = params.get("identifier")
    if identifier is not None and "|" in identifier:
        system, _, identifier = identifier.partition("|")
        if system and system != mapping.INS_SYSTEM:
            raise InvalidInput(f"identifier system must be {mapping.INS_SYSTEM}")
    birth = params.get("birthdate")
    birth_date = None
    if birth is not None:
        birth = birth.removeprefix("eq")
        try:
            birth_date = dt.date.fromisoformat(birth)
        except ValueError:
            raise InvalidInput("birthdate must be a full date (YYYY-MM-DD), optionally eq-prefixed") from None
    return gate.search_patients(
        identifier=identifier,
        family=params.get("family") or params.get("name"),
        given=params.get("given"),
        birth_date=birth_date,
        count=count,
        page=page,
    )


def _bounded(raw: str | None, name: str, maximum: int, default: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidInput(f"{name} must be between 1 and {maximum}")
    return int(raw)


@router.get("")
def search_patients(request: Request) -> Response:
    """Search needs an identifier, or family + birthdate, or a name among one's own patients."""
    gate = gate_for(request, PATIENT, "search")
    params = dict(request.query_params)
    count = _bounded(params.get("_count"), "_count", SEARCH_MAX_COUNT, SEARCH_MAX_COUNT)
    page = _bounded(params.get("_page"), "_page", SEARCH_MAX_PAGE, 1)
    found = _search(gate, params, count=count, page=page)
    gender = params.get("gender")
    items = [i for i in found.items if gender is None or i.gender == gender]
    return searchset(
        request,
        PATIENT,
        [mapping.patient_to_fhir(i.model_dump()) for i in items],
        page=page,
        has_more=found.has_more,
    )


@router.post("")
def create_patient(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    gate = gate_for(request, PATIENT, "create")
    resource = validated(Patient, body, PATIENT)
    # If-None-Exist (R4), or the search in the query string as some clients send it.
    condition = request.headers.get("if-none-exist") or request.url.query or None
    if condition is not None:
        # Conditional create: the search itself goes through the gate (audited, bounded).
        params = dict(parse_qsl(condition.removeprefix("?"), keep_blank_values=False))
        if not params or set(params) & _CONTROL:
            raise InvalidInput("If-None-Exist must hold search parameters such as identifier=...")
        found = _search(gate, params, count=2, page=1)
        if len(found.items) > 1:
            raise Conflict("If-None-Exist matches more than one patient")
        if found.items:
            return resource_response(request, mapping.patient_to_fhir(found.items[0].model_dump()))
    facility = str(gate.actor.facility_id) if gate.actor.facility_id else None
    view = gate.register_patient(data=mapping.patient_input(resource, facility))
    return resource_response(request, mapping.patient_to_fhir(view.model_dump()), status=201)


def _merge_reference(params: dict[str, dict[str, Any]], name: str) -> tuple[str, int]:
    """A `Patient/<id>/_history/<version>` reference: the record and the version the clerk read."""
    value = (params.get(name) or {}).get("valueReference") or {}
    reference = str(value.get("reference") or "")
    parts = reference.split("/")
    if len(parts) != 4 or parts[0] != PATIENT or parts[2] != "_history" or not parts[3].isdigit():
        raise InvalidInput(
            f"{name} must be a versioned reference Patient/<id>/_history/<version> (the version read)"
        )
    return parts[1], int(parts[3])


def _merge_parameters(body: dict[str, Any]) -> tuple[tuple[str, int], tuple[str, int], str]:
    resource = validated(Parameters, body, "Parameters")
    params: dict[str, dict[str, Any]] = {}
    for parameter in resource.get("parameter") or []:
        name = str(parameter.get("name"))
        if name in MERGE_UNSUPPORTED:
            raise InvalidInput(f"{name} is not supported: name both records by reference")
        if name not in MERGE_PARAMETERS:
            raise InvalidInput(
                f"unknown parameter {name[:40]!r}: expected source-patient, target-patient, reason"
            )
        if name in params:
            raise InvalidInput(f"{name} is given more than once")
        params[name] = parameter
    source = _merge_reference(params, "source-patient")
    target = _merge_reference(params, "target-patient")
    reason = (params.get("reason") or {}).get("valueString")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("reason (valueString) is required: why these two records are one person")
    return source, target, reason


@router.post("/$merge")
def merge_patients(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Merge a duplicate (source-patient) into the record kept (target-patient): the source
    becomes inactive, replaced-by the target, and its records move to the target. Returns the
    target Patient. Each reference names the version read; a changed record answers 412."""
    gate = gate_for(request, PATIENT, "update")
    (source_id, source_version), (target_id, target_version), reason = _merge_parameters(body)
    view = gate.merge_patients(
        source_id=source_id,
        target_id=target_id,
        source_version=source_version,
        target_version=target_version,
        reason=reason,
    )
    return resource_response(request, mapping.patient_to_fhir(view.model_dump()))


@router.post("/$unmerge")
def unmerge_patients(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Reverse a merge done in error: source-patient is the merged record, target-patient the
    record it was merged into (each at the version read). Returns the source, active again."""
    gate = gate_for(request, PATIENT, "update")
    (source_id, source_version), (target_id, target_version), reason = _merge_parameters(body)
    view = gate.unmerge_patients(
        source_id=source_id,
        target_id=target_id,
        source_version=source_version,
        target_version=target_version,
        reason=reason,
    )
    return resource_response(request, mapping.patient_to_fhir(view.model_dump()))


@router.get("/{patient_id}")
def read_patient(request: Request, patient_id: str) -> Response:
    gate = gate_for(request, PATIENT, "read")
    view = gate.read_patient(patient_id=patient_id)
    return resource_response(request, mapping.patient_to_fhir(view.model_dump()))


@router.put("/{patient_id}")
def update_patient(request: Request, patient_id: str, body: dict[str, Any] = FhirBody) -> Response:
    gate = gate_for(request, PATIENT, "update")
    resource = validated(Patient, body, PATIENT)
    if resource.get("id") != patient_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    changes = mapping.patient_changes(resource)
    view = gate.update_patient(patient_id=patient_id, expected_version=version, changes=changes)
    return resource_response(request, mapping.patient_to_fhir(view.model_dump()))


@router.delete("/{patient_id}")
def delete_patient(request: Request, patient_id: str) -> Response:
    """A delete keeps the record: it becomes inactive (a new, audited version)."""
    gate = gate_for(request, PATIENT, "delete")
    version = parse_version(request.headers.get("if-match"))
    if version is None:
        current = gate.read_patient(patient_id=patient_id).version_id
        version = current or 1
    view = gate.deactivate_patient(patient_id=patient_id, expected_version=version)
    return resource_response(request, mapping.patient_to_fhir(view.model_dump()))


@router.get("/{patient_id}/_history")
def patient_history(request: Request, patient_id: str) -> Response:
    return history_response(request, PATIENT, patient_id, mapping.patient_to_fhir)


@router.get("/{patient_id}/_history/{version_id}")
def vread_patient(request: Request, patient_id: str, version_id: str) -> Response:
    return vread_response(request, PATIENT, patient_id, version_id, mapping.patient_to_fhir)


@router.get("/{patient_id}/$everything")
def patient_everything(request: Request, patient_id: str) -> Response:
    """The patient's record as a Bundle: each section read (and audited) by the gate, and
    only the sections the actor's role opens (the others are left out, not an error)."""
    gate = gate_for(request, PATIENT, "read")
    resources = [mapping.patient_to_fhir(gate.read_patient(patient_id=patient_id).model_dump())]
    sections: list[tuple[str, Any, Any]] = [
        ("Encounter", gate.list_encounters, mapping.encounter_to_fhir),
        ("Appointment", gate.list_appointments, mapping.appointment_to_fhir),
        ("AllergyIntolerance", gate.list_allergies, mapping.allergy_to_fhir),
        ("Condition", gate.list_conditions, mapping.condition_to_fhir),
        ("Observation", gate.list_observations, mapping.observation_to_fhir),
        ("MedicationRequest", gate.list_prescriptions, mapping.prescription_to_fhir),
        ("DocumentReference", gate.list_notes, mapping.note_to_fhir),
        ("Invoice", gate.list_invoices, mapping.invoice_to_fhir),
        *records.everything_sections(gate),
    ]
    for _name, read, to_fhir in sections:
        try:
            resources.extend(to_fhir(v.model_dump()) for v in read(patient_id=patient_id))
        except NotFound:
            continue  # a section this role may not read answers like a missing one
    with contextlib.suppress(NotFound):
        resources.extend(
            mapping.coverage_to_fhir(c.model_dump())
            for c in gate.list_coverage(patient_id=patient_id).coverages
        )
    base = base_url(request)
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(resources),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": [
                {
                    "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in resources
            ],
        }
    )
