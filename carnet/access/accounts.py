"""An administrator opens a staff account: the account itself, and its first role as a grant
that waits for a second administrator (the two-person rule of carnet.access.grants).

The new account holds no role until that approval, so it reads nothing. Its first password and
authenticator secret are generated here and shown once, for the administrator to hand over in
person; carnet stores only the password's hash and the secret wrapped by the key provider.
"""

from __future__ import annotations

import base64
import secrets
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
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity import service, totp
from carnet.identity.models import Account
from carnet.kernel.errors import Forbidden, InvalidInput
from carnet.kernel.ids import parse_id
from carnet.org.models import Facility, Practitioner
from carnet.runtime import Runtime

RESOURCE = "Account"
# Roles an administrator may ask for when opening an account (never a patient or API client).
STAFF_ROLES = tuple(r for r in Role if r not in (Role.PATIENT, Role.API_CLIENT, Role.INTERFACE))


@dataclass(frozen=True)
class NewAccount:
    """What the administrator hands over once: never stored in clear, never shown again."""

    account_id: str
    username: str
    initial_password: str
    totp_secret: str
    otpauth_uri: str
    grant: RoleGrantView


def first_password() -> str:
    # 100 bits, in groups that read aloud and type easily (base32: no 0/O or 1/l confusion).
    raw = base64.b32encode(secrets.token_bytes(15)).decode().lower()
    return "-".join(raw[i : i + 6] for i in range(0, 24, 6))


def create_staff_account(
    runtime: Runtime,
    *,
    actor: Actor,
    username: str,
    display_name: str,
    role: Role | str,
    facility_id: str | None,
    reason: str,
    practitioner_id: str | None = None,
) -> NewAccount:
    """Open a staff account and ask for its first role (pending until a second administrator
    approves it). The account creation and the grant request are audited in one transaction."""

    def action(session: Session, ctx: AccessContext) -> tuple[NewAccount, AuditRecord]:
        if not ctx.may(Permission.ROLE_GRANT_REQUEST) or ctx.account_id is None:
            raise Forbidden("only an administrator opens accounts")
        try:
            wanted = Role(role)
        except ValueError:
            raise InvalidInput("unknown role") from None
        if wanted not in STAFF_ROLES:
            raise InvalidInput("a staff account gets a staff role")
        name = display_name.strip()
        if not 2 <= len(name) <= 200:
            raise InvalidInput("the name is 2 to 200 characters")
        text = reason.strip()
        if len(text) < 4:
            raise InvalidInput("a role grant needs a stated reason")
        facility = None
        if facility_id:
            fid = parse_id(facility_id)
            facility = session.get(Facility, fid) if fid else None
            if facility is None:
                raise InvalidInput("unknown facility")
        elif wanted not in (Role.SYSTEM_ADMINISTRATOR, Role.SECURITY_OFFICER):
            raise InvalidInput("this role is granted at a facility")
        practitioner = None
        if practitioner_id:
            pid = parse_id(practitioner_id)
            practitioner = session.get(Practitioner, pid) if pid else None
            if practitioner is None or facility is None or practitioner.facility_id != facility.id:
                raise InvalidInput("unknown practitioner at this facility")
            taken = select(Account.id).where(Account.practitioner_id == practitioner.id)
            if session.scalar(taken) is not None:
                raise InvalidInput("this practitioner already has an account")
        password = first_password()
        secret = totp.new_secret()
        account_id = service.create_account(
            session,
            username=username,
            display_name=name,
            kind="staff",
            password=password,
            facility_id=facility.id if facility else None,
            practitioner_id=practitioner.id if practitioner else None,
            totp_secret=secret,
            audit=runtime.audit,
            created_by=actor,
            handover=True,  # the administrator sees both: the owner replaces them first
        )
        grant = RoleGrant(
            id=uuid.uuid4(),
            account_id=account_id,
            role=wanted.value,
            facility_id=facility.id if facility and wanted != Role.SYSTEM_ADMINISTRATOR else None,
            status="pending",
            requested_by=ctx.account_id,
            requested_at=ctx.now,
            reason=text[:500],
        )
        session.add(grant)
        session.flush()
        created = NewAccount(
            account_id=str(account_id),
            username=username.strip(),
            initial_password=password,
            totp_secret=secret,
            otpauth_uri=totp.provisioning_uri(secret, username=username.strip()),
            grant=_view(grant),
        )
        record = AuditRecord(
            kind=AuditKind.ROLE_GRANT_REQUESTED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            resource_type="RoleGrant",
            resource_ids=[str(grant.id)],
            detail={"account_id": str(account_id), "role": wanted.value, "new_account": "true"},
        )
        return created, record

    return run_audited(runtime, actor, AuditKind.ACCOUNT_CREATED, action, resource_type=RESOURCE)
