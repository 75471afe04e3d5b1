"""Bulk export behind a second person (invariant 3), as carnet-specific FHIR operations.

    POST /fhir/$export-request   Parameters(purpose, scope, patient*)   a staff member asks
    POST /fhir/$export-approve   Parameters(exportId, note?)            a security officer approves
    POST /fhir/$export-reject    Parameters(exportId, note)             ... or rejects
    GET  /fhir/Patient/$export?_exportId=ID                              the requester, once

The export answers NDJSON synchronously: a first line (a Parameters manifest naming the
request, its purpose, requester and approver) then one Patient per line, each tagged with the
export id, so a leaked file names its export.

With `Prefer: respond-async` (FHIR Bulk Data kick-off) it answers 202 at once with a
Content-Location status URL; the export runs in the background as the same actor:

    GET  /fhir/$export-status/{job}    202 (X-Progress) while running, then the manifest
    DELETE /fhir/$export-status/{job}  cancel (a completed file is erased undownloaded)
    GET  /fhir/$export-file/{job}      the same NDJSON, once, then erased
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import Response

from carnet.access import scopes
from carnet.access.actor import Actor
from carnet.access.exports import (
    ExportRequestView,
    ExportScope,
    approve_export,
    reject_export,
    request_export,
)
from carnet.fhir.core.api import (
    FhirBody,
    base_url,
    fhir_response,
    gate_for,
    instant,
    parse_instant,
    type_name,
)
from carnet.fhir.core.outcome import operation_outcome, outcome_response
from carnet.fhir.core.registry import FhirModule
from carnet.fhir.resources.allergy import allergy_to_fhir
from carnet.fhir.resources.appointment import appointment_to_fhir
from carnet.fhir.resources.billing import invoice_to_fhir
from carnet.fhir.resources.care_team import care_team_to_fhir
from carnet.fhir.resources.condition import condition_to_fhir
from carnet.fhir.resources.consent import consent_to_fhir
from carnet.fhir.resources.coverage import coverage_to_fhir
from carnet.fhir.resources.diagnostic_report import report_to_fhir
from carnet.fhir.resources.document_reference import note_to_fhir
from carnet.fhir.resources.encounter import encounter_to_fhir
from carnet.fhir.resources.interventions import KINDS
from carnet.fhir.resources.interventions import to_fhir as intervention_to_fhir
from carnet.fhir.resources.medication_request import prescription_to_fhir
from carnet.fhir.resources.observation import observation_to_fhir
from carnet.fhir.resources.patient import patient_to_fhir
from carnet.fhir.resources.service_request import order_to_fhir
from carnet.identity import stepup
from carnet.identity.dependencies import current_actor, runtime_of
from carnet.kernel.errors import CarnetError, InvalidInput, NotFound
from carnet.phi.gate import BULK_TYPES, Gate
from carnet.phi.schemas import BulkExport, PatientExport

WARNINGS = "OperationOutcome"  # the file of an export's warnings (the manifest's `error`)

router = APIRouter(prefix="/fhir", tags=["fhir"])

WATERMARK_SYSTEM = "https://carnet.example/fhir/export-watermark"
NDJSON = "application/fhir+ndjson"
OPERATION_BASE = "https://carnet.example/fhir/OperationDefinition/"


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
    stepup.require(runtime_of(request), actor=actor, action=stepup.Action.EXPORT_APPROVE)  # widens access
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


# == FHIR Bulk Data kick-offs: a request for a second person's approval, and its job =========
# Bulk Data IG v2 kick-off parameters carnet takes; `purpose` is carnet's own, optional (a
# client's registered purpose of use stands in for it).
KICKOFF_PARAMETERS = {"_outputFormat", "_type", "_since", "purpose", "_format"}
NDJSON_FORMATS = (None, NDJSON, "application/ndjson", "ndjson")
# Each exported type, rendered as its read renders it (the gate lists what a read gives).
RENDERERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "Patient": patient_to_fhir,
    "Encounter": encounter_to_fhir,
    "Appointment": appointment_to_fhir,
    "AllergyIntolerance": allergy_to_fhir,
    "Condition": condition_to_fhir,
    "Observation": observation_to_fhir,
    "DiagnosticReport": report_to_fhir,
    "MedicationRequest": prescription_to_fhir,
    "ServiceRequest": order_to_fhir,
    **{name: intervention_to_fhir(kind) for name, kind in KINDS.items()},
    "DocumentReference": note_to_fhir,
    "CareTeam": care_team_to_fhir,
    "Consent": consent_to_fhir,
    "Coverage": coverage_to_fhir,
    "Invoice": invoice_to_fhir,
}
EXPORTED_TYPES = tuple(t for t in BULK_TYPES if t in RENDERERS)


def _requested_types(request: Request, actor: Actor) -> list[str]:
    """`_type` (comma separated, repeatable), each a type carnet exports and, for a token, one
    its scopes read (a type it may not read is refused and audited, as a read would be). Without
    `_type`: every type carnet exports (a token: those its scopes read); the policy still leaves
    out, per patient, the types the requester's role does not open."""
    given = [t.strip() for v in request.query_params.getlist("_type") for t in v.split(",") if t.strip()]
    if not given:
        if actor.scopes is None:
            return list(EXPORTED_TYPES)
        readable = [t for t in EXPORTED_TYPES if any(scopes.grants(s, t, "read") for s in actor.scopes)]
        return readable or ["Patient"]
    unknown = [t for t in given if t not in EXPORTED_TYPES]
    if unknown:
        raise InvalidInput(
            f"_type: carnet does not export {type_name(unknown[0])}; it exports " + ", ".join(EXPORTED_TYPES)
        )
    for resource_type in given:
        gate_for(request, resource_type, "read")  # a token's scopes: refused and audited here
    return list(dict.fromkeys(given))


