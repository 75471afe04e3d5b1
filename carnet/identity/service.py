"""Identity services: accounts, second factors, sessions. Keyword-only, plain verbs.

Every function takes the caller's SQLAlchemy session and never commits: the caller's transaction
holds the change and its audit event together.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.access.models import RoleGrant
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.crypto.keys import KeyProvider
from carnet.identity import passwords, totp
from carnet.identity.models import Account, AccountEvent, RecoveryCode, TotpDevice, WebAuthnCredential
from carnet.kernel import clock
from carnet.kernel.errors import ConfigurationError, Conflict, InvalidInput

AccountKind = Literal["staff", "patient"]
# An account an administrator opens (or a security officer restores) is on probation this long
# (carnet.identity.lifecycle).
PROBATION = dt.timedelta(days=7)

# Sessions opened by carnet.runtime carry the key provider here (TOTP secrets are wrapped by it).
KEYS_INFO = "carnet.key_provider"


def keys_of(session: Session, keys: KeyProvider | None = None) -> KeyProvider:
    provider = keys or session.info.get(KEYS_INFO)
    if provider is None:
        raise ConfigurationError("this database session has no key provider (use runtime.session_factory)")
    return provider


def record_event(
    session: Session,
    *,
    account_id: uuid.UUID,
    kind: AuditKind,
    outcome: Outcome = Outcome.SUCCESS,
    address: str | None = None,
    user_agent: str | None = None,
    detail: str | None = None,
) -> None:
    """Add a line to the account's security history (what its owner sees)."""
    session.add(
        AccountEvent(
            account_id=account_id,
            kind=kind.value,
            outcome=outcome.value,
            at=clock.now(),
            address=address,
            user_agent=(user_agent or "")[:300] or None,
            detail=(detail or "")[:300] or None,
        )
    )


def create_account(
    session: Session,
    *,
    username: str,
    display_name: str,
    kind: AccountKind,
    password: str,
    facility_id: uuid.UUID | None = None,
    practitioner_id: uuid.UUID | None = None,
    patient_id: uuid.UUID | None = None,
    totp_secret: str | None = None,
    check_password_policy: bool = True,
    keys: KeyProvider | None = None,
    audit: AuditWriter | None = None,
    created_by: Actor | None = None,
    account_id: uuid.UUID | None = None,
    handover: bool = False,
) -> uuid.UUID:
    """Create an account with an Argon2id password hash; returns its id.

    `handover` marks credentials someone else has seen (an administrator opening the account):
    its owner must replace the password and the second factor before doing anything else
    (carnet.identity.handover).

    `account_id` is for the seeder, whose accounts are the same on every run of a seed.

    With `totp_secret`, a confirmed TOTP device is stored (its secret wrapped by the KEK).
    Roles are not set here: they are RoleGrant rows (carnet.access). With `audit` and
    `created_by`, the creation is written to the audit chain in the caller's transaction.
    """
    username = username.strip()
    if not username or len(username) > 150:
        raise InvalidInput("a username is 1 to 150 characters")
    if kind not in ("staff", "patient"):
        raise InvalidInput("an account is of kind 'staff' or 'patient'")
    if kind == "patient" and practitioner_id is not None:
        raise InvalidInput("a patient account cannot be a practitioner")
    if kind == "staff" and patient_id is not None:
        raise InvalidInput("a staff account cannot be a patient's portal account")
    if check_password_policy:
        passwords.check_policy(password, context=(username, display_name))
    elif len(password) < passwords.MIN_LENGTH:
        # Even seeded accounts never get a short password.
        raise InvalidInput(f"the password must be at least {passwords.MIN_LENGTH} characters long")
    if session.scalar(select(Account.id).where(Account.username == username)) is not None:
        raise Conflict("this username is taken")
    now = clock.now()
    account = Account(
        **({"id": account_id} if account_id is not None else {}),
        username=username,
        display_name=display_name,
        kind=kind,
        facility_id=facility_id,
        practitioner_id=practitioner_id,
        patient_id=patient_id,
        password_hash=passwords.hash_password(password),
        status="active",
        created_at=now,
        password_changed_at=now,
        must_change_password=handover,
        must_replace_second_factor=handover,
        probation_ends_at=now + PROBATION if handover else None,
    )
    session.add(account)
    session.flush()
    record_event(session, account_id=account.id, kind=AuditKind.ACCOUNT_CREATED)
    if totp_secret is not None:
        add_totp_device(session, account_id=account.id, secret=totp_secret, confirmed=True, keys=keys)
    if audit is not None and created_by is not None:
        audit.append(
            session,
            AuditRecord(
                kind=AuditKind.ACCOUNT_CREATED,
                outcome=Outcome.SUCCESS,
                actor=created_by,
                resource_type="Account",
                resource_ids=(str(account.id),),
                detail={"handover": "true"} if handover else {},
            ),
        )
    return account.id


