"""Accounts and what proves who they are: second factors, sessions, API clients, tokens."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin

_BIGINT = BigInteger().with_variant(Integer(), "sqlite")


class Account(IdMixin, Base):
    __tablename__ = "accounts"

    username: Mapped[str] = mapped_column(String(150), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))  # staff, patient
    facility_id: Mapped[uuid.UUID | None] = mapped_column(Uuid(), ForeignKey("facilities.id"), index=True)
    # For patient accounts: the patient they are. A patient sees their own record only.
    patient_id: Mapped[uuid.UUID | None] = mapped_column(Uuid(), ForeignKey("patients.id"), unique=True)
    # For staff who are practitioners: their Practitioner (the `fhirUser` of /auth/me).
    practitioner_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid(), ForeignKey("practitioners.id"), unique=True
    )
    password_hash: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(12), default="active")  # active, suspended, disabled
    status_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime]
    password_changed_at: Mapped[dt.datetime]
    # Opened by an administrator, who saw its first password and authenticator key: until its
    # owner has replaced both, a session of this account can do nothing else (fail closed).
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    must_replace_second_factor: Mapped[bool] = mapped_column(Boolean, default=False)
    # Opened by an administrator or restored after containment: on probation until this date
    # (carnet.identity.lifecycle.on_probation; detection gives it a smaller budget).
    probation_ends_at: Mapped[dt.datetime | None]
    # When its owner last re-enrolled in person (`carnet users re-enrol`): an account contained
    # while on probation is restored only after such a re-enrolment.
    reenrolled_at: Mapped[dt.datetime | None]


class TotpDevice(IdMixin, Base):
    """A TOTP secret, wrapped by the key-encryption key (never stored in clear)."""

    __tablename__ = "totp_devices"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    kek_id: Mapped[str] = mapped_column(String(64))
    secret_wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime]
    confirmed_at: Mapped[dt.datetime | None]
    # The last accepted time step: a code of this step or an earlier one is a replay.
    last_used_step: Mapped[int | None] = mapped_column(_BIGINT)


class RecoveryCode(IdMixin, Base):
    """Single-use recovery codes, kept as SHA-256 digests (they are random, 80 bits)."""

    __tablename__ = "recovery_codes"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    code_digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]


class WebAuthnCredential(IdMixin, Base):
    __tablename__ = "webauthn_credentials"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    credential_id: Mapped[str] = mapped_column(String(700), unique=True)  # base64url
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(_BIGINT)
    transports: Mapped[str] = mapped_column(String(200), default="")
    label: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime]
    last_used_at: Mapped[dt.datetime | None]


class WebAuthnChallenge(IdMixin, Base):
    """A challenge handed to a browser; consumed once, short-lived."""

    __tablename__ = "webauthn_challenges"

    account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(20))  # register, authenticate
    challenge: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]


class StepUpProof(IdMixin, Base):
    """A fresh proof by the person acting, for access-widening actions (carnet.identity.stepup).

    Bound to one session: a passkey challenge is issued to that session and consumed once; a
    proof counts only for the session it was made in and for 5 minutes. A TOTP proof (demo only)
    is spent by the one action it allows (`used_at`).
    """

    __tablename__ = "step_up_proofs"

    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("auth_sessions.id"), index=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    challenge: Mapped[bytes | None] = mapped_column(LargeBinary)
    issued_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]  # the challenge's: an answer after it proves nothing
    consumed_at: Mapped[dt.datetime | None]  # the challenge was answered (right or wrong): once
    proven_at: Mapped[dt.datetime | None]
    method: Mapped[str | None] = mapped_column(String(20))  # webauthn, totp
    used_at: Mapped[dt.datetime | None]
    used_for: Mapped[str | None] = mapped_column(String(60))


class AuthSession(IdMixin, Base):
    """A browser or script session. This table is the truth for every worker."""

    __tablename__ = "auth_sessions"

    # The cookie holds a random token; only its SHA-256 is stored, so a dump yields no session.
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_digest: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime]
    idle_timeout_seconds: Mapped[int]
    absolute_expires_at: Mapped[dt.datetime]
    second_factor_at: Mapped[dt.datetime | None]
    second_factor_method: Mapped[str | None] = mapped_column(String(20))  # totp, webauthn, recovery
    # A privileged account signing in before it has a passkey may only enrol one.
    enrollment_only: Mapped[bool] = mapped_column(Boolean, default=False)
    # The roles held at login: a different set later ends the session (new id at privilege change).
    roles_at_login: Mapped[str] = mapped_column(String(300), default="")
    address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    revoked_at: Mapped[dt.datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (Index("ix_auth_sessions_account_revoked", "account_id", "revoked_at"),)


class AccountEvent(IdMixin, Base):
    """An account's security history, shown to its owner (the audit chain keeps the proof)."""

    __tablename__ = "account_events"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(60))
    outcome: Mapped[str] = mapped_column(String(10))
    at: Mapped[dt.datetime]
    address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    detail: Mapped[str | None] = mapped_column(String(300))


