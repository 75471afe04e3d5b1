"""Probation and in-person re-enrolment: the rules around accounts that were just opened or
restored, which are what an attacker mints or revives with stolen sessions.

- An account an administrator opens, or a security officer restores, is on probation for
  `PROBATION` (7 days): `on_probation(account, now)`; detection may give it a smaller budget.
- An account contained while on probation is not restored by two officers alone: its owner first
  re-enrols in person at the server (`carnet users re-enrol`), which ends every session, removes
  every factor and hands over a new first password and key that the owner replaces at once.

Functions that take a Session never commit (like carnet.identity.service).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from carnet.access.accounts import first_password
from carnet.access.actor import Actor
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.identity import service, sessions, totp
from carnet.identity.models import Account, RecoveryCode, TotpDevice, WebAuthnCredential
from carnet.identity.passwords import hash_password
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput
from carnet.runtime import Runtime

PROBATION = service.PROBATION
REENROL_MESSAGE = (
    "this account was contained while on probation (opened or restored in the last 7 days): "
    "its owner re-enrols in person first (carnet users re-enrol, see docs/SECURITY.md), then two "
    "security officers restore it"
)


def on_probation(account: Account, now: dt.datetime) -> bool:
    """True while the account is within its probation (opened or restored less than 7 days ago)."""
    return account.probation_ends_at is not None and now < account.probation_ends_at


def start_probation(account: Account, now: dt.datetime) -> None:
    account.probation_ends_at = now + PROBATION


def reenrol_required(account: Account, *, contained_at: dt.datetime | None) -> bool:
    """Contained while on probation, and not re-enrolled in person since."""
    if contained_at is None or account.probation_ends_at is None:
        return False
    if contained_at >= account.probation_ends_at:
        return False
    return account.reenrolled_at is None or account.reenrolled_at < contained_at


def _contained_account(session: Session, actor_ref: str) -> tuple[Account, dt.datetime | None] | None:
    # Read through detection's table (identity does not import detection at module level:
    # detection imports identity).
    from carnet.detection.models import ActorState

    state = session.get(ActorState, actor_ref)
    if state is None or state.account_id is None:
        return None
    account = session.get(Account, state.account_id)
    return (account, state.contained_at) if account is not None else None


def restore_block(runtime: Runtime, *, actor_ref: str) -> str | None:
    """Why this contained actor may not be restored yet (None: the usual two officers may)."""
    with runtime.session_factory() as session:
        found = _contained_account(session, actor_ref)
        if found is None:
            return None
        account, contained_at = found
        return REENROL_MESSAGE if reenrol_required(account, contained_at=contained_at) else None


def restore_block_for_request(runtime: Runtime, *, request_id: uuid.UUID) -> str | None:
    """`restore_block` for the actor a pending restore request names."""
    from carnet.detection.models import RestoreRequest

    with runtime.session_factory() as session:
        row = session.get(RestoreRequest, request_id)
        actor_ref = row.actor_ref if row is not None else None
    return restore_block(runtime, actor_ref=actor_ref) if actor_ref else None


@dataclass(frozen=True)
class Reenrolment:
    """Shown once, at the server, to the owner standing there: never stored in clear."""

    username: str
    initial_password: str
    totp_secret: str
    otpauth_uri: str
    sessions_ended: int


def reenrol(session: Session, *, username: str, reason: str, actor: Actor, audit: AuditWriter) -> Reenrolment:
    """The owner is here, identity checked: every session ends, every factor goes, a new first
    password and key are handed over (replaced at first sign-in, like a new account's).

    The account stays as it is (suspended if contained): two officers restore it afterwards.
    """
    text = reason.strip()
    if len(text) < 10:
        raise InvalidInput("state why, and how the owner's identity was checked (at least 10 characters)")
    account = session.scalar(select(Account).where(Account.username == username.strip()))
    if account is None or account.kind != "staff":
        raise InvalidInput(f"no staff account named {username!r}")
    ended = sessions.revoke(
        session,
        account_id=account.id,
        session_id=None,
        reason="re-enrolment in person",
        actor=actor,
        audit=audit,
    )
    for table in (WebAuthnCredential, TotpDevice, RecoveryCode):
        session.execute(delete(table).where(table.account_id == account.id))
    now = clock.now()
    password = first_password()
    secret = totp.new_secret()
    account.password_hash = hash_password(password)
    account.password_changed_at = now
    account.must_change_password = True
    account.must_replace_second_factor = True
    account.reenrolled_at = now
    session.flush()
    service.add_totp_device(session, account_id=account.id, secret=secret, confirmed=True)
    audit.append(
        session,
        AuditRecord(
            kind=AuditKind.ACCOUNT_REENROLLED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            resource_type="Account",
            resource_ids=(str(account.id),),
            detail={"reason": text[:300], "sessions": str(ended)},
        ),
    )
    service.record_event(
        session,
        account_id=account.id,
        kind=AuditKind.ACCOUNT_REENROLLED,
        address=actor.address,
        user_agent=actor.user_agent,
        detail="re-enrolled in person: every factor replaced",
    )
    return Reenrolment(
        username=account.username,
        initial_password=password,
        totp_secret=secret,
        otpauth_uri=totp.provisioning_uri(secret, username=account.username),
        sessions_ended=ended,
    )
