"""WebAuthn passkeys (py_webauthn): phishing-resistant, required for privileged roles.

The relying party is carnet's origin (settings.origin): a credential made for another origin,
such as a phishing look-alike, never verifies here.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import webauthn
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from webauthn.helpers import bytes_to_base64url, options_to_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from carnet.identity.models import Account, WebAuthnChallenge, WebAuthnCredential
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput

CHALLENGE_TTL = dt.timedelta(minutes=5)
RP_NAME = "carnet"


@dataclass(frozen=True)
class RelyingParty:
    rp_id: str
    origin: str

    @classmethod
    def from_origin(cls, origin: str) -> RelyingParty:
        host = urlsplit(origin).hostname
        if not host:
            raise InvalidInput("settings.origin is not a URL")
        return cls(rp_id=host, origin=origin.rstrip("/"))


def _store_challenge(
    session: Session, *, account_id: uuid.UUID | None, purpose: str, challenge: bytes
) -> uuid.UUID:
    # Challenges nobody finished are cleared as new ones are made: the table stays small.
    session.execute(
        delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at < clock.now() - CHALLENGE_TTL)
    )
    row = WebAuthnChallenge(
        account_id=account_id,
        purpose=purpose,
        challenge=challenge,
        expires_at=clock.now() + CHALLENGE_TTL,
    )
    session.add(row)
    session.flush()
    return row.id


def _consume_challenge(
    session: Session, *, challenge_id: uuid.UUID, purpose: str, account_id: uuid.UUID | None
) -> bytes | None:
    """Mark the challenge used; None when unknown, used, expired or meant for someone else."""
    now = clock.now()
    row = session.get(WebAuthnChallenge, challenge_id)
    if row is None or row.purpose != purpose or row.used_at is not None or row.expires_at <= now:
        return None
    if row.account_id is not None and row.account_id != account_id:
        return None
    # Conditional update: of two concurrent uses of one challenge, one wins.
    won = session.execute(
        update(WebAuthnChallenge)
        .where(WebAuthnChallenge.id == challenge_id, WebAuthnChallenge.used_at.is_(None))
        .values(used_at=now)
    ).rowcount  # type: ignore[attr-defined]
    return row.challenge if won == 1 else None


def registration_options(
    session: Session, *, account: Account, rp: RelyingParty
) -> tuple[uuid.UUID, dict[str, Any]]:
    existing = session.scalars(
        select(WebAuthnCredential.credential_id).where(WebAuthnCredential.account_id == account.id)
    ).all()
    options = webauthn.generate_registration_options(
        rp_id=rp.rp_id,
        rp_name=RP_NAME,
        user_name=account.username,
        user_id=account.id.bytes,
        user_display_name=account.display_name,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[
            PublicKeyCredentialDescriptor(id=webauthn.base64url_to_bytes(c)) for c in existing
        ],
    )
    challenge_id = _store_challenge(
        session, account_id=account.id, purpose="register", challenge=options.challenge
    )
    return challenge_id, json.loads(options_to_json(options))


def register(
    session: Session,
    *,
    account_id: uuid.UUID,
    challenge_id: uuid.UUID,
    credential: dict[str, Any],
    rp: RelyingParty,
    label: str,
) -> uuid.UUID | None:
    """Verify an attestation and store the credential; None when it does not verify."""
    challenge = _consume_challenge(
        session, challenge_id=challenge_id, purpose="register", account_id=account_id
    )
    if challenge is None:
        return None
    try:
        verified = webauthn.verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError):
        return None
    credential_id = bytes_to_base64url(verified.credential_id)
    if session.scalar(select(WebAuthnCredential.id).where(WebAuthnCredential.credential_id == credential_id)):
        return None
    transports = credential.get("response", {}).get("transports") or []
    row = WebAuthnCredential(
        account_id=account_id,
        credential_id=credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        transports=",".join(str(t) for t in transports if isinstance(t, str))[:200],
        label=(label.strip() or "passkey")[:100],
        created_at=clock.now(),
    )
    session.add(row)
    session.flush()
    return row.id


def authentication_options(session: Session, *, rp: RelyingParty) -> tuple[uuid.UUID, dict[str, Any]]:
    """Options naming no account (discoverable credentials): asking reveals nothing about users."""
    options = webauthn.generate_authentication_options(
        rp_id=rp.rp_id, user_verification=UserVerificationRequirement.REQUIRED
    )
    challenge_id = _store_challenge(
        session, account_id=None, purpose="authenticate", challenge=options.challenge
    )
    return challenge_id, json.loads(options_to_json(options))


def authenticate(
    session: Session,
    *,
    account_id: uuid.UUID,
    challenge_id: uuid.UUID,
    credential: dict[str, Any],
    rp: RelyingParty,
) -> bool:
    """Verify an assertion by one of the account's passkeys (user verified, count rising)."""
    challenge = _consume_challenge(
        session, challenge_id=challenge_id, purpose="authenticate", account_id=account_id
    )
    raw_id = credential.get("rawId") or credential.get("id")
    if challenge is None or not isinstance(raw_id, str):
        return False
    row = session.scalar(
        select(WebAuthnCredential).where(
            WebAuthnCredential.credential_id == raw_id, WebAuthnCredential.account_id == account_id
        )
    )
    if row is None:
        return False
    try:
        verified = webauthn.verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            credential_public_key=row.public_key,
            credential_current_sign_count=row.sign_count,
            require_user_verification=True,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError):
        return False
    row.sign_count = verified.new_sign_count
    row.last_used_at = clock.now()
    return True


def has_passkey(session: Session, *, account_id: uuid.UUID) -> bool:
    return (
        session.scalar(
            select(WebAuthnCredential.id).where(WebAuthnCredential.account_id == account_id).limit(1)
        )
        is not None
    )