def _kickoff(request: Request, scope: ExportScope) -> Response:
    """`[base]/$export`, `Patient/$export`, `Group/[id]/$export` with `Prefer: respond-async`
    (Bulk Data IG v2), by a staff session or a Backend Services client (system/ scopes): an
    export request (carnet.access.exports) and its job, `pending` until a second person approves
    the request (`$export-approve`, the web security console, or `carnet exports approve`, each
    with the approver's own fresh passkey proof). The status URL then answers 202 until the
    files are ready."""
    gate = gate_for(request, "Patient", "read")
    actor = current_actor(request)
    params = request.query_params
    prefer = request.headers.get("prefer", "")
    unknown = sorted(set(params) - KICKOFF_PARAMETERS)
    if unknown and "handling=lenient" not in prefer.replace(" ", ""):
        raise InvalidInput(
            "unsupported $export parameters: "
            + ", ".join(type_name(u) if u[:1] != "_" else u[:40] for u in unknown[:10])
            + " (carnet takes _type, _since, _outputFormat; send Prefer: handling=lenient to have"
            " others ignored)"
        )
    if "respond-async" not in prefer:
        raise InvalidInput("a Bulk Data kick-off needs the header Prefer: respond-async")
    if params.get("_outputFormat") not in NDJSON_FORMATS:
        raise InvalidInput(f"_outputFormat must be {NDJSON}")
    types = _requested_types(request, actor)
    since = parse_instant(params["_since"], "_since") if params.get("_since") else None
    asked = request_export(
        runtime_of(request),
        actor=actor,
        purpose=params.get("purpose") or "",
        scope=scope,
        resource_types=types,
        purpose_optional=True,
    )
    kept = urlencode([(k, v) for k, v in params.multi_items() if k in KICKOFF_PARAMETERS - {"purpose"}])
    url = request.url.path + (f"?{kept}" if kept else "")
    job = gate.kick_off_export(export_id=asked.id, since=since, request_url=url)
    status_url = f"{base_url(request)}/$export-status/{job.id}"
    outcome = operation_outcome(
        "informational",
        f"export request {asked.id} waits for a second person's approval; then poll {status_url}",
        severity="information",
    )
    headers = {
        "Content-Location": status_url,
        "Cache-Control": "no-store",
        "X-Carnet-Export-Request": asked.id,
    }
    return fhir_response(outcome, status=202, headers=headers)


@router.get("/$export")
def export_system(request: Request) -> Response:
    """System-level kick-off: the patients of the requester's facility the policy lets them
    see (scope `facility`)."""
    return _kickoff(request, ExportScope.FACILITY)


@router.get("/Group/{group_id}/$export")
def export_group(request: Request, group_id: str) -> Response:
    """Group kick-off: carnet's Groups are practitioners' patient lists (carnet.fhir.resources.
    group); a requester exports their own (scope `care`), nobody else's."""
    actor = current_actor(request)
    if actor.practitioner_id is None or str(actor.practitioner_id) != group_id:
        gate_for(request, "Patient", "read")  # a token's scope first, as everywhere
        raise NotFound("no such Group")
    return _kickoff(request, ExportScope.CARE)


