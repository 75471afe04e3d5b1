"""HTTP endpoints of identity: /auth/*. Schemas here; logic in authenticate/service/passkeys."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity import handover, oauth, oidc, passkeys, service, sessions, stepup, totp
from carnet.identity.authenticate import (
    Authenticator,
    LoginRequest,
    LoginThrottled,
    require_fresh_second_factor,
)
from carnet.identity.dependencies import (
    CSRF_COOKIE,
    cookie_is_secure,
    current_actor,
    enrolling_actor,
    request_context,
    runtime_of,
    session_cookie_name,
    session_token,
)
from carnet.identity.models import Account, AuthSession
from carnet.kernel.errors import Forbidden, InvalidInput, NotFound
from carnet.runtime import Runtime

router = APIRouter(prefix="/auth", tags=["identity"])

# Unauthenticated endpoints that write a row or verify a signature are rate limited per address.
OPTIONS_LIMITS = "30/minute;300/hour"
TOKEN_LIMITS = "60/minute;1000/hour"

ActorDep = Annotated[Actor, Depends(current_actor)]
EnrollingActorDep = Annotated[Actor, Depends(enrolling_actor)]


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=150)
    password: str = Field(min_length=1, max_length=1024)
    otp: str | None = Field(default=None, max_length=40)
    webauthn: dict[str, Any] | None = None
    challengeId: uuid.UUID | None = None


class StepUpBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    otp: str | None = Field(default=None, max_length=40)
    webauthn: dict[str, Any] | None = None
    challengeId: uuid.UUID | None = None


class PasskeyRegistrationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    challengeId: uuid.UUID
    credential: dict[str, Any]
    label: str = Field(default="passkey", max_length=100)


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def accepted_origins(configured: str) -> frozenset[str]:
    """The origins our own pages post from: the configured one; for a plain-http loopback
    origin (the demo, a developer's machine) every spelling of loopback at the same port, since
    `make demo` prints http://127.0.0.1:8000 and the default origin says localhost. Any other
    host, a port of another local program included, stays cross-site."""
    parts = urlsplit(configured.rstrip("/"))
    own = f"{parts.scheme}://{parts.netloc}"
    if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        return frozenset({own})
    port = f":{parts.port}" if parts.port else ""
    return frozenset({own} | {f"http://{host}{port}" for host in LOOPBACK_HOSTS})


def _check_same_origin(request: Request, runtime: Runtime) -> None:
    """Login CSRF: a cross-site page must not sign a victim's browser into the attacker's account.

    Browsers send Origin (and Sec-Fetch-Site) on cross-site POSTs; JSON bodies also force a CORS
    preflight, which carnet never grants.
    """
    if not request.headers.get("content-type", "").lower().startswith("application/json"):
        raise InvalidInput("send JSON (Content-Type: application/json)")
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/") not in accepted_origins(runtime.settings.origin):
        raise Forbidden("cross-site login refused")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise Forbidden("cross-site login refused")


def _set_session_cookies(response: Response, runtime: Runtime, issued: sessions.IssuedSession) -> None:
    secure = cookie_is_secure(runtime.settings.origin)
    max_age = int(sessions.ABSOLUTE.total_seconds())
    response.set_cookie(
        session_cookie_name(runtime.settings.origin),
        issued.token,
        max_age=max_age,
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )
    # Readable by our own scripts, which echo it in X-CSRF-Token (double submit, bound to the session).
    response.set_cookie(
        CSRF_COOKIE,
        issued.csrf_token,
        max_age=max_age,
        path="/",
        secure=secure,
        httponly=False,
        samesite="strict",
    )


def _clear_session_cookies(response: Response, runtime: Runtime) -> None:
    secure = cookie_is_secure(runtime.settings.origin)
    response.delete_cookie(
        session_cookie_name(runtime.settings.origin),
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(CSRF_COOKIE, path="/", secure=secure, samesite="strict")


def describe(actor: Actor) -> dict[str, Any]:
    fhir_user = None
    if actor.practitioner_id is not None:
        fhir_user = f"Practitioner/{actor.practitioner_id}"
    elif actor.patient_id is not None:
        fhir_user = f"Patient/{actor.patient_id}"
    return {
        "account": str(actor.account_id) if actor.account_id else None,
        "username": actor.username,
        "kind": actor.kind.value,
        "roles": sorted(r.value for r in actor.roles),
        "facility": str(actor.facility_id) if actor.facility_id else None,
        "fhirUser": fhir_user,
        "clientId": actor.client_id,
        "scopes": sorted(actor.scopes) if actor.scopes is not None else None,
        "secondFactorAt": actor.second_factor_at.isoformat() if actor.second_factor_at else None,
    }


@router.post("/login")
def log_in(body: LoginBody, request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    _check_same_origin(request, runtime)
    auth = Authenticator.of(runtime)
    try:
        result = auth.log_in(
            LoginRequest(
                username=body.username,
                password=body.password,
                otp=body.otp,
                webauthn=body.webauthn,
                challenge_id=body.challengeId,
                previous_token=session_token(request, runtime),
                context=request_context(request),
            )
        )
    except LoginThrottled as exc:
        return JSONResponse(
            {"error": "throttled", "message": str(exc)},
            status_code=429,
            headers={"Retry-After": str(exc.retry_after)},
        )
    payload = describe(result.actor)
    payload["csrfToken"] = result.issued.csrf_token
    payload["enrollmentOnly"] = result.issued.enrollment_only
    payload["setupRequired"] = result.setup_required
    response = JSONResponse(payload)
    _set_session_cookies(response, runtime, result.issued)
    return response


@router.post("/logout")
def log_out(actor: EnrollingActorDep, request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    Authenticator.of(runtime).log_out(actor=actor)
    response = JSONResponse({"status": "signed out"})
    _clear_session_cookies(response, runtime)
    return response


@router.get("/me")
def me(actor: EnrollingActorDep) -> dict[str, Any]:
    return describe(actor)


@router.post("/step-up")
def step_up(body: StepUpBody, actor: ActorDep, request: Request) -> dict[str, Any]:
    at = Authenticator.of(runtime_of(request)).step_up(
        actor=actor, otp=body.otp, webauthn=body.webauthn, challenge_id=body.challengeId
    )
    return {"secondFactorAt": at.isoformat()}


class ProofBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    challengeId: uuid.UUID | None = None
    webauthn: dict[str, Any] | None = None
    otp: str | None = Field(default=None, max_length=12)


@router.get("/step-up")
def step_up_status(actor: ActorDep, request: Request) -> dict[str, Any]:
    """Whether this session holds a fresh proof (the page asks for the passkey only if not)."""
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        until = stepup.fresh_until(session, actor=actor)
    return {"fresh": until is not None, "until": until.isoformat() if until else None}


@router.post("/step-up/options")
def step_up_options(actor: ActorDep, request: Request) -> dict[str, Any]:
    """A passkey challenge for an access-widening action, issued to THIS session only."""
    runtime = runtime_of(request)
    auth = Authenticator.of(runtime)
    totp_too = stepup.totp_accepted(runtime)
    try:
        with runtime.session_factory.begin() as session:
            challenge_id, options = stepup.challenge(session, actor=actor, rp=auth.rp)
    except InvalidInput:
        if not totp_too:  # no passkey, and codes are not accepted here: say so
            raise
        return {"challengeId": None, "publicKey": None, "totp": True}
    return {"challengeId": str(challenge_id), "publicKey": options, "totp": totp_too}


@router.post("/step-up/proof")
def step_up_proof(body: ProofBody, actor: ActorDep, request: Request) -> dict[str, Any]:
    """Answer this session's challenge with a passkey (or, in a demo, give a TOTP code): the
    next access-widening actions of this session, for 5 minutes, go through."""
    runtime = runtime_of(request)
    auth = Authenticator.of(runtime)
    with runtime.session_factory.begin() as session:
        if body.webauthn is not None and body.challengeId is not None:
            method = "webauthn"
            failure = stepup.prove_with_passkey(
                session, actor=actor, challenge_id=body.challengeId, credential=body.webauthn, rp=auth.rp
            )
        elif body.otp:
            method = "totp"
            failure = stepup.prove_with_totp(session, actor=actor, code=body.otp.strip(), runtime=runtime)
        else:
            raise InvalidInput("send a passkey assertion (challengeId and webauthn) or, in a demo, an otp")
        stepup.record_proof_attempt(session, runtime=runtime, actor=actor, method=method, failure=failure)
    if failure is not None:
        stepup.refused(runtime, actor=actor, action="proof", reason=failure)
        raise stepup.ProofRequired(f"the proof was not accepted ({failure})")
    return {"proven": True, "method": method, "validForSeconds": int(stepup.FRESHNESS.total_seconds())}


def _account_id(actor: Actor) -> uuid.UUID:
    if actor.account_id is None:
        raise Forbidden("only a person's account has a security history and sessions")
    return actor.account_id


@router.get("/security-history")
def security_history(actor: ActorDep, request: Request, limit: int = 100) -> dict[str, Any]:
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    with runtime.session_factory() as session:
        events = service.security_history(session, account_id=account_id, limit=limit)
        return {
            "events": [
                {
                    "kind": e.kind,
                    "outcome": e.outcome,
                    "at": e.at.isoformat(),
                    "address": e.address,
                    "userAgent": e.user_agent,
                    "detail": e.detail,
                }
                for e in events
            ]
        }


@router.get("/sessions")
def list_sessions(actor: ActorDep, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    with runtime.session_factory() as session:
        rows = sessions.list_live(session, account_id=account_id)
        return {
            "sessions": [
                {
                    "id": str(r.id),
                    "current": r.id == actor.session_id,
                    "createdAt": r.created_at.isoformat(),
                    "lastSeenAt": r.last_seen_at.isoformat(),
                    "address": r.address,
                    "userAgent": r.user_agent,
                }
                for r in rows
            ]
        }


@router.post("/sessions/{session_id}/revoke")
def revoke_session(session_id: uuid.UUID, actor: ActorDep, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    with runtime.session_factory.begin() as session:
        count = sessions.revoke(
            session,
            account_id=account_id,
            session_id=session_id,
            reason="revoked by the account's owner",
            actor=actor,
            audit=runtime.audit,
        )
    if count == 0:
        raise NotFound("no such live session")  # another account's session answers the same
    return {"revoked": count}


@router.post("/sessions/revoke-all")
def revoke_all_sessions(actor: ActorDep, request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    with runtime.session_factory.begin() as session:
        count = sessions.revoke(
            session,
            account_id=account_id,
            session_id=None,
            reason="all sessions revoked by the account's owner",
            actor=actor,
            audit=runtime.audit,
        )
    response = JSONResponse({"revoked": count})
    _clear_session_cookies(response, runtime)
    return response


@router.post("/recovery-codes")
def new_recovery_codes(actor: ActorDep, request: Request) -> dict[str, Any]:
    """Replace the account's recovery codes; shown once. Needs a fresh second factor."""
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    require_fresh_second_factor(actor)
    with runtime.session_factory.begin() as session:
        codes = service.replace_recovery_codes(session, account_id=account_id)
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.MFA_ENROLLED,
                outcome=Outcome.SUCCESS,
                actor=actor,
                detail={"factor": "recovery codes"},
            ),
        )
    return {"recoveryCodes": codes}


