"""Bulk export requests (invariant 3): a stated purpose, a second person's approval, one use.

Asking for and deciding an export reads no patient data, so it lives here (run_audited); the
export itself reads patients and is a gate operation (carnet.phi.gate.Gate.export), which
accepts only an approved, unexpired, unused request of the same account.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from enum import StrEnum

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.access.audited import run_audited
from carnet.access.context import AccessContext
from carnet.access.models import ExportRequest
from carnet.access.permissions import Permission
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity.models import Account
from carnet.kernel.errors import Conflict, Forbidden, InvalidInput, NotFound
from carnet.kernel.ids import new_id, parse_id
from carnet.runtime import Runtime

RESOURCE = "ExportRequest"
PURPOSE_MIN = 10
PURPOSE_MAX = 1000
PATIENT_LIST_MAX = 1000
# A pending request waits this long for a decision; an approved one is usable this long, once.
DECISION_WINDOW = dt.timedelta(hours=72)
USE_WINDOW = dt.timedelta(hours=24)


class ExportScope(StrEnum):
    CARE = "care"  # the requester's own care population
    PATIENTS = "patients"  # an explicit list of patient ids
    FACILITY = "facility"  # the requester's facility (still filtered by the policy)


class ExportStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    USED = "used"


class ExportRequestView(BaseModel):
    """A request's metadata (ids, purpose, dates): no patient data."""

    id: str
    requested_by: str
    facility_id: str
    purpose: str
    scope: ExportScope
    patient_count: int | None
    status: ExportStatus
    requested_at: dt.datetime
    expires_at: dt.datetime
    decided_by: str | None
    decided_at: dt.datetime | None
    decision_note: str | None
    used_at: dt.datetime | None
    exported_count: int | None


def status_of(row: ExportRequest, now: dt.datetime) -> ExportStatus:
    """The stored status, or `expired` once a pending or approved request has run out of time."""
    status = ExportStatus(row.status)
    if status in (ExportStatus.PENDING, ExportStatus.APPROVED) and now >= row.expires_at:
        return ExportStatus.EXPIRED
    return status


def listed_patients(row: ExportRequest) -> list[uuid.UUID]:
    """The patient ids of a `patients` scope (empty for the other scopes)."""
    return [uuid.UUID(p) for p in json.loads(row.patient_ids or "[]")]


def to_view(row: ExportRequest, now: dt.datetime) -> ExportRequestView:
    return ExportRequestView(
        id=str(row.id),
        requested_by=str(row.requested_by),
        facility_id=str(row.facility_id),
        purpose=row.purpose,
        scope=ExportScope(row.scope),
        patient_count=len(listed_patients(row)) if row.scope == ExportScope.PATIENTS else None,
        status=status_of(row, now),
        requested_at=row.requested_at,
        expires_at=row.expires_at,
        decided_by=str(row.decided_by) if row.decided_by else None,
        decided_at=row.decided_at,
        decision_note=row.decision_note,
        used_at=row.used_at,
        exported_count=row.exported_count,
    )


def _record(kind: AuditKind, actor: Actor, row: ExportRequest) -> AuditRecord:
    return AuditRecord(
        kind=kind,
        outcome=Outcome.SUCCESS,
        actor=actor,
        resource_type=RESOURCE,
        resource_ids=[str(row.id)],
        policy_reason=f"scope {row.scope}",
    )


def request_export(
    runtime: Runtime,
    *,
    actor: Actor,
    purpose: str,
    scope: ExportScope | str,
    patient_ids: Sequence[str] = (),
) -> ExportRequestView:
    """A staff member asks to export patients of their acting facility, saying why."""

    def action(session: Session, ctx: AccessContext) -> tuple[ExportRequestView, AuditRecord]:
        if not ctx.may(Permission.EXPORT_REQUEST) or ctx.account_id is None:
            raise Forbidden("this account may not request an export")
        if actor.scopes is not None:
            raise Forbidden("an export is requested from a staff session, not with an access token")
        if ctx.acting_facility_id is None:
            raise Forbidden("an export request needs an acting facility")
        try:
            kind = ExportScope(scope)
        except ValueError:
            raise InvalidInput(f"scope must be one of: {', '.join(s.value for s in ExportScope)}") from None
        text = purpose.strip()
        if not PURPOSE_MIN <= len(text) <= PURPOSE_MAX:
            raise InvalidInput(f"an export needs a purpose of {PURPOSE_MIN} to {PURPOSE_MAX} characters")
        listed: list[str] | None = None
        if kind == ExportScope.PATIENTS:
            parsed = [parse_id(p) for p in patient_ids]
            if any(p is None for p in parsed):
                raise InvalidInput("patient ids must be resource ids")
            listed = sorted({str(p) for p in parsed})
            if not 1 <= len(listed) <= PATIENT_LIST_MAX:
                raise InvalidInput(f"a patient list holds 1 to {PATIENT_LIST_MAX} patients")
        elif patient_ids:
            raise InvalidInput("patient ids go with the scope 'patients' only")
        row = ExportRequest(
            id=new_id(),
            requested_by=ctx.account_id,
            facility_id=ctx.acting_facility_id,
            purpose=text,
            scope=kind.value,
            patient_ids=json.dumps(listed) if listed is not None else None,
            status=ExportStatus.PENDING.value,
            requested_at=ctx.now,
            expires_at=ctx.now + DECISION_WINDOW,
        )
        session.add(row)
        session.flush()
        return to_view(row, ctx.now), _record(AuditKind.PHI_EXPORT_REQUESTED, actor, row)

    return run_audited(runtime, actor, AuditKind.PHI_EXPORT_REQUESTED, action, resource_type=RESOURCE)


