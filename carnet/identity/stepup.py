"""Step-up proofs: access-widening needs a fresh, phishing-resistant proof by the person acting.

Opening an account, granting or approving a role, restoring a contained account, approving an
export, reviewing a break-the-glass access, registering an API client or changing detection
settings each need a passkey assertion made in the last 5 minutes IN THIS SESSION:

- the challenge is issued to one session and stored for it; it is answered once (right or
  wrong), so a replayed assertion, or one made over another session's challenge, proves nothing;
- the proof is a row here, found by the session's id: a cookie, or two stolen cookies, never
  make one (the person's authenticator does);
- with CARNET_ENV=demo (or in a test that asks for it) a TOTP code is accepted instead, and then
  each code allows one action only.

Each refusal is audited (AuditKind.STEP_UP_REFUSED) and counted by detection.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from enum import StrEnum
from typing import Any

import webauthn
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from webauthn.helpers import options_to_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import PublicKeyCredentialDescriptor, UserVerificationRequirement

from carnet.access.actor import Actor
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity import service
from carnet.identity.models import StepUpProof, WebAuthnCredential
from carnet.identity.passkeys import RelyingParty
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput, StepUpRequired
from carnet.runtime import Runtime
from carnet.settings import Environment

log = logging.getLogger(__name__)

FRESHNESS = dt.timedelta(minutes=5)
CHALLENGE_TTL = dt.timedelta(minutes=2)
# Rows older than this are deleted as new ones are made: the table stays small.
KEEP = dt.timedelta(hours=1)
_TOTP_IN_TESTS = "stepup.totp-in-tests"

REFUSED_MESSAGE = (
    "confirm it is you with your passkey: this action widens access and needs a proof made in "
    "this session in the last 5 minutes (POST /auth/step-up/options, then /auth/step-up/proof)"
)


class Action(StrEnum):
    """The access-widening actions, each named in audit and detection."""

    ACCOUNT_OPEN = "account-open"  # also hands over the first credentials
    ROLE_GRANT_REQUEST = "role-grant-request"
    ROLE_GRANT_APPROVE = "role-grant-approve"
    RESTORE_REQUEST = "restore-request"
    RESTORE_APPROVE = "restore-approve"
    EXPORT_APPROVE = "export-approve"
    BREAK_GLASS_REVIEW = "break-glass-review"
    API_CLIENT_REGISTER = "api-client-register"
    API_CLIENT_SCOPES = "api-client-scopes"
    DETECTION_SETTINGS = "detection-settings"


class ProofRequired(StepUpRequired):
    """No fresh proof by the person in this session: the action did not happen."""


def allow_totp_in_tests(runtime: Runtime) -> None:
    """A test that cannot drive a passkey asks, explicitly, for TOTP proofs (CARNET_ENV=test)."""
    if runtime.settings.env != Environment.TEST:
        raise InvalidInput("TOTP proofs are for demo and test installations only")
    runtime.services[_TOTP_IN_TESTS] = True


def totp_accepted(runtime: Runtime) -> bool:
    env = runtime.settings.env
    return env == Environment.DEMO or (
        env == Environment.TEST and runtime.services.get(_TOTP_IN_TESTS) is True
    )


def _person(actor: Actor) -> tuple[uuid.UUID, uuid.UUID]:
    if actor.account_id is None or actor.session_id is None:
        # An access token (an app, an integration) has no person at hand to prove anything.
        raise ProofRequired("this action needs a signed-in person's session and passkey, not a token")
    return actor.account_id, actor.session_id


def _clear_old(session: Session, now: dt.datetime) -> None:
    session.execute(delete(StepUpProof).where(StepUpProof.issued_at < now - KEEP))


def challenge(session: Session, *, actor: Actor, rp: RelyingParty) -> tuple[uuid.UUID, dict[str, Any]]:
    """Request options whose challenge belongs to this session only (and names its passkeys)."""
    account_id, session_id = _person(actor)
    now = clock.now()
    _clear_old(session, now)
    credentials = session.scalars(
        select(WebAuthnCredential.credential_id).where(WebAuthnCredential.account_id == account_id)
    ).all()
    if not credentials:
        raise InvalidInput("this account has no passkey: register one on your account page first")
    options = webauthn.generate_authentication_options(
        rp_id=rp.rp_id,
        allow_credentials=[
            PublicKeyCredentialDescriptor(id=webauthn.base64url_to_bytes(c)) for c in credentials
        ],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    row = StepUpProof(
        session_id=session_id,
        account_id=account_id,
        challenge=options.challenge,
        issued_at=now,
        expires_at=now + CHALLENGE_TTL,
    )
    session.add(row)
    session.flush()
    return row.id, json.loads(options_to_json(options))


def prove_with_passkey(
    session: Session,
    *,
    actor: Actor,
    challenge_id: uuid.UUID,
    credential: dict[str, Any],
    rp: RelyingParty,
) -> str | None:
    """Verify an assertion over this session's challenge; None when proven, else why not."""
    account_id, session_id = _person(actor)
    now = clock.now()
    row = session.get(StepUpProof, challenge_id)
    if row is None or row.challenge is None:
        return "unknown challenge"
    if row.session_id != session_id or row.account_id != account_id:
        return "challenge issued to another session"
    if row.expires_at <= now:
        return "challenge expired"
    # Conditional update: of two answers to one challenge (a replay, a race), one is looked at.
    won = session.execute(
        update(StepUpProof)
        .where(StepUpProof.id == row.id, StepUpProof.consumed_at.is_(None))
        .values(consumed_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if won != 1:
        return "challenge already answered"
    raw_id = credential.get("rawId") or credential.get("id")
    found = (
        session.scalar(
            select(WebAuthnCredential).where(
                WebAuthnCredential.credential_id == raw_id, WebAuthnCredential.account_id == account_id
            )
        )
        if isinstance(raw_id, str)
        else None
    )
    if found is None:
        return "not one of this account's passkeys"
    try:
        verified = webauthn.verify_authentication_response(
            credential=credential,
            expected_challenge=row.challenge,
            expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            credential_public_key=found.public_key,
            credential_current_sign_count=found.sign_count,
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError):
        return "the assertion does not verify"
    found.sign_count = verified.new_sign_count
    found.last_used_at = now
    row.proven_at = now
    row.method = "webauthn"
    return None


def prove_with_totp(session: Session, *, actor: Actor, code: str, runtime: Runtime) -> str | None:
    """Demo (or an explicit test) only: a TOTP code, each good for one action."""
    account_id, session_id = _person(actor)
    if not totp_accepted(runtime):
        return "a code is not accepted here: confirm with your passkey"
    # verify_totp refuses a code of a time step already used: a code proves once.
    if not service.verify_totp(session, account_id=account_id, code=code):
        return "wrong or already used code"
    now = clock.now()
    _clear_old(session, now)
    session.add(
        StepUpProof(
            session_id=session_id,
            account_id=account_id,
            challenge=None,
            issued_at=now,
            expires_at=now,
            consumed_at=now,
            proven_at=now,
            method="totp",
        )
    )
    session.flush()
    return None


def record_proof_attempt(
    session: Session, *, runtime: Runtime, actor: Actor, method: str, failure: str | None
) -> None:
    """Audit a proof (or a failed one) and add it to the account's security history."""
    outcome = Outcome.DENIED if failure else Outcome.SUCCESS
    detail = {"method": method, "purpose": "access-widening"}
    if failure:
        detail["reason"] = failure
    runtime.audit.append(
        session, AuditRecord(kind=AuditKind.STEP_UP, outcome=outcome, actor=actor, detail=detail)
    )
    if actor.account_id is not None:
        service.record_event(
            session,
            account_id=actor.account_id,
            kind=AuditKind.STEP_UP,
            outcome=outcome,
            address=actor.address,
            user_agent=actor.user_agent,
            detail=f"{method} for an access-widening action" + (f": {failure}" if failure else ""),
        )


def _usable(session: Session, *, account_id: uuid.UUID, session_id: uuid.UUID, action: Action) -> str | None:
    """Spend (TOTP) or use (passkey) this session's fresh proof; None when one was found."""
    now = clock.now()
    proofs = session.scalars(
        select(StepUpProof)
        .where(
            StepUpProof.session_id == session_id,
            StepUpProof.account_id == account_id,
            StepUpProof.proven_at.is_not(None),
        )
        .order_by(StepUpProof.proven_at.desc())
        .limit(20)
    ).all()
    if not proofs:
        return "no proof in this session"
    for proof in proofs:
        assert proof.proven_at is not None
        if now - proof.proven_at > FRESHNESS:
            break  # ordered newest first: the rest are older still
        if proof.method == "webauthn":
            return None
        spent = session.execute(
            update(StepUpProof)
            .where(StepUpProof.id == proof.id, StepUpProof.used_at.is_(None))
            .values(used_at=now, used_for=action.value)
        ).rowcount  # type: ignore[attr-defined]
        if spent == 1:
            return None
    newest = proofs[0]
    assert newest.proven_at is not None
    if now - newest.proven_at > FRESHNESS:
        return "proof older than 5 minutes"
    return "code already used for another action"


def fresh_until(session: Session, *, actor: Actor) -> dt.datetime | None:
    """Until when this session holds a usable proof (None: none), for the page to ask only then."""
    if actor.account_id is None or actor.session_id is None:
        return None
    now = clock.now()
    for proof in session.scalars(
        select(StepUpProof)
        .where(
            StepUpProof.session_id == actor.session_id,
            StepUpProof.account_id == actor.account_id,
            StepUpProof.proven_at >= now - FRESHNESS,
            StepUpProof.used_at.is_(None) | (StepUpProof.method == "webauthn"),
        )
        .order_by(StepUpProof.proven_at.desc())
        .limit(1)
    ):
        assert proof.proven_at is not None
        return proof.proven_at + FRESHNESS
    return None


def require(runtime: Runtime, *, actor: Actor, action: Action, resource: str | None = None) -> None:
    """Let the action through only on a fresh proof of this session; else audit, count, refuse.

    Call it before the action's own service (which audits the action itself).
    """
    if actor.account_id is None or actor.session_id is None:
        reason: str | None = "an access token cannot prove a person's presence"
    else:
        with runtime.session_factory.begin() as session:
            reason = _usable(session, account_id=actor.account_id, session_id=actor.session_id, action=action)
    if reason is None:
        return
    refused(runtime, actor=actor, action=action, reason=reason, resource=resource)
    raise ProofRequired(REFUSED_MESSAGE)


def refused(
    runtime: Runtime, *, actor: Actor, action: Action | str, reason: str, resource: str | None = None
) -> None:
    """Audit a refusal and report it to detection (a denial keyed `step-up-refused:<action>`)."""
    with runtime.session_factory.begin() as session:
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.STEP_UP_REFUSED,
                outcome=Outcome.DENIED,
                actor=actor,
                resource_type="Action",
                resource_ids=(str(action),) + ((resource,) if resource else ()),
                policy_reason=reason,
                detail={"action": str(action), "reason": reason},
            ),
        )
        if actor.account_id is not None:
            service.record_event(
                session,
                account_id=actor.account_id,
                kind=AuditKind.STEP_UP_REFUSED,
                outcome=Outcome.DENIED,
                address=actor.address,
                user_agent=actor.user_agent,
                detail=f"{action}: {reason}"[:300],
            )
    # Counted by detection like a denial, in its own transaction: the refusal above stays even
    # if detection cannot write (it logs and the next request is judged again).
    record_denial = getattr(runtime.ledger, "record_denial", None)
    if record_denial is None:
        return
    try:
        with runtime.session_factory.begin() as session:
            record_denial(session, actor=actor, resource_type=f"step-up-refused:{action}")
    except Exception as exc:  # never turn a refusal into a 500; the audit event is written
        log.error("detection could not count a step-up refusal: %s", type(exc).__name__)