def add_totp_device(
    session: Session,
    *,
    account_id: uuid.UUID,
    secret: str,
    confirmed: bool,
    keys: KeyProvider | None = None,
) -> uuid.UUID:
    """Store a TOTP secret for an account; unconfirmed devices do not count until a code is shown."""
    try:
        totp.matching_step(secret, "000000", at=clock.now(), after_step=None)
    except Exception:
        raise InvalidInput("the TOTP secret is not valid base32") from None
    device_id = uuid.uuid4()
    kek_id, wrapped = totp.wrap_secret(keys_of(session, keys), device_id, secret)
    now = clock.now()
    session.add(
        TotpDevice(
            id=device_id,
            account_id=account_id,
            kek_id=kek_id,
            secret_wrapped=wrapped,
            created_at=now,
            confirmed_at=now if confirmed else None,
        )
    )
    session.flush()
    if confirmed:
        record_event(session, account_id=account_id, kind=AuditKind.MFA_ENROLLED, detail="totp")
    return device_id


def roles_of(session: Session, *, account: Account) -> frozenset[Role]:
    """An account's roles: its active RoleGrants (written by carnet.access), plus PATIENT for a
    patient's portal account. Unknown role names are ignored, never guessed."""
    names = session.scalars(
        select(RoleGrant.role).where(RoleGrant.account_id == account.id, RoleGrant.status == "active")
    ).all()
    return roles_named(account, names)


_ROLES_BY_NAME = {r.value: r for r in Role}  # built once: every request asks (Role is an Enum)


def roles_named(account: Account, names: Iterable[str]) -> frozenset[Role]:
    """`roles_of` for grant names the caller already read (active grants only)."""
    roles = {_ROLES_BY_NAME[n] for n in names if n in _ROLES_BY_NAME}
    if account.kind == "patient":
        roles = {Role.PATIENT}  # a portal account never holds staff roles
    return frozenset(roles)


def verify_totp(
    session: Session, *, account_id: uuid.UUID, code: str, keys: KeyProvider | None = None
) -> bool:
    """True when `code` is valid for one of the account's confirmed devices and not a replay."""
    provider = keys_of(session, keys)
    devices = session.scalars(
        select(TotpDevice).where(TotpDevice.account_id == account_id, TotpDevice.confirmed_at.is_not(None))
    ).all()
    now = clock.now()
    for device in devices:
        secret = totp.unwrap_secret(provider, device.id, device.kek_id, device.secret_wrapped)
        step = totp.matching_step(secret, code, at=now, after_step=device.last_used_step)
        if step is None:
            continue
        # Conditional update: two requests racing with one code cannot both win.
        won = session.execute(
            update(TotpDevice)
            .where(
                TotpDevice.id == device.id,
                or_(TotpDevice.last_used_step.is_(None), TotpDevice.last_used_step < step),
            )
            .values(last_used_step=step)
        ).rowcount  # type: ignore[attr-defined]
        return bool(won == 1)
    return False


def has_totp(session: Session, *, account_id: uuid.UUID) -> bool:
    return (
        session.scalar(
            select(TotpDevice.id)
            .where(TotpDevice.account_id == account_id, TotpDevice.confirmed_at.is_not(None))
            .limit(1)
        )
        is not None
    )


RECOVERY_CODE_COUNT = 10


def _recovery_digest(code: str) -> str:
    return hashlib.sha256(code.strip().lower().replace("-", "").encode()).hexdigest()


def looks_like_recovery_code(code: str) -> bool:
    return len(code.strip().replace("-", "")) == 16


def replace_recovery_codes(session: Session, *, account_id: uuid.UUID) -> list[str]:
    """New single-use recovery codes (the old ones stop working); shown once, stored as digests."""
    session.execute(
        update(RecoveryCode)
        .where(RecoveryCode.account_id == account_id, RecoveryCode.used_at.is_(None))
        .values(used_at=clock.now())
    )
    codes = []
    now = clock.now()
    for _ in range(RECOVERY_CODE_COUNT):
        raw = base64.b32encode(secrets.token_bytes(10)).decode().lower()  # 80 bits, 16 characters
        code = f"{raw[:8]}-{raw[8:]}"
        codes.append(code)
        session.add(RecoveryCode(account_id=account_id, code_digest=_recovery_digest(code), created_at=now))
    session.flush()
    record_event(session, account_id=account_id, kind=AuditKind.MFA_ENROLLED, detail="recovery codes")
    return codes


