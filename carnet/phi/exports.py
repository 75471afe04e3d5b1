"""Bulk export (invariant 3): an approved export request, run at once or as a job; run only by
the gate kernel."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

from sqlalchemy import and_, select, update

from carnet.access.exports import ExportScope, ExportStatus, listed_patients, status_of
from carnet.access.models import ExportRequest
from carnet.access.permissions import Permission
from carnet.access.policy import Relationship, granting_relationships
from carnet.audit.interfaces import AuditKind
from carnet.detection.interfaces import Channel
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.kernel.ids import new_id, parse_id
from carnet.patients.models import ExportFile, Patient
from carnet.patients.views import patient_view
from carnet.phi import care
from carnet.phi.kernel import NOT_FOUND, RT, GuardedTx, Refused, guarded
from carnet.phi.schemas import ExportJobView, PatientExport, PatientView

# One export holds at most EXPORT_LIMIT patients; relationships are computed EXPORT_CHUNK at a time.
EXPORT_LIMIT = 20_000
EXPORT_CHUNK = 500
EXPORT_FILE_WINDOW = dt.timedelta(hours=24)  # a completed export file waits this long, at most
# A job still running after this long has lost its worker (carnet.phi.sweep fails it).
EXPORT_JOB_TIMEOUT = dt.timedelta(minutes=30)
STUCK_EXPORT = "the export did not complete within 30 minutes (its worker stopped); nothing was exported"


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
    if tx.ctx.account_id is None or request.requested_by != tx.ctx.account_id:
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
    request.status = ExportStatus.USED.value
    request.used_at = tx.now
    request.exported_count = len(shown)
    tx.session.flush()
    tx.query = f"export={request.id};scope={scope.value}"
    tx.reasons.append(f"approved export {request.id} ({scope.value}, {len(shown)} patients)")
    tx.expose(shown, Channel.EXPORT, rels, fields_shown)
    return PatientExport(
        export_id=str(request.id),
        purpose=request.purpose,
        requested_by=str(request.requested_by),
        approved_by=str(request.decided_by),
        exported_at=tx.now,
        items=items,
    )


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
    if tx.ctx.account_id is None or job.account_id != tx.ctx.account_id:
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
    assert tx.ctx.account_id is not None  # _own_request checked it
    job = ExportFile(
        id=new_id(),
        export_request_id=request.id,
        account_id=tx.ctx.account_id,
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
