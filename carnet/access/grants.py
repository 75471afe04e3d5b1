"""Role grants under the two-person rule.

A system administrator requests a grant; a DIFFERENT system administrator approves or rejects
it. Nobody approves a grant they requested or one made out to themselves, and a grant does
nothing (carnet.access.context ignores it) until it is active. Every step is audited.
"""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.access.audited import run_audited
from carnet.access.context import AccessContext
from carnet.access.models import RoleGrant
from carnet.access.permissions import Permission
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity.models import Account
from carnet.kernel.errors import Conflict, Forbidden, InvalidInput, NotFound
from carnet.kernel.ids import parse_id
from carnet.org.models import Facility
from carnet.runtime import Runtime

RESOURCE = "RoleGrant"


class RoleGrantView(BaseModel):
    id: str
    account_id: str
    role: str
    facility_id: str | None
    status: str
    requested_by: str | None
    requested_at: dt.datetime
    approved_by: str | None
    decided_at: dt.datetime | None
    reason: str | None


def _view(grant: RoleGrant) -> RoleGrantView:
    return RoleGrantView(
        id=str(grant.id),
        account_id=str(grant.account_id),
        role=grant.role,
        facility_id=str(grant.facility_id) if grant.facility_id else None,
        status=grant.status,
        requested_by=str(grant.requested_by) if grant.requested_by else None,
        requested_at=grant.requested_at,
        approved_by=str(grant.approved_by) if grant.approved_by else None,
        decided_at=grant.decided_at,
        reason=grant.reason,
    )


def _require(ctx: AccessContext, permission: Permission) -> None:
    if not ctx.may(permission):
        raise Forbidden("this account may not manage role grants")


def _record(kind: AuditKind, actor: Actor, grant: RoleGrant, **detail: str) -> AuditRecord:
    return AuditRecord(
        kind=kind,
        outcome=Outcome.SUCCESS,
        actor=actor,
        resource_type=RESOURCE,
        resource_ids=[str(grant.id)],
        detail={"account_id": str(grant.account_id), "role": grant.role, **detail},
    )


def request_role_grant(
    runtime: Runtime,
    *,
    actor: Actor,
    account_id: str,
    role: Role | str,
    facility_id: str | None,
    reason: str,
) -> RoleGrantView:
    """Ask for `role` at a facility for an account. The grant stays pending until approved."""

    def action(session: Session, ctx: AccessContext) -> tuple[RoleGrantView, AuditRecord]:
        _require(ctx, Permission.ROLE_GRANT_REQUEST)
        try:
            wanted = Role(role)
        except ValueError:
            raise InvalidInput("unknown role") from None
        account_uuid = parse_id(account_id)
        account = session.get(Account, account_uuid) if account_uuid else None
        if account is None:
            raise InvalidInput("unknown account")
        facility_uuid = None
        if facility_id is not None:
            facility_uuid = parse_id(facility_id)
            if facility_uuid is None or session.get(Facility, facility_uuid) is None:
                raise InvalidInput("unknown facility")
        elif wanted not in (Role.SYSTEM_ADMINISTRATOR, Role.SECURITY_OFFICER):
            raise InvalidInput("this role is granted at a facility")
        text = reason.strip()
        if len(text) < 4:
            raise InvalidInput("a role grant needs a stated reason")
        grant = RoleGrant(
            id=uuid.uuid4(),
            account_id=account.id,
            role=wanted.value,
            facility_id=facility_uuid,
            status="pending",
            requested_by=ctx.account_id,
            requested_at=ctx.now,
            reason=text[:500],
        )
        session.add(grant)
        session.flush()
        return _view(grant), _record(AuditKind.ROLE_GRANT_REQUESTED, actor, grant)

    return run_audited(runtime, actor, AuditKind.ROLE_GRANT_REQUESTED, action, resource_type=RESOURCE)


def _pending(session: Session, ctx: AccessContext, grant_id: str) -> RoleGrant:
    _require(ctx, Permission.ROLE_GRANT_DECIDE)
    grant_uuid = parse_id(grant_id)
    grant = session.get(RoleGrant, grant_uuid, with_for_update=True) if grant_uuid else None
    if grant is None:
        raise NotFound("no such role grant")
    if grant.status != "pending":
        raise Conflict("this role grant was already decided")
    # The two-person rule: the second person is neither the requester nor the grantee.
    if ctx.account_id in (grant.requested_by, grant.account_id):
        raise Forbidden("a role grant needs a second administrator: you cannot decide this one")
    return grant


def approve_role_grant(runtime: Runtime, *, actor: Actor, grant_id: str) -> RoleGrantView:
    """Approve a pending grant as the second administrator: only now does the role count."""

    def action(session: Session, ctx: AccessContext) -> tuple[RoleGrantView, AuditRecord]:
        grant = _pending(session, ctx, grant_id)
        grant.status = "active"
        grant.approved_by = ctx.account_id
        grant.decided_at = ctx.now
        session.flush()
        return _view(grant), _record(AuditKind.ROLE_GRANT_APPROVED, actor, grant)

    return run_audited(runtime, actor, AuditKind.ROLE_GRANT_APPROVED, action, resource_type=RESOURCE)


def reject_role_grant(runtime: Runtime, *, actor: Actor, grant_id: str, reason: str) -> RoleGrantView:
    """Reject a pending grant (the second administrator's other answer)."""

    def action(session: Session, ctx: AccessContext) -> tuple[RoleGrantView, AuditRecord]:
        grant = _pending(session, ctx, grant_id)
        grant.status = "rejected"
        grant.approved_by = ctx.account_id
        grant.decided_at = ctx.now
        session.flush()
        return _view(grant), _record(AuditKind.ROLE_GRANT_REJECTED, actor, grant, reason=reason.strip()[:200])

    return run_audited(runtime, actor, AuditKind.ROLE_GRANT_REJECTED, action, resource_type=RESOURCE)


def revoke_role_grant(runtime: Runtime, *, actor: Actor, grant_id: str, reason: str) -> RoleGrantView:
    """Revoke an active grant at once (one administrator suffices to take a right away)."""

    def action(session: Session, ctx: AccessContext) -> tuple[RoleGrantView, AuditRecord]:
        _require(ctx, Permission.ROLE_GRANT_DECIDE)
        grant_uuid = parse_id(grant_id)
        grant = session.get(RoleGrant, grant_uuid) if grant_uuid else None
        if grant is None:
            raise NotFound("no such role grant")
        if grant.status != "active":
            raise Conflict("only an active role grant can be revoked")
        grant.status = "revoked"
        grant.decided_at = ctx.now
        session.flush()
        return _view(grant), _record(AuditKind.ROLE_REVOKED, actor, grant, reason=reason.strip()[:200])

    return run_audited(runtime, actor, AuditKind.ROLE_REVOKED, action, resource_type=RESOURCE)
