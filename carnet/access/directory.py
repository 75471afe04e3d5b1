"""What administrators list: accounts with their roles, facilities, and role grants by status.

No patient data: an account row says who works here, never whom they treat. Administrators
only (the role-grant permissions); every listing is audited, refusals included.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.access.audited import run_audited
from carnet.access.context import AccessContext
from carnet.access.grants import RoleGrantView, _view
from carnet.access.models import RoleGrant
from carnet.access.permissions import Permission
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity.models import Account
from carnet.kernel.errors import Forbidden, InvalidInput
from carnet.org.models import Facility, Practitioner
from carnet.runtime import Runtime

LIST_LIMIT = 500
GRANT_STATUSES = ("pending", "active", "rejected", "revoked")


@dataclass(frozen=True)
class AccountRow:
    id: str
    username: str
    display_name: str
    kind: str
    status: str
    facility: str | None
    roles: tuple[str, ...]


@dataclass(frozen=True)
class FacilityRow:
    id: str
    name: str
    city: str


@dataclass(frozen=True)
class Directory:
    accounts: list[AccountRow]
    facilities: list[FacilityRow]
    grants: list[RoleGrantView]


def _require(ctx: AccessContext) -> None:
    if not ctx.may(Permission.ROLE_GRANT_REQUEST):
        raise Forbidden("only an administrator lists accounts and role grants")


def list_directory(runtime: Runtime, *, actor: Actor, grant_status: str = "pending") -> Directory:
    """Staff accounts (with their active roles), facilities, and role grants of one status."""
    if grant_status not in GRANT_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(GRANT_STATUSES)}")

    def action(session: Session, ctx: AccessContext) -> tuple[Directory, AuditRecord]:
        _require(ctx)
        # Plain rows, not ORM objects: a thousand tracked instances per request made the
        # garbage collector's full passes (and the p95) the page's main cost.
        listed = (
            select(Account.id)
            .where(Account.kind == "staff")
            .order_by(Account.username)
            .limit(LIST_LIMIT)
            .scalar_subquery()
        )
        accounts = session.execute(
            select(
                Account.id,
                Account.username,
                Account.display_name,
                Account.kind,
                Account.status,
                Account.facility_id,
            )
            .where(Account.kind == "staff")
            .order_by(Account.username)
            .limit(LIST_LIMIT)
        ).all()
        facilities = {
            f.id: f
            for f in session.execute(
                select(Facility.id, Facility.name, Facility.city).order_by(Facility.name)
            )
        }
        roles: dict[uuid.UUID, list[str]] = {}
        for account_id, role in session.execute(
            select(RoleGrant.account_id, RoleGrant.role).where(
                RoleGrant.status == "active", RoleGrant.account_id.in_(listed)
            )
        ):
            roles.setdefault(account_id, []).append(role)
        grants = [
            _view(g)
            for g in session.scalars(
                select(RoleGrant)
                .where(RoleGrant.status == grant_status)
                .order_by(RoleGrant.requested_at.desc())
                .limit(LIST_LIMIT)
            )
        ]
        directory = Directory(
            accounts=[
                AccountRow(
                    id=str(a.id),
                    username=a.username,
                    display_name=a.display_name,
                    kind=a.kind,
                    status=a.status,
                    facility=facilities[a.facility_id].name if a.facility_id in facilities else None,
                    roles=tuple(sorted(roles.get(a.id, []))),
                )
                for a in accounts
            ],
            facilities=[FacilityRow(str(f.id), f.name, f.city) for f in facilities.values()],
            grants=grants,
        )
        record = AuditRecord(
            kind=AuditKind.ACCOUNTS_LISTED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            resource_type="Account",
            resource_ids=[a.id for a in directory.accounts][:200],
            detail={"grants": grant_status},
        )
        return directory, record

    return run_audited(runtime, actor, AuditKind.ACCOUNTS_LISTED, action, resource_type="Account")


@dataclass(frozen=True)
class PractitionerRow:
    id: str
    name: str
    profession: str


def list_practitioners(runtime: Runtime, *, actor: Actor) -> list[PractitionerRow]:
    """The practitioners of the actor's facility, for booking (a staff directory, no patient data)."""
    if actor.facility_id is None or actor.patient_id is not None:
        raise Forbidden("the practitioner directory is for a facility's staff")
    with runtime.session_factory() as session:
        rows = session.scalars(
            select(Practitioner)
            .where(Practitioner.facility_id == actor.facility_id)
            .order_by(Practitioner.family, Practitioner.given)
            .limit(LIST_LIMIT)
        )
        return [PractitionerRow(str(p.id), f"{p.family} {p.given}", p.profession) for p in rows]
