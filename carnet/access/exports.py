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

from carnet.access.actor import Actor, ActorKind
from carnet.access.audited import run_audited
from carnet.access.context import AccessContext
from carnet.access.models import ExportRequest
from carnet.access.permissions import Permission
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity.models import Account, ApiClient
from carnet.kernel.errors import Conflict, Forbidden, InvalidInput, NotFound
from carnet.kernel.ids import new_id, parse_id
from carnet.runtime import Runtime

RESOURCE = "ExportRequest"
PURPOSE_MIN = 10
PURPOSE_MAX = 1000
PATIENT_LIST_MAX = 1000
# A pending request waits this long for a decision; an approved one is usable this long, once.
DECISION_WINDOW = dt.timedelta(hours=72)
# What a person's standard kick-off that states no purpose records: the approver must ask and
# write the purpose in the decision note before approving (`approve_export`).
NO_PURPOSE = "(no purpose stated at the Bulk Data kick-off: the approver records it)"
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
    requested_by: str  # an account id, or `client:<client id>`
    facility_id: str
    purpose: str
    purpose_missing: bool = False
    resource_types: list[str] = ["Patient"]
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


def requester_ref(row: ExportRequest) -> str:
    """Who asked: the account id, or `client:<client id>` for a Backend Services client."""
    return str(row.requested_by) if row.requested_by is not None else f"client:{row.requested_by_client}"


def to_view(row: ExportRequest, now: dt.datetime) -> ExportRequestView:
    return ExportRequestView(
        id=str(row.id),
        requested_by=requester_ref(row),
        facility_id=str(row.facility_id),
        purpose=row.purpose,
        purpose_missing=bool(row.purpose_missing),
        resource_types=(row.resource_types or "Patient").split(),
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


def _client_purpose(session: Session, client_id: str | None) -> str:
    """The purpose of use a Backend Services client registered for its exports ('' if none)."""
    if client_id is None:
        return ""
    found = session.scalar(select(ApiClient.export_purpose).where(ApiClient.client_id == client_id))
    return (found or "").strip()


def _check_token(ctx: AccessContext) -> None:
    """A token asks for an export only as a Backend Services client acting for itself, with
    system/ scopes (`system/*.read`, `system/Patient.rs`...): an app acting for a person
    (user/ or patient/ scopes) does not."""
    actor = ctx.actor
    if actor.kind != ActorKind.CLIENT or actor.client_id is None:
        raise Forbidden("an export is requested from a staff session or by a Backend Services client")
    if not actor.scopes or not all(s.startswith("system/") for s in actor.scopes if "/" in s):
        raise Forbidden("a bulk export needs a token with system/ scopes (SMART Backend Services)")
    if not ctx.may(Permission.PATIENT_READ):
        raise Forbidden("a bulk export needs a token whose scopes read Patient (system/Patient.read)")


def request_export(
    runtime: Runtime,
    *,
    actor: Actor,
    purpose: str,
    scope: ExportScope | str,
    patient_ids: Sequence[str] = (),
    resource_types: Sequence[str] | None = None,
    purpose_optional: bool = False,
) -> ExportRequestView:
    """A staff member (or a Backend Services client) asks to export patients of their acting
    facility, saying why. With `purpose_optional` (a standard Bulk Data kick-off) a client that
    states none takes its registered purpose of use; a person who states none is asked to by
    the approver, who records it in the decision note."""

    def action(session: Session, ctx: AccessContext) -> tuple[ExportRequestView, AuditRecord]:
        if actor.scopes is not None:
            _check_token(ctx)
        elif not ctx.may(Permission.EXPORT_REQUEST) or ctx.account_id is None:
            raise Forbidden("this account may not request an export")
        if ctx.acting_facility_id is None:
            raise Forbidden("an export request needs an acting facility")
        try:
            kind = ExportScope(scope)
        except ValueError:
            raise InvalidInput(f"scope must be one of: {', '.join(s.value for s in ExportScope)}") from None
        text = purpose.strip() or (_client_purpose(session, actor.client_id) if purpose_optional else "")
        missing = False
        if not text and purpose_optional and actor.client_id is None:
            text, missing = NO_PURPOSE, True
        if not PURPOSE_MIN <= len(text) <= PURPOSE_MAX:
            hint = (
                " (give purpose=..., or register the client's purpose of use: carnet clients"
                " set-export-purpose)"
                if actor.client_id
                else ""
            )
            raise InvalidInput(
                f"an export needs a purpose of {PURPOSE_MIN} to {PURPOSE_MAX} characters{hint}"
            )
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
            requested_by_client=actor.client_id if ctx.account_id is None else None,
            facility_id=ctx.acting_facility_id,
            purpose=text,
            purpose_missing=missing,
            resource_types=" ".join(resource_types) if resource_types else None,
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
        ids = {uuid.UUID(v.requested_by) for v in views if not v.requested_by.startswith("client:")} | {
            uuid.UUID(v.decided_by) for v in views if v.decided_by
        }
        names = dict(session.execute(select(Account.id, Account.username).where(Account.id.in_(ids))).all())
        usernames = {str(k): str(v) for k, v in names.items()}
        usernames |= {v.requested_by: v.requested_by for v in views if v.requested_by.startswith("client:")}
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
        if row.purpose_missing and len(note.strip()) < PURPOSE_MIN:
            raise InvalidInput(
                "the requester stated no purpose: write it in the note (asked of them) before approving"
            )
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
