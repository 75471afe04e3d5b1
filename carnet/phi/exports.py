"""Bulk export (invariant 3): an approved export request, run at once or as a job; run only by
the gate kernel."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, select, update

from carnet.access.exports import ExportScope, ExportStatus, listed_patients, status_of
from carnet.access.models import ExportRequest
from carnet.access.permissions import Permission
from carnet.access.policy import Relationship, granting_relationships
from carnet.audit.interfaces import AuditKind
from carnet.billing import operations as billing
from carnet.coverage import operations as coverage
from carnet.detection.interfaces import Channel
from carnet.interventions import operations as interventions
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.kernel.ids import new_id, parse_id
from carnet.patients.models import ExportFile, Patient
from carnet.patients.views import patient_view
from carnet.phi import care
from carnet.phi.kernel import NOT_FOUND, RT, GuardedTx, Refused, guarded
from carnet.phi.schemas import BulkExport, CoverageSection, ExportJobView, PatientExport, PatientView
from carnet.phi.steps import SECTION_LIMIT
from carnet.prescriptions import operations as prescriptions
from carnet.records import care_teams, consents, orders, stays
from carnet.records import operations as records
from carnet.scheduling import operations as scheduling

# One export holds at most EXPORT_LIMIT patients; relationships are computed EXPORT_CHUNK at a time.
EXPORT_LIMIT = 20_000
EXPORT_CHUNK = 500
EXPORT_FILE_WINDOW = dt.timedelta(hours=24)  # a completed export file waits this long, at most
# A job still running after this long has lost its worker (carnet.phi.sweep fails it).
EXPORT_JOB_TIMEOUT = dt.timedelta(minutes=30)
STUCK_EXPORT = "the export did not complete within 30 minutes (its worker stopped); nothing was exported"


# The patient-compartment types a Bulk Data export holds besides Patient, each read with the
# domain list its chart section and `[type]?patient=` search use: a line is what a read gives.
BULK_SECTIONS: dict[str, tuple[RT, Callable[..., Any]]] = {
    "Encounter": (RT.ENCOUNTER, stays.list_for_patient),
    "Appointment": (RT.APPOINTMENT, scheduling.list_for_patient),
    "AllergyIntolerance": (RT.ALLERGY, prescriptions.list_allergies),
    "Condition": (RT.CONDITION, records.list_conditions),
    "Observation": (RT.OBSERVATION, records.list_observations),
    "DiagnosticReport": (RT.DIAGNOSTIC_REPORT, records.list_diagnostic_reports),
    "MedicationRequest": (RT.PRESCRIPTION, prescriptions.list_for_patient),
    "ServiceRequest": (RT.SERVICE_REQUEST, orders.list_for_patient),
    "Immunization": (RT.IMMUNIZATION, interventions.list_immunizations),
    "Procedure": (RT.PROCEDURE, interventions.list_procedures),
    "MedicationAdministration": (RT.MEDICATION_ADMINISTRATION, interventions.list_administrations),
    "MedicationStatement": (RT.MEDICATION_STATEMENT, interventions.list_statements),
    "DocumentReference": (RT.NOTE, records.list_notes),
    "CareTeam": (RT.CARE_TEAM, care_teams.list_for_patient),
    "Consent": (RT.CONSENT, consents.list_for_patient),
    "Coverage": (RT.COVERAGE, coverage.list_for_patient),
    "Invoice": (RT.INVOICE, billing.list_for_patient),
}
BULK_TYPES = ("Patient", *BULK_SECTIONS)
# What a file holds that names an export's warnings (the manifest lists it under `error`).
WARNINGS = "OperationOutcome"


def _is_requester(tx: GuardedTx, account_id: uuid.UUID | None, client_id: str | None) -> bool:
    """Is the actor the one who asked: the same staff account in a session, or the same Backend
    Services client? A token never reaches a person's export (an app acting for them included)."""
    if tx.actor.scopes is not None:
        return account_id is None and client_id is not None and client_id == tx.actor.client_id
    return tx.ctx.account_id is not None and account_id == tx.ctx.account_id