class ApiClient(IdMixin, Base):
    """A registered OAuth client (SMART Backend Services): authenticates with its own keys."""

    __tablename__ = "api_clients"

    client_id: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    jwks: Mapped[str] = mapped_column(Text)  # public keys only, JSON
    allowed_scopes: Mapped[str] = mapped_column(Text)  # space separated
    facility_id: Mapped[uuid.UUID | None] = mapped_column(Uuid(), ForeignKey("facilities.id"))
    status: Mapped[str] = mapped_column(String(12), default="active")  # active, suspended
    created_at: Mapped[dt.datetime]
    # backend: SMART Backend Services (its own keys); app: a user-facing app (authorization
    # code + PKCE, acting for the signed-in person, to the redirect URIs registered here).
    kind: Mapped[str] = mapped_column(String(10), default="backend")
    redirect_uris: Mapped[str] = mapped_column(Text, default="")  # space separated
    # An app's SMART launch URL: where the chart's "launch app" action sends the browser.
    launch_uri: Mapped[str | None] = mapped_column(String(500))
    # A backend client's registered purpose of use for bulk exports (invariant 3: an export
    # states why); a kick-off that names none takes this one.
    export_purpose: Mapped[str | None] = mapped_column(String(1000))


class SmartLaunch(IdMixin, Base):
    """An EHR launch from the chart: one person, one patient, one app; single use, minutes long.

    Only the digest of the opaque `launch` value is stored; the `launch` scope resolves it once.
    """

    __tablename__ = "smart_launches"

    launch_digest: Mapped[str] = mapped_column(String(64), unique=True)
    client_pk: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_clients.id"), index=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    # No foreign key: identity never reaches the patient tables (the gate checks the patient).
    patient_id: Mapped[uuid.UUID] = mapped_column(Uuid())
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]


class AuthorizationCode(IdMixin, Base):
    """A one-time code handed to an app's redirect URI; redeemed with its PKCE verifier."""

    __tablename__ = "authorization_codes"

    code_digest: Mapped[str] = mapped_column(String(64), unique=True)
    client_pk: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_clients.id"), index=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    scopes: Mapped[str] = mapped_column(Text)
    redirect_uri: Mapped[str] = mapped_column(String(500))
    code_challenge: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]
    # The launch patient (EHR launch or the standalone picker): patient/ scopes reach only it.
    patient_id: Mapped[uuid.UUID | None] = mapped_column(Uuid())
    nonce: Mapped[str | None] = mapped_column(String(200))  # OpenID Connect, echoed in the id_token


class AccessToken(IdMixin, Base):
    """An opaque bearer token (only its digest stored), short-lived and revocable."""

    __tablename__ = "access_tokens"

    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    client_pk: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_clients.id"), index=True)
    # Set for an app's token: it acts for this person, within its scopes and their roles.
    account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    scopes: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    # The launch patient of a patient-scoped app token: every access is confined to it.
    patient_id: Mapped[uuid.UUID | None] = mapped_column(Uuid())


class RefreshToken(IdMixin, Base):
    """An app's refresh token (offline_access / online_access): opaque, single use, rotating.

    Each use gives a new one in the same family; presenting a used one again means it leaked,
    and the whole family and its access tokens are revoked.
    """

    __tablename__ = "refresh_tokens"

    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[uuid.UUID] = mapped_column(Uuid(), index=True)
    client_pk: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_clients.id"), index=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    scopes: Mapped[str] = mapped_column(Text)
    patient_id: Mapped[uuid.UUID | None] = mapped_column(Uuid())
    issued_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class UsedClientAssertion(Base):
    """The jti of each accepted client assertion, until it expires: an assertion is single use."""

    __tablename__ = "used_client_assertions"

    jti: Mapped[str] = mapped_column(String(200), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
