"""Break-the-glass review: every emergency access, listed for security officers.

Starting one reads a patient, so it is a gate operation (carnet.phi.gate.Gate.break_glass);
listing and reviewing them needs no patient data, so it lives here.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel
from sqlalchemy import ColumnElement, select, true
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.access.audited import run_audited
from carnet.access.context import AccessContext
from carnet.access.models import BreakGlassAccess
from carnet.access.permissions import Permission
from carnet.access.roles import Role
from carnet.access.scope import ALL_FACILITIES, enter_scope
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.kernel.errors import Forbidden, InvalidInput, NotFound
from carnet.kernel.ids import parse_id
from carnet.runtime import Runtime

RESOURCE = "BreakGlassAccess"
LIST_LIMIT = 500


class BreakGlassView(BaseModel):
    """Audit metadata of one emergency access: who, which patient id, why, when. No chart data."""

    id: str
    account_id: str
    patient_id: str
    facility_id: str
    reason_code: str
    justification: str
    started_at: dt.datetime
    expires_at: dt.datetime
    ended_at: dt.datetime | None
    alert_state: str
    reviewed_by: str | None
    reviewed_at: dt.datetime | None
    review_note: str | None


def to_view(row: BreakGlassAccess) -> BreakGlassView:
    return BreakGlassView(
        id=str(row.id),
        account_id=str(row.account_id),
        patient_id=str(row.patient_id),
        facility_id=str(row.facility_id),
        reason_code=row.reason_code,
        justification=row.justification,
        started_at=row.started_at,
        expires_at=row.expires_at,
        ended_at=row.ended_at,
        alert_state=row.alert_state,
        reviewed_by=str(row.reviewed_by) if row.reviewed_by else None,
        reviewed_at=row.reviewed_at,
        review_note=row.review_note,
    )


def _require_reviewer(session: Session, ctx: AccessContext) -> ColumnElement[bool]:
    """Refuse anyone but a security officer; return the SQL filter of the facilities reviewed."""
    if not ctx.may(Permission.BREAK_GLASS_REVIEW):
        raise Forbidden("only a security officer reviews break-the-glass accesses")
    if Role.SECURITY_OFFICER in ctx.unscoped_roles:
        # An organisation-wide officer reviews every facility (metadata only, no chart data).
        enter_scope(session, ALL_FACILITIES)
        return true()
    enter_scope(session, ctx.facility_ids)
    return BreakGlassAccess.facility_id.in_(ctx.facility_ids)


def list_break_glass(
    runtime: Runtime, *, actor: Actor, since: dt.datetime | None = None, unreviewed_only: bool = False
) -> list[BreakGlassView]:
    """Break-the-glass accesses in the officer's facilities, newest first."""

    def action(session: Session, ctx: AccessContext) -> tuple[list[BreakGlassView], AuditRecord]:
        reviewed = _require_reviewer(session, ctx)
        query = (
            select(BreakGlassAccess)
            .where(reviewed)
            .order_by(BreakGlassAccess.started_at.desc())
            .limit(LIST_LIMIT)
        )
        if since is not None:
            query = query.where(BreakGlassAccess.started_at >= since)
        if unreviewed_only:
            query = query.where(BreakGlassAccess.reviewed_at.is_(None))
        rows = [to_view(r) for r in session.scalars(query)]
        record = AuditRecord(
            kind=AuditKind.BREAK_GLASS_LISTED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            resource_type=RESOURCE,
            resource_ids=[r.id for r in rows],
        )
        return rows, record

    return run_audited(runtime, actor, AuditKind.BREAK_GLASS_LISTED, action, resource_type=RESOURCE)


def review_break_glass(runtime: Runtime, *, actor: Actor, access_id: str, note: str) -> BreakGlassView:
    """A security officer records the outcome of reviewing one emergency access."""

    def action(session: Session, ctx: AccessContext) -> tuple[BreakGlassView, AuditRecord]:
        reviewed = _require_reviewer(session, ctx)
        text = note.strip()
        if len(text) < 4:
            raise InvalidInput("a review needs a note")
        row_id = parse_id(access_id)
        row = (
            session.scalars(select(BreakGlassAccess).where(BreakGlassAccess.id == row_id, reviewed)).first()
            if row_id
            else None
        )
        if row is None:
            raise NotFound("no such break-the-glass access")
        row.reviewed_by = ctx.account_id
        row.reviewed_at = ctx.now
        row.review_note = text[:1000]
        session.flush()
        record = AuditRecord(
            kind=AuditKind.BREAK_GLASS_REVIEWED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            resource_type=RESOURCE,
            resource_ids=[str(row.id)],
        )
        return to_view(row), record

    return run_audited(runtime, actor, AuditKind.BREAK_GLASS_REVIEWED, action, resource_type=RESOURCE)


def take_pending_alerts(session: Session, *, limit: int = 100) -> list[BreakGlassView]:
    """For carnet.detection: the break-the-glass accesses not yet alerted, marked `alerted` in
    the caller's transaction (commit after raising the alerts). The table is behind row-level
    security: call it in a transaction with a declared scope (e.g. the system door)."""
    rows = list(
        session.scalars(
            select(BreakGlassAccess)
            .where(BreakGlassAccess.alert_state == "pending")
            .order_by(BreakGlassAccess.started_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for row in rows:
        row.alert_state = "alerted"
    session.flush()
    return [to_view(r) for r in rows]