def _job_view(job: ExportFile) -> ExportJobView:
    return ExportJobView(
        id=str(job.id),
        export_id=str(job.export_request_id),
        status=job.status,
        created_at=job.created_at,
        completed_at=job.completed_at,
        patient_count=job.patient_count,
        failure=job.failure,
        request_url=job.request_url,
        outputs=json.loads(job.outputs) if job.outputs else None,
    )


def _own_request(tx: GuardedTx, export_id: str) -> ExportRequest:
    """The actor's own export request (locked), or a refusal."""
    tx.require(Permission.PATIENT_READ)
    tx.check_scopes(RT.PATIENT)
    row_id = parse_id(export_id)
    if row_id is None:
        raise InvalidInput("not an export request id")
    request = tx.session.get(ExportRequest, row_id, with_for_update=True)
    if request is None:
        raise NotFound(NOT_FOUND)
    tx.resource_ids.append(str(request.id))
    if not _is_requester(tx, request.requested_by, request.requested_by_client):
        raise Refused("an export request is used only by the account that asked for it")
    return request


def _approved_export(tx: GuardedTx, export_id: str) -> ExportRequest:
    """The actor's own approved, unexpired, unused export request (locked), or a refusal."""
    request = _own_request(tx, export_id)
    status = status_of(request, tx.now)
    if status != ExportStatus.APPROVED:
        raise Refused(f"export request is {status.value}, not approved")
    if request.facility_id not in tx.ctx.facility_ids or request.decided_by is None:
        raise Refused("export request outside the actor's facilities")
    return request


@guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=False)
def export(tx: GuardedTx, /, *, export_id: str, since: dt.datetime | None = None) -> PatientExport:
    """The patients of an approved export request of this actor, once, watermarked.

    The request (carnet.access.exports) says which patients were asked for; the policy
    still decides who is in it and which fields each shows, as for any other read."""
    request = _approved_export(tx, export_id)
    found, rels = _export_patients(tx, request, since)
    items: list[PatientView] = []
    shown: list[uuid.UUID] = []
    fields_shown: set[str] = set()
    for patient in found:
        fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.PATIENT)
        if not fields:
            continue  # the policy opens nothing of this one to this actor
        items.append(patient_view(tx, patient, fields))
        shown.append(patient.id)
        fields_shown |= fields
    _mark_used(tx, request, len(shown))
    tx.expose(shown, Channel.EXPORT, rels, fields_shown)
    return PatientExport(
        export_id=str(request.id),
        purpose=request.purpose,
        requested_by=str(request.requested_by or f"client:{request.requested_by_client}"),
        approved_by=str(request.decided_by),
        exported_at=tx.now,
        items=items,
    )


def _mark_used(tx: GuardedTx, request: ExportRequest, count: int) -> None:
    request.status = ExportStatus.USED.value
    request.used_at = tx.now
    request.exported_count = count
    tx.session.flush()
    tx.query = f"export={request.id};scope={request.scope}"
    tx.reasons.append(f"approved export {request.id} ({request.scope}, {count} patients)")


def _export_patients(
    tx: GuardedTx, request: ExportRequest, since: dt.datetime | None
) -> tuple[list[Patient], dict[uuid.UUID, frozenset[Relationship]]]:
    """The patients an approved request names that the policy still shows this actor (before
    field-level redaction), with their relationships."""
    scope = ExportScope(request.scope)
    if scope == ExportScope.CARE:
        opened = granting_relationships(roles=tx.ctx.roles, resource=RT.PATIENT) & care.CARE
        wanted = care.patient_filter(tx.ctx, opened)
    elif scope == ExportScope.PATIENTS:
        wanted = and_(care.visible_filter(tx.ctx), Patient.id.in_(listed_patients(request)))
    else:
        wanted = care.visible_filter(tx.ctx)
    found: list[Patient] = []
    if wanted is not None:
        query = select(Patient).where(wanted, Patient.facility_id == request.facility_id)
        if since is not None:  # Bulk Data `_since`: the patients whose record changed since
            query = query.where(Patient.updated_at >= since)
        found = list(tx.session.scalars(query.order_by(Patient.id).limit(EXPORT_LIMIT + 1)))
    if len(found) > EXPORT_LIMIT:
        raise InvalidInput(f"an export holds at most {EXPORT_LIMIT} patients: narrow its scope")
    rels: dict[uuid.UUID, frozenset[Relationship]] = {}
    for start in range(0, len(found), EXPORT_CHUNK):
        rels |= tx.relationships_of(found[start : start + EXPORT_CHUNK])
    return found, rels