def use_recovery_code(session: Session, *, account_id: uuid.UUID, code: str) -> bool:
    won = session.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.account_id == account_id,
            RecoveryCode.code_digest == _recovery_digest(code),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=clock.now())
    ).rowcount  # type: ignore[attr-defined]
    return bool(won == 1)


def security_history(session: Session, *, account_id: uuid.UUID, limit: int = 100) -> list[AccountEvent]:
    return list(
        session.scalars(
            select(AccountEvent)
            .where(AccountEvent.account_id == account_id)
            .order_by(AccountEvent.at.desc())
            .limit(min(max(limit, 1), 500))
        )
    )


def start_totp_enrolment(
    session: Session, *, account_id: uuid.UUID, keys: KeyProvider | None = None
) -> tuple[uuid.UUID, str]:
    """A new, unconfirmed TOTP device and its secret (shown once, for the authenticator app)."""
    secret = totp.new_secret()
    return add_totp_device(session, account_id=account_id, secret=secret, confirmed=False, keys=keys), secret


def confirm_totp(
    session: Session,
    *,
    account_id: uuid.UUID,
    device_id: uuid.UUID,
    code: str,
    keys: KeyProvider | None = None,
) -> bool:
    """Confirm a device by a first valid code (which is then used up)."""
    device = session.get(TotpDevice, device_id)
    if device is None or device.account_id != account_id or device.confirmed_at is not None:
        return False
    secret = totp.unwrap_secret(keys_of(session, keys), device.id, device.kek_id, device.secret_wrapped)
    step = totp.matching_step(secret, code, at=clock.now(), after_step=None)
    if step is None:
        return False
    device.confirmed_at = clock.now()
    device.last_used_step = step
    record_event(session, account_id=account_id, kind=AuditKind.MFA_ENROLLED, detail="totp")
    return True


def replace_totp(
    session: Session,
    *,
    account_id: uuid.UUID,
    device_id: uuid.UUID,
    code: str,
    keys: KeyProvider | None = None,
) -> bool:
    """Confirm a new device by a first valid code, then remove the account's other TOTP devices:
    a key someone else has seen (the first one, handed over by an administrator) stops working."""
    if not confirm_totp(session, account_id=account_id, device_id=device_id, code=code, keys=keys):
        return False
    for device in session.scalars(
        select(TotpDevice).where(TotpDevice.account_id == account_id, TotpDevice.id != device_id)
    ):
        session.delete(device)
        record_event(session, account_id=account_id, kind=AuditKind.MFA_REMOVED, detail="totp replaced")
    return True


def remove_totp(session: Session, *, account: Account, device_id: uuid.UUID) -> bool:
    """Remove a TOTP device; a staff account keeps at least one second factor."""
    device = session.get(TotpDevice, device_id)
    if device is None or device.account_id != account.id:
        return False
    others = session.scalars(
        select(TotpDevice.id).where(
            TotpDevice.account_id == account.id,
            TotpDevice.confirmed_at.is_not(None),
            TotpDevice.id != device_id,
        )
    ).all()
    passkeys = session.scalar(
        select(WebAuthnCredential.id).where(WebAuthnCredential.account_id == account.id).limit(1)
    )
    if account.kind == "staff" and device.confirmed_at is not None and not others and passkeys is None:
        raise InvalidInput("a staff account keeps at least one second factor: add another first")
    session.delete(device)
    record_event(session, account_id=account.id, kind=AuditKind.MFA_REMOVED, detail="totp")
    return True


def list_factors(session: Session, *, account_id: uuid.UUID) -> dict[str, Any]:
    devices = session.scalars(
        select(TotpDevice).where(TotpDevice.account_id == account_id, TotpDevice.confirmed_at.is_not(None))
    ).all()
    keys = session.scalars(
        select(WebAuthnCredential).where(WebAuthnCredential.account_id == account_id)
    ).all()
    left = session.scalars(
        select(RecoveryCode.id).where(RecoveryCode.account_id == account_id, RecoveryCode.used_at.is_(None))
    ).all()
    return {
        "totp": [{"id": str(d.id), "addedAt": d.created_at.isoformat()} for d in devices],
        "passkeys": [
            {
                "id": str(k.id),
                "label": k.label,
                "addedAt": k.created_at.isoformat(),
                "lastUsedAt": k.last_used_at.isoformat() if k.last_used_at else None,
            }
            for k in keys
        ],
        "recoveryCodesLeft": len(left),
    }
