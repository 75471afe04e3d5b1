"""The first sign-in of an account an administrator opened.

The administrator saw the first password and authenticator key. Until the account's owner has
replaced both, every session of the account is a handover session: it may set a new password,
enrol a fresh second factor, see who it is and sign out, nothing else (carnet.identity.
authenticate refuses the rest). When both are replaced, the handed-over password and key no
longer work, every session of the account ends, and the owner signs in with their own.

Like carnet.identity.service, functions take the caller's session and never commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.identity import passkeys, passwords, service, sessions
from carnet.identity.models import Account, TotpDevice
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput, StepUpRequired

SETUP_MESSAGE = (
    "finish setting up your account first: choose your own password and second factor "
    "(the ones you were handed stop working then), at /account/setup"
)


@dataclass(frozen=True)
class SetupState:
    """What the owner of a handed-over account still has to do."""

    password: bool  # choose their own password
    second_factor: bool  # enrol their own second factor (the handed-over key then stops)
    has_passkey: bool

    @property
    def pending(self) -> bool:
        return self.password or self.second_factor


STALE_MESSAGE = (
    "your sign-in is more than 5 minutes old: sign out, sign in again with what you were handed, "
    "and choose your second factor at once"
)


def require_recent_sign_in(actor: Actor) -> None:
    """Enrolling the owner's factor needs the handed-over one proven in the last 5 minutes, so a
    handover session's cookie alone cannot bind someone else's factor to the account. (Its
    step-up would need a factor this session cannot use: the owner signs in again instead.)"""
    at = actor.second_factor_at
    if at is None or clock.now() - at > sessions.STEP_UP_FRESHNESS:
        raise StepUpRequired(STALE_MESSAGE)


def pending(account: Account) -> bool:
    return bool(account.must_change_password or account.must_replace_second_factor)


def state(session: Session, *, account_id: uuid.UUID) -> SetupState:
    account = session.get_one(Account, account_id)
    return SetupState(
        password=bool(account.must_change_password),
        second_factor=bool(account.must_replace_second_factor),
        has_passkey=passkeys.has_passkey(session, account_id=account_id),
    )


def _audit(
    session: Session,
    audit: AuditWriter,
    *,
    kind: AuditKind,
    outcome: Outcome,
    actor: Actor,
    account: Account,
    detail: dict[str, str],
) -> None:
    audit.append(
        session,
        AuditRecord(
            kind=kind,
            outcome=outcome,
            actor=actor,
            resource_type="Account",
            resource_ids=(str(account.id),),
            detail=detail,
        ),
    )
    service.record_event(
        session,
        account_id=account.id,
        kind=kind,
        outcome=outcome,
        address=actor.address,
        user_agent=actor.user_agent,
        detail=", ".join(f"{k}: {v}" for k, v in detail.items()),
    )


def change_password(
    session: Session,
    *,
    account: Account,
    current: str,
    new: str,
    actor: Actor,
    audit: AuditWriter,
) -> None:
    """Replace the password (NIST SP 800-63B rules); the old one stops working at once.

    Raises InvalidInput with a message safe to show, having changed nothing."""
    if not passwords.verify_password(account.password_hash, current):
        raise InvalidInput("the current password is not right")
    if new == current or passwords.verify_password(account.password_hash, new):
        raise InvalidInput("choose a password other than the one you were handed")
    passwords.check_policy(new, context=(account.username, account.display_name))
    account.password_hash = passwords.hash_password(new)
    account.password_changed_at = clock.now()
    was_handover = bool(account.must_change_password)
    account.must_change_password = False
    _audit(
        session,
        audit,
        kind=AuditKind.PASSWORD_CHANGED,
        outcome=Outcome.SUCCESS,
        actor=actor,
        account=account,
        detail={"why": "account setup" if was_handover else "owner's choice"},
    )


def second_factor_replaced(
    session: Session,
    *,
    account: Account,
    kept_totp: uuid.UUID | None,
    actor: Actor,
    audit: AuditWriter,
) -> None:
    """The owner enrolled their own factor (a confirmed TOTP key `kept_totp`, or a passkey):
    every other authenticator key, the handed-over one among them, is removed."""
    query = select(TotpDevice).where(TotpDevice.account_id == account.id)
    if kept_totp is not None:
        query = query.where(TotpDevice.id != kept_totp)
    removed = 0
    for device in session.scalars(query):
        session.delete(device)
        removed += 1
    session.flush()
    account.must_replace_second_factor = False
    _audit(
        session,
        audit,
        kind=AuditKind.MFA_REMOVED,
        outcome=Outcome.SUCCESS,
        actor=actor,
        account=account,
        detail={"factor": "totp", "removed": str(removed), "why": "handed-over key replaced"},
    )


def finish_if_done(session: Session, *, account: Account, actor: Actor, audit: AuditWriter) -> bool:
    """When nothing is left to do: end every session of the account (the handover session
    among them) so the owner signs in with their own password and factor. True when finished."""
    if pending(account):
        return False
    _audit(
        session,
        audit,
        kind=AuditKind.ACCOUNT_SETUP_COMPLETED,
        outcome=Outcome.SUCCESS,
        actor=actor,
        account=account,
        detail={"next": "sign in with the new password and second factor"},
    )
    sessions.revoke(
        session,
        account_id=account.id,
        session_id=None,
        reason="account setup finished; sign in with your own password and second factor",
        actor=actor,
        audit=audit,
    )
    return True


def refused(
    session: Session, *, account: Account, actor: Actor, audit: AuditWriter, path: str | None
) -> None:
    """A handover session asked for something other than setting up the account: audited."""
    audit.append(
        session,
        AuditRecord(
            kind=AuditKind.ACCOUNT_SETUP_REFUSED,
            outcome=Outcome.DENIED,
            actor=actor,
            resource_type="Account",
            resource_ids=(str(account.id),),
            policy_reason="the account's handed-over password and key are not replaced yet",
            detail={"path": (path or "")[:200]},
        ),
    )