# -- the same export, run asynchronously (FHIR Bulk Data kick-off, status, file) -----------
def _export_job(tx: GuardedTx, job_id: str, *, lock: bool = True) -> ExportFile:
    """One of the actor's own export jobs; anyone else's answers like a missing one. Locked
    for a change; a poll does not lock (it must not wait for the run)."""
    tx.require(Permission.PATIENT_READ)
    tx.check_scopes(RT.PATIENT)
    jid = parse_id(job_id)
    job = tx.session.get(ExportFile, jid, with_for_update=lock) if jid else None
    if job is None:
        raise NotFound(NOT_FOUND)
    tx.resource_ids.extend([str(job.id), str(job.export_request_id)])
    if not _is_requester(tx, job.account_id, job.client_id):
        raise Refused("an export job is seen only by the account that started it")
    return job


@guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=False)
def queue_export(tx: GuardedTx, /, *, export_id: str) -> ExportJobView:
    """Accept an approved export request to run in the background: the same checks as
    `export`, nothing read yet; one job per request (it is still used once)."""
    request = _approved_export(tx, export_id)
    started = tx.session.scalar(select(ExportFile.id).where(ExportFile.export_request_id == request.id))
    if started is not None:
        raise Conflict("this export was already started: poll its status")
    assert tx.ctx.account_id is not None  # _approved_export checked it
    job = ExportFile(
        id=new_id(),
        export_request_id=request.id,
        account_id=tx.ctx.account_id,
        facility_id=request.facility_id,
        status="running",
        created_at=tx.now,
    )
    tx.session.add(job)
    tx.session.flush()
    tx.resource_ids.append(str(job.id))
    tx.query = f"export={request.id};async"
    tx.reasons.append(f"export {request.id} queued")
    return _job_view(job)


@guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=False)
def kick_off_export(
    tx: GuardedTx, /, *, export_id: str, since: dt.datetime | None = None, request_url: str | None = None
) -> ExportJobView:
    """A FHIR Bulk Data kick-off on the actor's own export request still waiting for its
    second person: a job `pending` approval, nothing read. It runs only once another person
    has approved the request (`start_export_job`): a session alone never completes it."""
    request = _own_request(tx, export_id)
    status = status_of(request, tx.now)
    if status not in (ExportStatus.PENDING, ExportStatus.APPROVED):
        raise Refused(f"export request is {status.value}")
    if request.facility_id not in tx.ctx.facility_ids:
        raise Refused("export request outside the actor's facilities")
    started = tx.session.scalar(select(ExportFile.id).where(ExportFile.export_request_id == request.id))
    if started is not None:
        raise Conflict("this export was already started: poll its status")
    job = ExportFile(
        id=new_id(),
        export_request_id=request.id,
        account_id=request.requested_by,
        client_id=request.requested_by_client,
        facility_id=request.facility_id,
        status="pending",
        created_at=tx.now,
        since=since,
        request_url=(request_url or "")[:500] or None,
    )
    tx.session.add(job)
    tx.session.flush()
    tx.resource_ids.append(str(job.id))
    tx.query = f"export={request.id};kick-off"
    tx.reasons.append(f"export {request.id} kicked off, waiting for a second person's approval")
    return _job_view(job)


@guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=True)
def start_export_job(tx: GuardedTx, /, *, job_id: str) -> ExportJobView:
    """A pending kick-off, once its request is decided: approved -> running (its run starts
    now, the requester's own poll runs it); rejected or expired -> failed; else still pending."""
    job = _export_job(tx, job_id)
    if job.status != "pending":
        return _job_view(job)
    request = tx.session.get(ExportRequest, job.export_request_id)
    assert request is not None  # a foreign key
    status = status_of(request, tx.now)
    if status == ExportStatus.APPROVED:
        job.status = "running"
        job.created_at = tx.now  # the run's start: EXPORT_JOB_TIMEOUT counts from here
        tx.reasons.append(f"export {request.id} approved by a second person: running")
    elif status != ExportStatus.PENDING:
        job.status = "failed"
        job.failure = f"the export request was {status.value}; nothing was exported"
        job.completed_at = tx.now
    tx.session.flush()
    return _job_view(job)


@guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=True)
def run_export_job(tx: GuardedTx, /, *, job_id: str, render: Callable[[PatientExport], str]) -> ExportJobView:
    """Run a queued export: exactly `export` (policy, exposures on channel export, the
    request used), its output rendered by `render` and kept encrypted until downloaded."""
    job = _export_job(tx, job_id)
    if job.status != "running":
        raise Conflict(f"this export job is {job.status}, not waiting to run")
    exported = export(tx, export_id=str(job.export_request_id), since=job.since)
    job.ndjson_ct = tx.enc(render(exported), job.facility_id, "export_files", "ndjson", job.id)
    job.status = "completed"
    job.completed_at = tx.now
    job.patient_count = len(exported.items)
    tx.session.flush()
    return _job_view(job)


def _changed_since(view: Any, since: dt.datetime | None) -> bool:
    """Bulk Data `_since`: a record last changed before it is left out; one whose view carries
    no change time is kept (carnet cannot tell it did not change)."""
    updated = getattr(view, "updated_at", None)
    return since is None or updated is None or updated >= since


def _section(tx: GuardedTx, resource_type: str, patient_id: uuid.UUID) -> list[Any]:
    """One patient's records of one type, as its chart section reads them; a section the
    policy does not open is left out, as `$everything` does."""
    _kind, lister = BULK_SECTIONS[resource_type]
    try:
        found = lister(tx, patient_id=str(patient_id))
    except (Refused, NotFound):
        return []
    return list(found.coverages) if isinstance(found, CoverageSection) else list(found)


@guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=True)
def run_bulk_export_job(
    tx: GuardedTx, /, *, job_id: str, render: Callable[[BulkExport], dict[str, str]]
) -> ExportJobView:
    """Run a Bulk Data job: the request's patients (as `export` chooses them), then each type
    it asks for, record by record as a read gives it (policy, token scopes, redaction); one file
    per type, rendered by `render`, kept encrypted until downloaded. Each patient with anything
    in the files is one exposure on channel `export` (the chart sections' own exposures are the
    same patients: they are not counted twice); the request is used."""
    job = _export_job(tx, job_id)
    if job.status != "running":
        raise Conflict(f"this export job is {job.status}, not waiting to run")
    request = _approved_export(tx, str(job.export_request_id))
    types = [t for t in (request.resource_types or "Patient").split() if t in BULK_TYPES]
    found, rels = _export_patients(tx, request, None)
    mark = len(tx.exposures)
    resources: dict[str, list[Any]] = {t: [] for t in types}
    full: set[str] = set()
    shown: list[uuid.UUID] = []
    fields_shown: set[str] = set()
    for patient in found:
        relations = rels.get(patient.id, frozenset())
        fields = tx.read_fields(relations, RT.PATIENT)
        if not fields:
            continue  # the policy opens nothing of this one to this actor
        present = False
        for resource_type in types:
            if resource_type == "Patient":
                view = patient_view(tx, patient, fields)
                kept = [view] if _changed_since(view, job.since) else []
            elif tx.read_fields(relations, BULK_SECTIONS[resource_type][0]):
                views = _section(tx, resource_type, patient.id)
                if len(views) >= SECTION_LIMIT:
                    full.add(resource_type)
                kept = [v for v in views if _changed_since(v, job.since)]
            else:
                kept = []
            resources[resource_type].extend(kept)
            present = present or bool(kept)
        if present:
            shown.append(patient.id)
            fields_shown |= fields
    del tx.exposures[mark:]  # the sections' chart exposures: counted once below, as an export
    _mark_used(tx, request, len(shown))
    tx.expose(shown, Channel.EXPORT, rels, fields_shown)
    warnings = [
        f"{t}: at most {SECTION_LIMIT} records per patient are exported; a patient with more has"
        " only the first ones in this file (read the rest by search)"
        for t in sorted(full)
    ]
    files = render(BulkExport(export_id=str(request.id), resources=resources, warnings=warnings))
    files = {t: text for t, text in files.items() if text}
    counts = {t: text.count("\n") for t, text in files.items()}
    job.ndjson_ct = tx.enc(json.dumps(files), job.facility_id, "export_files", "ndjson", job.id)
    job.outputs = json.dumps(counts)
    job.status = "completed"
    job.completed_at = tx.now
    job.patient_count = len(shown)
    tx.session.flush()
    return _job_view(job)


@guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=True)
def download_export_file(tx: GuardedTx, /, *, job_id: str, resource_type: str) -> str:
    """One file of a Bulk Data job, once, by the requester, within the file window; then it is
    erased (the job is `downloaded` when none is left)."""
    job = _export_job(tx, job_id)
    outputs: dict[str, int] = json.loads(job.outputs) if job.outputs else {}
    if job.status != "completed" or job.ndjson_ct is None or job.completed_at is None:
        raise Refused(f"export job is {job.status}: nothing to download")
    if resource_type not in outputs:
        raise NotFound(NOT_FOUND)  # never in this export, or downloaded already
    if tx.now - job.completed_at > EXPORT_FILE_WINDOW:
        raise Refused("the export file has expired")
    files: dict[str, str] = json.loads(tx.dec(job.ndjson_ct, "export_files", "ndjson", job.id) or "{}")
    text = files.pop(resource_type, "")
    outputs.pop(resource_type)
    job.outputs = json.dumps(outputs)
    if outputs:
        job.ndjson_ct = tx.enc(json.dumps(files), job.facility_id, "export_files", "ndjson", job.id)
    else:
        job.ndjson_ct = None
        job.status = "downloaded"
        job.downloaded_at = tx.now
    tx.session.flush()
    tx.reasons.append(f"export file {resource_type} downloaded")
    return text


@guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=True)
def abandon_export_job(
    tx: GuardedTx, /, *, job_id: str, reason: str, cancelled: bool = False
) -> ExportJobView:
    """A job that could not run is marked failed (its refusal or error is audited already);
    one the requester cancels is marked cancelled, its file (if any) erased undownloaded."""
    job = _export_job(tx, job_id)
    if job.status not in (("pending", "running", "completed") if cancelled else ("pending", "running")):
        raise Conflict(f"this export job is {job.status}")
    job.status = "cancelled" if cancelled else "failed"
    job.failure = (reason.strip() or job.status)[:200]
    job.ndjson_ct = None
    job.outputs = None if job.outputs is None else "{}"
    job.completed_at = job.completed_at or tx.now
    tx.session.flush()
    return _job_view(job)


@guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=True)
def export_job(tx: GuardedTx, /, *, job_id: str) -> ExportJobView:
    """A job's state for the requester's polling (no patient data). A file left past its
    window is erased here (status expired); a job running past its timeout is failed (as
    the sweeper does, only if still running: a run committing meanwhile wins)."""
    job = _export_job(tx, job_id, lock=False)
    if job.status == "running" and tx.now - job.created_at > EXPORT_JOB_TIMEOUT:
        tx.session.execute(
            update(ExportFile)
            .where(ExportFile.id == job.id, ExportFile.status == "running")
            .values(status="failed", failure=STUCK_EXPORT, completed_at=tx.now)
            .execution_options(synchronize_session=False)
        )
        tx.session.refresh(job)
    if (
        job.status == "completed"
        and job.completed_at is not None
        and tx.now - job.completed_at > EXPORT_FILE_WINDOW
    ):
        job.status = "expired"
        job.ndjson_ct = None
        job.outputs = None if job.outputs is None else "{}"
        tx.session.flush()
    return _job_view(job)


@guarded(AuditKind.PHI_EXPORT, RT.PATIENT, targeted=True)
def download_export(tx: GuardedTx, /, *, job_id: str) -> str:
    """The output, once, within the use window of the approval; then it is erased."""
    job = _export_job(tx, job_id)
    if job.status != "completed" or job.ndjson_ct is None or job.completed_at is None:
        raise Refused(f"export job is {job.status}: nothing to download")
    if tx.now - job.completed_at > EXPORT_FILE_WINDOW:
        raise Refused("the export file has expired")
    text = tx.dec(job.ndjson_ct, "export_files", "ndjson", job.id) or ""
    job.ndjson_ct = None
    job.status = "downloaded"
    job.downloaded_at = tx.now
    tx.session.flush()
    tx.reasons.append(f"export file downloaded ({job.patient_count} patients)")
    return text
