"""Is the actor usable, and with which effective roles and facilities?

The Actor comes from identity (a session or a token); the database has the last word: a
suspended account is refused at once, and a role counts only while its grant is active.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Uuid, and_, bindparam, select
from sqlalchemy.orm import Session

from carnet.access.actor import Actor, ActorKind
from carnet.access.models import RoleGrant
from carnet.access.permissions import Permission, permissions_of
from carnet.access.roles import Role
from carnet.access.scopes import permissions_for
from carnet.identity.models import Account
from carnet.kernel.errors import AccountContained, AuthenticationRequired


@dataclass(frozen=True)
class AccessContext:
    """The actor as the policy sees it, resolved against the database for one transaction."""

    actor: Actor
    roles: frozenset[Role]
    permissions: frozenset[Permission]
    facility_ids: frozenset[uuid.UUID]
    acting_facility_id: uuid.UUID | None
    account_id: uuid.UUID | None
    practitioner_id: uuid.UUID | None
    patient_id: uuid.UUID | None
    now: dt.datetime
    # Roles granted without a facility (an organisation-wide security officer, say). They open
    # no patient data: the facility scope above is what the gate uses.
    unscoped_roles: frozenset[Role] = frozenset()
    # An app token's launch patient: no other patient is visible in this transaction.
    compartment: uuid.UUID | None = None

    def may(self, permission: Permission) -> bool:
        return permission in self.permissions


_ACCOUNTS = Account.__table__.c
_GRANTS = RoleGrant.__table__.c
# Core, not ORM: plain rows, no identity map or change tracking for what is only read.
ACCOUNT_AND_GRANTS = (
    select(
        _ACCOUNTS.id,
        _ACCOUNTS.status,
        _ACCOUNTS.kind,
        _ACCOUNTS.facility_id,
        _ACCOUNTS.practitioner_id,
        _ACCOUNTS.patient_id,
        _GRANTS.role,
        _GRANTS.facility_id.label("grant_facility_id"),
    )
    .select_from(
        Account.__table__.outerjoin(
            RoleGrant.__table__, and_(_GRANTS.account_id == _ACCOUNTS.id, _GRANTS.status == "active")
        )
    )
    .where(_ACCOUNTS.id == bindparam("account_id", type_=Uuid()))
)


def resolve(session: Session, actor: Actor, *, now: dt.datetime, contact: str = "") -> AccessContext:
    """Check the actor is usable; raise AuthenticationRequired / AccountContained otherwise."""
    if actor.kind == ActorKind.SYSTEM:
        raise AuthenticationRequired("the system identity acts only through the system door")
    if actor.kind == ActorKind.CLIENT:
        # A client acting for itself: its roles come from its registration (no account row).
        roles = frozenset(actor.roles & {Role.API_CLIENT})
        scope = frozenset({actor.facility_id}) if actor.facility_id else frozenset()
        # What its role allows, narrowed to what its token's scopes name.
        held = permissions_of(roles) & permissions_for(actor.scopes or ())
        return AccessContext(actor, roles, held, scope, actor.facility_id, None, None, None, now)
    if actor.account_id is None:
        raise AuthenticationRequired("no account behind this session")
    # The account and its active grants in one round trip (this runs on every gate request).
    rows = session.connection().execute(ACCOUNT_AND_GRANTS, {"account_id": actor.account_id}).all()
    return from_rows(actor, rows, now=now, contact=contact)


def from_rows(actor: Actor, rows: Sequence[Any], *, now: dt.datetime, contact: str = "") -> AccessContext:
    """`resolve`'s judgment of the rows of `ACCOUNT_AND_GRANTS` (the gate's fast read fetches
    them in its own round trip and judges them here: one judgment for both paths)."""
    account = rows[0] if rows else None
    if account is None or account.status == "disabled":
        raise AuthenticationRequired("this account cannot be used")
    if account.status == "suspended":
        raise AccountContained(f"this account is suspended: contact {contact or 'the security office'}")
    if account.status != "active":
        raise AuthenticationRequired("this account cannot be used")
    if actor.kind == ActorKind.PATIENT:
        if account.kind != "patient" or account.patient_id is None or account.patient_id != actor.patient_id:
            raise AuthenticationRequired("this session does not belong to a patient account")
        roles = frozenset(actor.roles & {Role.PATIENT})
        # The patient's facility is filled in by the gate (it alone reads the patient table).
        return AccessContext(
            actor,
            roles,
            permissions_of(roles),
            frozenset(),
            None,
            account.id,
            None,
            account.patient_id,
            now,
            compartment=actor.compartment_patient_id,
        )
    # An HL7 v2 interface has an account of its own kind (carnet.interfaces): a staff session
    # cannot act as one, nor an interface as staff.
    expected = "interface" if actor.kind == ActorKind.INTERFACE else "staff"
    if account.kind != expected:
        raise AuthenticationRequired(f"this session does not belong to a {expected} account")
    granted: set[Role] = set()
    facilities: set[uuid.UUID] = set()
    unscoped: set[Role] = set()
    for grant in rows:
        if grant.role is None:
            continue  # the outer join's row of an account with no active grant
        try:
            role = Role(grant.role)
        except ValueError:
            continue
        if role not in actor.roles:
            continue  # the session did not claim it (or lost it): it does not count
        granted.add(role)
        if grant.grant_facility_id is not None:
            facilities.add(grant.grant_facility_id)
        else:
            unscoped.add(role)
    roles = frozenset(granted)
    acting = actor.facility_id if actor.facility_id in facilities else None
    if acting is None and account.facility_id in facilities:
        acting = account.facility_id
    return AccessContext(
        actor=actor,
        roles=roles,
        permissions=permissions_of(roles),
        facility_ids=frozenset(facilities),
        acting_facility_id=acting,
        account_id=account.id,
        practitioner_id=account.practitioner_id,
        patient_id=None,
        now=now,
        unscoped_roles=frozenset(unscoped),
        compartment=actor.compartment_patient_id,
    )