LIST_LIMIT = 200


class ExportQueue(BaseModel):
    requests: list[ExportRequestView]
    usernames: dict[str, str]  # account id -> username, for who asked and who decided


def list_export_requests(runtime: Runtime, *, actor: Actor, pending_only: bool = True) -> ExportQueue:
    """The export requests a security officer may decide (their facilities, or all for an
    officer without a facility), newest first: pending ones, or also the decided and used."""

    def action(session: Session, ctx: AccessContext) -> tuple[ExportQueue, AuditRecord]:
        if not ctx.may(Permission.EXPORT_DECIDE):
            raise Forbidden("only a security officer sees the export requests")
        query = select(ExportRequest).order_by(ExportRequest.requested_at.desc()).limit(LIST_LIMIT)
        if Role.SECURITY_OFFICER not in ctx.unscoped_roles:
            query = query.where(ExportRequest.facility_id.in_(ctx.facility_ids))
        if pending_only:
            query = query.where(ExportRequest.status == ExportStatus.PENDING.value)
        views = [to_view(row, ctx.now) for row in session.scalars(query)]
        if pending_only:
            views = [v for v in views if v.status == ExportStatus.PENDING]  # not the expired
        record = AuditRecord(
            kind=AuditKind.PHI_EXPORT_LISTED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            resource_type=RESOURCE,
            resource_ids=[v.id for v in views][:200],
            detail={"pending_only": str(pending_only).lower()},
        )
        ids = {uuid.UUID(v.requested_by) for v in views} | {
            uuid.UUID(v.decided_by) for v in views if v.decided_by
        }
        names = dict(session.execute(select(Account.id, Account.username).where(Account.id.in_(ids))).all())
        usernames = {str(k): str(v) for k, v in names.items()}
        return ExportQueue(requests=views, usernames=usernames), record

    return run_audited(runtime, actor, AuditKind.PHI_EXPORT_LISTED, action, resource_type=RESOURCE)


def _decidable(session: Session, ctx: AccessContext, export_id: str) -> ExportRequest:
    if not ctx.may(Permission.EXPORT_DECIDE) or ctx.account_id is None:
        raise Forbidden("only a security officer decides on an export")
    if ctx.actor.scopes is not None:
        raise Forbidden("an export is decided from a staff session, not with an access token")
    row_id = parse_id(export_id)
    row = session.get(ExportRequest, row_id, with_for_update=True) if row_id else None
    if row is None:
        raise NotFound("no such export request")
    in_scope = Role.SECURITY_OFFICER in ctx.unscoped_roles or row.facility_id in ctx.facility_ids
    if not in_scope:
        raise NotFound("no such export request")  # another facility's: as if missing
    if row.requested_by == ctx.account_id:
        raise Forbidden("nobody approves their own export: a second person must")
    status = status_of(row, ctx.now)
    if status != ExportStatus.PENDING:
        raise Conflict(f"this export request is {status.value}, not pending")
    return row


def approve_export(runtime: Runtime, *, actor: Actor, export_id: str, note: str = "") -> ExportRequestView:
    """A second person (a security officer) approves: usable once, within USE_WINDOW."""

    def action(session: Session, ctx: AccessContext) -> tuple[ExportRequestView, AuditRecord]:
        row = _decidable(session, ctx, export_id)
        row.status = ExportStatus.APPROVED.value
        row.decided_by = ctx.account_id
        row.decided_at = ctx.now
        row.decision_note = note.strip()[:1000] or None
        row.expires_at = ctx.now + USE_WINDOW
        session.flush()
        return to_view(row, ctx.now), _record(AuditKind.PHI_EXPORT_APPROVED, actor, row)

    return run_audited(runtime, actor, AuditKind.PHI_EXPORT_APPROVED, action, resource_type=RESOURCE)


def reject_export(runtime: Runtime, *, actor: Actor, export_id: str, note: str) -> ExportRequestView:
    """A security officer refuses, saying why."""

    def action(session: Session, ctx: AccessContext) -> tuple[ExportRequestView, AuditRecord]:
        row = _decidable(session, ctx, export_id)
        text = note.strip()
        if len(text) < 4:
            raise InvalidInput("a rejection needs a note")
        row.status = ExportStatus.REJECTED.value
        row.decided_by = ctx.account_id
        row.decided_at = ctx.now
        row.decision_note = text[:1000]
        session.flush()
        return to_view(row, ctx.now), _record(AuditKind.PHI_EXPORT_REJECTED, actor, row)

    return run_audited(runtime, actor, AuditKind.PHI_EXPORT_REJECTED, action, resource_type=RESOURCE)