# -- passkeys -----------------------------------------------------------------------------
@router.post("/webauthn/login-options")
def passkey_login_options(request: Request) -> Any:
    """A challenge for signing in or stepping up with a passkey. Names no account."""
    runtime = runtime_of(request)
    auth = Authenticator.of(runtime)
    address = request_context(request).address or "unknown"
    if not auth.throttle.allow(bucket="passkey-options", key=address, limits=OPTIONS_LIMITS):
        return JSONResponse(
            {"error": "throttled", "message": "too many requests; wait a minute"}, status_code=429
        )
    with runtime.session_factory.begin() as session:
        challenge_id, options = passkeys.authentication_options(session, rp=auth.rp)
    return {"challengeId": str(challenge_id), "publicKey": options}


@router.post("/webauthn/register-options")
def passkey_register_options(actor: EnrollingActorDep, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    auth = Authenticator.of(runtime)
    with runtime.session_factory.begin() as session:
        account = session.get_one(Account, account_id)
        if handover.pending(account):
            handover.require_recent_sign_in(actor)  # says to sign in again, not to step up
        require_fresh_second_factor(actor)
        challenge_id, options = passkeys.registration_options(session, account=account, rp=auth.rp)
    return {"challengeId": str(challenge_id), "publicKey": options}


@router.post("/webauthn/register", status_code=201)
def passkey_register(
    body: PasskeyRegistrationBody, actor: EnrollingActorDep, request: Request
) -> JSONResponse:
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    require_fresh_second_factor(actor)
    auth = Authenticator.of(runtime)
    with runtime.session_factory.begin() as session:
        credential_pk = passkeys.register(
            session,
            account_id=account_id,
            challenge_id=body.challengeId,
            credential=body.credential,
            rp=auth.rp,
            label=body.label,
        )
        outcome = Outcome.SUCCESS if credential_pk else Outcome.DENIED
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.MFA_ENROLLED, outcome=outcome, actor=actor, detail={"factor": "passkey"}
            ),
        )
        service.record_event(
            session,
            account_id=account_id,
            kind=AuditKind.MFA_ENROLLED,
            outcome=outcome,
            address=actor.address,
            user_agent=actor.user_agent,
            detail=f"passkey {body.label}"[:300],
        )
        enrolling = setup_done = False
        account = session.get_one(Account, account_id)
        if credential_pk is not None and handover.pending(account):
            # A handed-over account: the passkey is the owner's own factor, the key the
            # administrator saw stops working; once the password is also theirs, every session
            # ends and they sign in with both.
            if account.must_replace_second_factor:
                handover.second_factor_replaced(
                    session, account=account, kept_totp=None, actor=actor, audit=runtime.audit
                )
            enrolling = setup_done = handover.finish_if_done(
                session, account=account, actor=actor, audit=runtime.audit
            )
        elif credential_pk is not None and actor.session_id is not None:
            row = session.get(AuthSession, actor.session_id)
            enrolling = bool(row and row.enrollment_only)
            if enrolling:
                # Crossing to a privileged session: this one ends; sign in again with the passkey.
                sessions.revoke(
                    session,
                    account_id=account_id,
                    session_id=actor.session_id,
                    reason="passkey enrolled; sign in with it",
                    actor=actor,
                    audit=runtime.audit,
                )
    if credential_pk is None:
        raise InvalidInput("the passkey registration did not verify; try again")
    response = JSONResponse(
        {"credential": str(credential_pk), "signInAgain": enrolling, "setupDone": setup_done}, status_code=201
    )
    if enrolling:
        _clear_session_cookies(response, runtime)
    return response