@router.get("/Patient/$export")
def export_patients(request: Request, background: BackgroundTasks) -> Response:
    """Patient-level kick-off (scope `facility`); with `_exportId`, carnet's own use of an
    export request approved beforehand (synchronous, or `Prefer: respond-async`)."""
    export_id = request.query_params.get("_exportId")
    if export_id is None:
        return _kickoff(request, ExportScope.FACILITY)
    gate = gate_for(request, "Patient", "read")
    unknown = sorted(set(request.query_params) - {"_exportId", "_format", "_outputFormat"})
    if unknown or not export_id:
        raise InvalidInput("Patient/$export with _exportId takes _outputFormat only")
    output = request.query_params.get("_outputFormat")
    if output not in (None, NDJSON, "application/ndjson", "ndjson"):
        raise InvalidInput(f"_outputFormat must be {NDJSON}")
    if "respond-async" in request.headers.get("prefer", ""):
        job = gate.queue_export(export_id=export_id)
        background.add_task(_run_job, gate, job.id)
        status_url = f"{base_url(request)}/$export-status/{job.id}"
        return Response(
            status_code=202, headers={"Content-Location": status_url, "Cache-Control": "no-store"}
        )
    export = gate.export(export_id=export_id)
    return Response(
        render(export),
        media_type=NDJSON,
        headers={"X-Carnet-Export-Id": export.export_id, "Cache-Control": "no-store"},
    )


def _run_job(gate: Gate, job_id: str) -> None:
    """The background half of an `_exportId` export: the export itself (audited as ever), or
    the job marked failed with a reason that names no data."""
    try:
        gate.run_export_job(job_id=job_id, render=render)
    except NotFound:
        _abandon(gate, job_id, "the export was refused, or its request is no longer usable")
    except CarnetError as exc:
        _abandon(gate, job_id, str(exc) or type(exc).__name__)
    except Exception:  # fail closed: the job must not stay "running"
        _abandon(gate, job_id, "internal error; nothing was exported")


def _run_bulk_job(gate: Gate, job_id: str) -> None:
    """A standard kick-off's run: one NDJSON file per type (Bulk Data), or the job failed with
    a reason that names no data."""
    try:
        gate.run_bulk_export_job(job_id=job_id, render=render_bulk)
    except NotFound:
        _abandon(gate, job_id, "the export was refused, or its request is no longer usable")
    except CarnetError as exc:
        _abandon(gate, job_id, str(exc) or type(exc).__name__)
    except Exception:  # fail closed: the job must not stay "running"
        _abandon(gate, job_id, "internal error; nothing was exported")


def _abandon(gate: Gate, job_id: str, reason: str) -> None:
    # If even this is refused (e.g. the account was contained meanwhile), the status answers
    # by the job's age.
    with contextlib.suppress(CarnetError):
        gate.abandon_export_job(job_id=job_id, reason=reason)


@router.get("/$export-status/{job_id}")
def export_status(request: Request, job_id: str, background: BackgroundTasks) -> Response:
    """Bulk Data status: 202 while pending approval or running, then the manifest (the output
    URL is good once). The requester's poll after the approval starts the run, as them."""
    gate = gate_for(request, "Patient", "read")
    job = gate.export_job(job_id=job_id)
    if job.status == "pending":
        job = gate.start_export_job(job_id=job_id)
        if job.status == "running":
            background.add_task(_run_bulk_job, gate, job.id)
    if job.status == "pending":
        headers = {
            "X-Progress": "pending approval",
            "Retry-After": "60",
            "X-Carnet-Export-Request": job.export_id,
        }
        return Response(status_code=202, headers=headers)
    if job.status == "running":
        return Response(status_code=202, headers={"X-Progress": "running", "Retry-After": "2"})
    if job.status == "failed":
        return outcome_response(422, "processing", f"the export failed: {job.failure}")
    if job.status in ("cancelled", "expired"):
        return outcome_response(404, "not-found", f"this export was {job.status}")
    base = base_url(request)
    output: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    if job.outputs is not None:  # a Bulk Data kick-off: one file per type, until downloaded
        for resource_type, count in (job.outputs or {}).items():
            entry = {
                "type": resource_type,
                "url": f"{base}/$export-file/{job.id}/{resource_type}",
                "count": count,
            }
            (errors if resource_type == WARNINGS else output).append(entry)
    elif job.status == "completed":
        output.append({"type": "Patient", "url": f"{base}/$export-file/{job.id}", "count": job.patient_count})
    manifest = {
        "transactionTime": instant(job.completed_at),
        "request": str(request.base_url).rstrip("/") + job.request_url
        if job.request_url
        else f"{base}/Patient/$export?_exportId={job.export_id}",
        "requiresAccessToken": True,
        "output": output,
        "error": errors,
        "extension": {WATERMARK_SYSTEM: job.export_id, "status": job.status},
    }
    return Response(
        json.dumps(manifest), media_type="application/json", headers={"Cache-Control": "no-store"}
    )


