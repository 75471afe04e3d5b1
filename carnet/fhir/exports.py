"""Bulk export behind a second person (invariant 3), as carnet-specific FHIR operations.

    POST /fhir/$export-request   Parameters(purpose, scope, patient*)   a staff member asks
    POST /fhir/$export-approve   Parameters(exportId, note?)            a security officer approves
    POST /fhir/$export-reject    Parameters(exportId, note)             ... or rejects
    GET  /fhir/Patient/$export?_exportId=ID                              the requester, once

The export answers NDJSON synchronously: a first line (a Parameters manifest naming the
request, its purpose, requester and approver) then one Patient per line, each tagged with the
export id, so a leaked file names its export.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from carnet.access.exports import ExportRequestView, approve_export, reject_export, request_export
from carnet.fhir import mapping
from carnet.fhir.api import gate_for, instant
from carnet.fhir.metadata import OPERATIONS
from carnet.identity.dependencies import current_actor, runtime_of
from carnet.kernel.errors import InvalidInput

router = APIRouter(prefix="/fhir", tags=["fhir"])

WATERMARK_SYSTEM = "https://carnet.example/fhir/export-watermark"
NDJSON = "application/fhir+ndjson"
OPERATION_BASE = "https://carnet.example/fhir/OperationDefinition/"
for _name in ("export-request", "export-approve", "export-reject", "export"):
    OPERATIONS[_name] = OPERATION_BASE + _name

FhirBody = Body(..., media_type="application/fhir+json")


def _parameters(body: Any, allowed: set[str]) -> dict[str, list[Any]]:
    """A Parameters resource as name -> values (value[x] of each part); names outside `allowed`
    are refused rather than ignored."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidInput("the body must be a Parameters resource")
    found: dict[str, list[Any]] = {}
    for part in body.get("parameter") or []:
        if not isinstance(part, dict) or not isinstance(part.get("name"), str):
            raise InvalidInput("each parameter needs a name")
        name = part["name"]
        if name not in allowed:
            raise InvalidInput(f"unknown parameter (expected: {', '.join(sorted(allowed))})")
        values = [v for k, v in part.items() if k.startswith("value")]
        if len(values) != 1:
            raise InvalidInput(f"parameter {name} needs one value")
        found.setdefault(name, []).append(values[0])
    return found


def _text(found: dict[str, list[Any]], name: str, *, required: bool = True) -> str:
    values = found.get(name) or []
    if len(values) > 1 or (required and not values):
        raise InvalidInput(f"give {name} once")
    if values and not isinstance(values[0], str):
        raise InvalidInput(f"{name} must be a string")
    return str(values[0]) if values else ""


def _patient_id(value: Any) -> str:
    reference = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(reference, str) or not reference.startswith("Patient/"):
        raise InvalidInput("patient must be a reference Patient/<id>")
    return reference.removeprefix("Patient/")


def _view(view: ExportRequestView) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "exportId", "valueId": view.id},
        {"name": "status", "valueCode": view.status.value},
        {"name": "scope", "valueCode": view.scope.value},
        {"name": "purpose", "valueString": view.purpose},
        {"name": "requestedBy", "valueString": view.requested_by},
        {"name": "requestedAt", "valueInstant": instant(view.requested_at)},
        {"name": "expiresAt", "valueInstant": instant(view.expires_at)},
    ]
    if view.patient_count is not None:
        parts.append({"name": "patientCount", "valueInteger": view.patient_count})
    if view.decided_by is not None:
        parts.append({"name": "decidedBy", "valueString": view.decided_by})
        parts.append({"name": "decidedAt", "valueInstant": instant(view.decided_at)})
    if view.decision_note:
        parts.append({"name": "note", "valueString": view.decision_note})
    return {"resourceType": "Parameters", "id": view.id, "parameter": parts}


def _answer(resource: dict[str, Any], status: int = 200) -> Response:
    return Response(
        json.dumps(resource, ensure_ascii=False), status_code=status, media_type="application/fhir+json"
    )


@router.post("/$export-request")
def ask_export(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    actor = current_actor(request)
    found = _parameters(body, {"purpose", "scope", "patient"})
    view = request_export(
        runtime_of(request),
        actor=actor,
        purpose=_text(found, "purpose"),
        scope=_text(found, "scope"),
        patient_ids=[_patient_id(v) for v in found.get("patient", [])],
    )
    return _answer(_view(view), status=201)


@router.post("/$export-approve")
def approve(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    actor = current_actor(request)
    found = _parameters(body, {"exportId", "note"})
    view = approve_export(
        runtime_of(request),
        actor=actor,
        export_id=_text(found, "exportId"),
        note=_text(found, "note", required=False),
    )
    return _answer(_view(view))


@router.post("/$export-reject")
def reject(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    actor = current_actor(request)
    found = _parameters(body, {"exportId", "note"})
    view = reject_export(
        runtime_of(request), actor=actor, export_id=_text(found, "exportId"), note=_text(found, "note")
    )
    return _answer(_view(view))


@router.get("/Patient/$export")
def export_patients(request: Request) -> Response:
    gate = gate_for(request, "Patient", "read")
    export_id = request.query_params.get("_exportId")
    unknown = sorted(set(request.query_params) - {"_exportId", "_format"})
    if unknown or not export_id:
        raise InvalidInput("Patient/$export takes _exportId (an approved export request) only")
    export = gate.export(export_id=export_id)
    tag = {
        "system": WATERMARK_SYSTEM,
        "code": export.export_id,
        "display": f"carnet export {export.export_id}",
    }
    manifest = {
        "resourceType": "Parameters",
        "id": export.export_id,
        "meta": {"tag": [tag]},
        "parameter": [
            {"name": "exportId", "valueId": export.export_id},
            {"name": "purpose", "valueString": export.purpose},
            {"name": "requestedBy", "valueString": export.requested_by},
            {"name": "approvedBy", "valueString": export.approved_by},
            {"name": "exportedAt", "valueInstant": instant(export.exported_at)},
            {"name": "count", "valueInteger": len(export.items)},
        ],
    }
    lines = [json.dumps(manifest, ensure_ascii=False)]
    for item in export.items:
        resource = mapping.patient_to_fhir(item.model_dump())
        meta = dict(resource.get("meta") or {})
        meta["tag"] = [*meta.get("tag", []), tag]
        lines.append(json.dumps(dict(resource, meta=meta), ensure_ascii=False))
    return Response(
        "\n".join(lines) + "\n",
        media_type=NDJSON,
        headers={"X-Carnet-Export-Id": export.export_id, "Cache-Control": "no-store"},
    )