# -- OAuth 2 for API clients ----------------------------------------------------------------
oauth_router = APIRouter(prefix="/oauth", tags=["oauth"])
# SMART discovery, at the server's root and at the FHIR base (where SMART clients look).
smart_router = APIRouter(tags=["oauth"])


@smart_router.get("/.well-known/smart-configuration")
@smart_router.get("/fhir/.well-known/smart-configuration")
def smart_configuration(request: Request) -> JSONResponse:
    """Public, like /fhir/metadata: it names endpoints and methods, no data."""
    origin = runtime_of(request).settings.origin
    return JSONResponse(oauth.smart_configuration(origin), headers={"Cache-Control": "public, max-age=3600"})


@oauth_router.get("/jwks")
def oidc_jwks(request: Request) -> JSONResponse:
    """The public key apps check id_tokens with (public, like discovery)."""
    path = runtime_of(request).settings.resolved_oidc_key_file
    return JSONResponse(oidc.public_jwks(path), headers={"Cache-Control": "public, max-age=3600"})


class ClientRegistrationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clientId: str = Field(min_length=3, max_length=100)
    name: str = Field(min_length=1, max_length=200)
    jwks: dict[str, Any] | None = None
    scope: str = Field(min_length=1, max_length=2000)
    facility: uuid.UUID | None = None
    kind: str = Field(default="backend", pattern="^(backend|app)$")
    redirectUris: str = Field(default="", max_length=4000)
    launchUri: str = Field(default="", max_length=500)