@router.delete("/$export-status/{job_id}")
def cancel_export(request: Request, job_id: str) -> Response:
    """Bulk Data cancellation: a running job stops being waited for (its run, if it ends, finds
    it cancelled and writes nothing), a completed file is erased undownloaded."""
    gate = gate_for(request, "Patient", "read")
    gate.abandon_export_job(job_id=job_id, reason="cancelled by the requester", cancelled=True)
    return Response(status_code=202)


@router.get("/$export-file/{job_id}")
def export_file(request: Request, job_id: str) -> Response:
    """The export's NDJSON (manifest line, then watermarked Patients), once."""
    gate = gate_for(request, "Patient", "read")
    job = gate.export_job(job_id=job_id)
    text = gate.download_export(job_id=job_id)
    return Response(
        text,
        media_type=NDJSON,
        headers={"X-Carnet-Export-Id": job.export_id, "Cache-Control": "no-store"},
    )


@router.get("/$export-file/{job_id}/{resource_type}")
def export_type_file(request: Request, job_id: str, resource_type: str) -> Response:
    """One NDJSON file of a Bulk Data job (its type's resources, each watermarked), once, by
    the requester only; a bearer token or the requester's session is required."""
    gate = gate_for(request, "Patient", "read")
    job = gate.export_job(job_id=job_id)
    text = gate.download_export_file(job_id=job_id, resource_type=type_name(resource_type))
    return Response(
        text,
        media_type=NDJSON,
        headers={"X-Carnet-Export-Id": job.export_id, "Cache-Control": "no-store"},
    )


def render(export: PatientExport) -> str:
    """An export as NDJSON: a Parameters manifest line, then one Patient per line; every line
    carries the watermark tag of its export."""
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
        resource = patient_to_fhir(item.model_dump())
        meta = dict(resource.get("meta") or {})
        meta["tag"] = [*meta.get("tag", []), tag]
        lines.append(json.dumps(dict(resource, meta=meta), ensure_ascii=False))
    return "\n".join(lines) + "\n"


def render_bulk(export: BulkExport) -> dict[str, str]:
    """A Bulk Data job's files: per type, one resource per line as its read renders it, with
    the watermark tag of its export added to `meta.tag` (a leaked line names its export); the
    export's warnings as OperationOutcome lines."""
    tag = {
        "system": WATERMARK_SYSTEM,
        "code": export.export_id,
        "display": f"carnet export {export.export_id}",
    }
    files: dict[str, str] = {}
    for resource_type, views in export.resources.items():
        to_fhir = RENDERERS[resource_type]
        lines = []
        for view in views:
            resource = to_fhir(view.model_dump())
            meta = dict(resource.get("meta") or {})
            meta["tag"] = [*meta.get("tag", []), tag]
            lines.append(json.dumps(dict(resource, meta=meta), ensure_ascii=False))
        files[resource_type] = "".join(line + "\n" for line in lines)
    if export.warnings:
        outcome = operation_outcome("too-costly", export.warnings[0], severity="warning")
        outcome["issue"] = [
            {"severity": "warning", "code": "too-costly", "diagnostics": w} for w in export.warnings
        ]
        files[WARNINGS] = json.dumps(outcome) + "\n"
    return files


BULK_DATA_EXPORT = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"

MODULE = FhirModule(
    router=router,
    operations={
        **{n: OPERATION_BASE + n for n in ("export-request", "export-approve", "export-reject")},
        "export": BULK_DATA_EXPORT,  # the Bulk Data IG's kick-off ($export, Patient/, Group/[id]/)
    },
)
