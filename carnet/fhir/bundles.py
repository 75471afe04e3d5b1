"""POST /fhir: transaction Bundles (all or nothing, one gate transaction, `urn:uuid:`
references between entries resolved) and batch Bundles (each entry on its own, each
answered with its status or its OperationOutcome)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.patient import Patient

from carnet.fhir import mapping
from carnet.fhir.api import base_url, etag, fhir_response, gate_for, type_name, validated
from carnet.fhir.metadata import SYSTEM_INTERACTIONS
from carnet.fhir.outcome import operation_outcome, status_for
from carnet.kernel.errors import CarnetError, InvalidInput
from carnet.phi.gate import TRANSACTION_LIMIT, AllergyWarning, Gate

router = APIRouter(prefix="/fhir", tags=["fhir"])
SYSTEM_INTERACTIONS.extend(c for c in ("transaction", "batch") if c not in SYSTEM_INTERACTIONS)
FhirBody = Body(..., media_type="application/fhir+json")


@dataclass(frozen=True)
class Kind:
    model: Any
    operation: str
    to_fhir: Callable[[dict[str, Any]], dict[str, Any]]
    arguments: Callable[[dict[str, Any], Gate], dict[str, Any]]


def _note_arguments(r: dict[str, Any], gate: Gate) -> dict[str, Any]:
    return mapping.note_fields(r)


def _patient_arguments(r: dict[str, Any], gate: Gate) -> dict[str, Any]:
    facility = str(gate.actor.facility_id) if gate.actor.facility_id else None
    return {"data": mapping.patient_input(r, facility)}


# What a Bundle entry may create (POST), by resource type.
CREATES: dict[str, Kind] = {
    "Patient": Kind(Patient, "register_patient", mapping.patient_to_fhir, _patient_arguments),
    "Appointment": Kind(
        Appointment,
        "book_appointment",
        mapping.appointment_to_fhir,
        lambda r, g: {"data": mapping.appointment_input(r)},
    ),
    "DocumentReference": Kind(DocumentReference, "write_note", mapping.note_to_fhir, _note_arguments),
    "MedicationRequest": Kind(
        MedicationRequest,
        "prescribe",
        mapping.prescription_to_fhir,
        lambda r, g: {"data": mapping.prescription_input(r)},
    ),
    "AllergyIntolerance": Kind(
        AllergyIntolerance,
        "record_allergy",
        mapping.allergy_to_fhir,
        lambda r, g: {"data": mapping.allergy_input(r)},
    ),
}


@dataclass
class Entry:
    number: int
    full_url: str | None
    resource_type: str
    resource: dict[str, Any]
    kind: Kind


def _entries(bundle: dict[str, Any]) -> list[Entry]:
    entries = []
    for number, raw in enumerate(bundle.get("entry") or [], start=1):
        request = raw.get("request") or {}
        resource = raw.get("resource")
        if request.get("method") != "POST" or not isinstance(resource, dict):
            raise InvalidInput(f"entry {number}: only POST (create) entries with a resource are accepted")
        resource_type = type_name(resource.get("resourceType"))
        kind = CREATES.get(resource_type)
        if kind is None or request.get("url", resource_type).split("?")[0] != resource_type:
            raise InvalidInput(f"entry {number}: {resource_type} cannot be created in a Bundle")
        entries.append(Entry(number, raw.get("fullUrl"), resource_type, resource, kind))
    if not 1 <= len(entries) <= TRANSACTION_LIMIT:
        raise InvalidInput(f"a Bundle holds 1 to {TRANSACTION_LIMIT} entries")
    return entries


def resolve(value: Any, created: dict[str, str]) -> Any:
    """Replace `urn:uuid:` references to earlier entries with their new `Type/id`."""
    if isinstance(value, dict):
        out = {k: resolve(v, created) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref.startswith("urn:uuid:"):
            if ref not in created:
                raise InvalidInput("a reference names an entry that is not created before it")
            out["reference"] = created[ref]
        return out
    if isinstance(value, list):
        return [resolve(v, created) for v in value]
    return value


def _response_entry(request: Request, kind: Kind, view: Any) -> dict[str, Any]:
    resource = kind.to_fhir(view.model_dump())
    version = resource["meta"]["versionId"]
    return {
        "fullUrl": f"{base_url(request)}/{resource['resourceType']}/{resource['id']}",
        "resource": resource,
        "response": {
            "status": "201 Created",
            "location": f"{resource['resourceType']}/{resource['id']}/_history/{version}",
            "etag": etag(int(version)),
        },
    }


@router.post("")
@router.post("/", include_in_schema=False)  # the base URL with its slash, as clients send it
def post_bundle(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    bundle = validated(Bundle, body, "Bundle")
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise InvalidInput("POST /fhir takes a transaction or batch Bundle")
    entries = _entries(bundle)
    # A token needs the create scope of every resource type the Bundle holds.
    gates = [gate_for(request, t, "create") for t in sorted({e.resource_type for e in entries})]
    gate = gates[0]
    if kind == "transaction":
        return _transaction(request, gate, entries)
    return _batch(request, gate, entries)


def _transaction(request: Request, gate: Gate, entries: list[Entry]) -> Response:
    created: dict[str, str] = {}

    def step(entry: Entry) -> Callable[[list[Any]], dict[str, Any]]:
        def arguments(results: list[Any]) -> dict[str, Any]:
            # The entries before this one are created by now: record their new ids.
            for earlier, view in zip(entries, results, strict=False):
                if earlier.full_url:
                    created[earlier.full_url] = f"{earlier.resource_type}/{view.id}"
            resource = validated(entry.kind.model, resolve(entry.resource, created), entry.resource_type)
            return entry.kind.arguments(resource, gate)

        return arguments

    try:
        results = gate.run_transaction(steps=[(e.kind.operation, step(e)) for e in entries])
    except AllergyWarning as exc:
        return fhir_response(operation_outcome("business-rule", str(exc)), status=422)
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [_response_entry(request, e.kind, v) for e, v in zip(entries, results, strict=True)],
        }
    )


def _batch(request: Request, gate: Gate, entries: list[Entry]) -> Response:
    """Each entry on its own (its own gate transaction); references to other entries of a
    batch are not resolved (that is what a transaction is for)."""
    out = []
    for entry in entries:
        try:
            resource = validated(entry.kind.model, entry.resource, entry.resource_type)
            operation = getattr(gate, entry.kind.operation)
            view = operation(**entry.kind.arguments(resource, gate))
            out.append(_response_entry(request, entry.kind, view))
        except CarnetError as exc:
            status, code = (422, "business-rule") if isinstance(exc, AllergyWarning) else status_for(exc)
            outcome = operation_outcome(code, f"entry {entry.number}: {exc}")
            out.append({"response": {"status": str(status), "outcome": outcome}})
    return fhir_response({"resourceType": "Bundle", "type": "batch-response", "entry": out})