@oauth_router.post("/token")
async def oauth_token(request: Request) -> JSONResponse:
    """SMART Backend Services token endpoint (client_credentials + private_key_jwt)."""
    runtime = runtime_of(request)
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return JSONResponse(
            {"error": "invalid_request", "error_description": "send application/x-www-form-urlencoded"},
            status_code=400,
        )
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    address = request_context(request).address or "unknown"
    if not Authenticator.of(runtime).throttle.allow(bucket="oauth-token", key=address, limits=TOKEN_LIMITS):
        return JSONResponse(
            {"error": "slow_down", "error_description": "too many token requests from this address"},
            status_code=429,
            headers={"Retry-After": "60"},
        )
    answer = oauth.issue_token(runtime, form=fields, context=request_context(request))
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)


@oauth_router.post("/revoke")
async def oauth_revoke(request: Request, actor: ActorDep) -> JSONResponse:
    """RFC 7009: a client revokes one of its own tokens (answers 200 whether or not it existed)."""
    form = await request.form()
    token = form.get("token")
    if actor.client_id is not None and isinstance(token, str):
        oauth.revoke_token(runtime_of(request), actor=actor, token=token)
    return JSONResponse({}, status_code=200)


@oauth_router.post("/clients", status_code=201)
def register_client(body: ClientRegistrationBody, actor: ActorDep, request: Request) -> dict[str, Any]:
    """A system administrator registers an integration by its public keys (fresh second factor)."""
    if Role.SYSTEM_ADMINISTRATOR not in actor.roles:
        raise Forbidden("only a system administrator registers API clients")
    runtime = runtime_of(request)
    stepup.require(runtime, actor=actor, action=stepup.Action.API_CLIENT_REGISTER, resource=body.clientId)
    with runtime.session_factory.begin() as session:
        client_pk = oauth.register_client(
            session,
            client_id=body.clientId,
            name=body.name,
            jwks=body.jwks,
            allowed_scopes=body.scope,
            facility_id=body.facility,
            kind=body.kind,
            redirect_uris=body.redirectUris,
            launch_uri=body.launchUri,
        )
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.API_CLIENT_REGISTERED,
                outcome=Outcome.SUCCESS,
                actor=actor,
                resource_type="ApiClient",
                resource_ids=(body.clientId,),
                detail={"scope": body.scope[:400]},
            ),
        )
    return {
        "id": str(client_pk),
        "clientId": body.clientId,
        "tokenUrl": runtime.settings.origin + "/oauth/token",
    }


# -- second factors -------------------------------------------------------------------------
class TotpConfirmBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deviceId: uuid.UUID
    code: str = Field(min_length=6, max_length=10)


def _require_fresh_unless_no_factor(session_factor_actor: Actor, has_factor: bool) -> None:
    # Adding or removing a factor on an account that has one needs that factor, freshly proven.
    if has_factor:
        require_fresh_second_factor(session_factor_actor)


@router.get("/factors")
def list_factors(actor: ActorDep, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        return service.list_factors(session, account_id=_account_id(actor))


@router.post("/totp/enroll")
def enroll_totp(actor: ActorDep, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    with runtime.session_factory.begin() as session:
        has_factor = service.has_totp(session, account_id=account_id) or passkeys.has_passkey(
            session, account_id=account_id
        )
        _require_fresh_unless_no_factor(actor, has_factor)
        account = session.get_one(Account, account_id)
        device_id, secret = service.start_totp_enrolment(session, account_id=account_id)
    # The secret leaves once, for the authenticator app; it is stored wrapped by the KEK.
    return {
        "deviceId": str(device_id),
        "secret": secret,
        "otpauthUri": totp.provisioning_uri(secret, username=account.username),
    }


@router.post("/totp/confirm")
def confirm_totp(body: TotpConfirmBody, actor: ActorDep, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    with runtime.session_factory.begin() as session:
        confirmed = service.confirm_totp(
            session, account_id=account_id, device_id=body.deviceId, code=body.code
        )
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.MFA_ENROLLED,
                outcome=Outcome.SUCCESS if confirmed else Outcome.DENIED,
                actor=actor,
                detail={"factor": "totp"},
            ),
        )
    if not confirmed:
        raise InvalidInput("the code does not match this authenticator; try the next one")
    return {"confirmed": True}


@router.post("/totp/{device_id}/remove")
def remove_totp(device_id: uuid.UUID, actor: ActorDep, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    require_fresh_second_factor(actor)
    with runtime.session_factory.begin() as session:
        account = session.get_one(Account, account_id)
        removed = service.remove_totp(session, account=account, device_id=device_id)
        if removed:
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.MFA_REMOVED,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    detail={"factor": "totp"},
                ),
            )
    if not removed:
        raise NotFound("no such authenticator")
    return {"removed": True}
