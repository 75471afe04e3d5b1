"""Sign in, sign out, step-up, language, the home redirect and the account page."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity import handover, passkeys, service, sessions, totp
from carnet.identity.authenticate import Authenticator, require_fresh_second_factor
from carnet.identity.dependencies import cookie_is_secure, runtime_of, session_cookie_name
from carnet.kernel.errors import NotFound
from carnet.settings import Environment
from carnet.web.rendering import CSRF_COOKIE, LANG_COOKIE, LANGUAGES, render
from carnet.web.routing import EnrollingWebActor, WebActor, WebRoute, redirect, safe_next

router = APIRouter(route_class=WebRoute, include_in_schema=False)

# Where each role starts its day (the first role that matches wins).
HOME_BY_ROLE = (
    (Role.PHYSICIAN, "/day"),
    (Role.NURSE, "/day"),
    (Role.FRONT_DESK, "/desk"),
    (Role.BILLING, "/billing"),
    (Role.SECURITY_OFFICER, "/security"),
    (Role.SYSTEM_ADMINISTRATOR, "/admin"),
    (Role.PATIENT, "/portal"),
    (Role.INTEGRATION, "/integration"),
)


def clear_cookies(response: Response, request: Request) -> None:
    origin = runtime_of(request).settings.origin
    secure = cookie_is_secure(origin)
    response.delete_cookie(
        session_cookie_name(origin), path="/", secure=secure, httponly=True, samesite="strict"
    )
    response.delete_cookie(CSRF_COOKIE, path="/", secure=secure, samesite="strict")


@router.get("/login")
def login_page(
    request: Request, next: str | None = None, ended: int = 0, enrolled: int = 0, setup_done: int = 0
) -> Response:
    return render(
        request,
        "account/login.html",
        {
            "next": safe_next(next),
            "ended": bool(ended),
            "enrolled": bool(enrolled),
            "setup_done": bool(setup_done),
            # The demo lets administrators in with a code (authenticate.py): say so there.
            "demo": runtime_of(request).settings.env == Environment.DEMO,
        },
    )


@router.get("/home")
def home(actor: WebActor) -> RedirectResponse:
    for role, url in HOME_BY_ROLE:
        if role in actor.roles:
            return redirect(url)
    return redirect("/account")


@router.post("/logout")
def log_out(request: Request, actor: EnrollingWebActor) -> Response:
    Authenticator.of(runtime_of(request)).log_out(actor=actor)
    response = redirect("/login?signed_out=1")
    clear_cookies(response, request)
    return response


@router.get("/lang/{code}")
def choose_language(code: str, next: str | None = None) -> Response:
    if code not in LANGUAGES:
        raise NotFound("no such language")
    response = redirect(safe_next(next, "/login"))
    response.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, path="/", samesite="lax", httponly=True)
    return response


@router.post("/step-up")
async def step_up(
    request: Request,
    actor: WebActor,
    otp: Annotated[str, Form(max_length=12)] = "",
    next: Annotated[str, Form(max_length=500)] = "/home",
) -> Response:
    authenticator = Authenticator.of(runtime_of(request))
    await run_in_threadpool(
        lambda: authenticator.step_up(actor=actor, otp=otp.strip() or None, webauthn=None, challenge_id=None)
    )
    return redirect(safe_next(next))


def _account_id(actor: Actor) -> uuid.UUID:
    if actor.account_id is None:
        raise NotFound("no account")
    return actor.account_id


@router.get("/account")
def account_page(request: Request, actor: EnrollingWebActor, enrol: int = 0) -> Response:
    account_id = _account_id(actor)
    runtime = runtime_of(request)
    with runtime.session_factory() as session:
        if handover.state(session, account_id=account_id).pending:
            return redirect("/account/setup")  # the handed-over credentials are replaced first
        live = sessions.list_live(session, account_id=account_id)
        history = service.security_history(session, account_id=account_id, limit=50)
        factors = {
            "totp": service.has_totp(session, account_id=account_id),
            "passkey": passkeys.has_passkey(session, account_id=account_id),
        }
        open_sessions = [
            {
                "id": str(s.id),
                "current": s.id == actor.session_id,
                "created_at": s.created_at,
                "last_seen_at": s.last_seen_at,
                "address": s.address,
                "user_agent": s.user_agent,
            }
            for s in live
        ]
        events = [
            {"kind": e.kind, "outcome": e.outcome, "at": e.at, "address": e.address, "detail": e.detail}
            for e in history
        ]
    return render(
        request,
        "account/account.html",
        {
            "actor": actor,
            "sessions": open_sessions,
            "events": events,
            "factors": factors,
            "enrol": bool(enrol),
            "privileged": actor.is_privileged,
        },
    )


@router.post("/account/sessions/{session_id}/revoke")
def revoke_session(session_id: uuid.UUID, request: Request, actor: WebActor) -> Response:
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
        raise NotFound("no such open session")
    if session_id == actor.session_id:
        response = redirect("/login")
        clear_cookies(response, request)
        return response
    return redirect("/account#sessions")


@router.post("/account/recovery-codes")
def new_recovery_codes(request: Request, actor: WebActor) -> Response:
    """Replace the recovery codes (fresh second factor needed) and show them once."""
    from carnet.identity.views import new_recovery_codes as replace_codes

    codes = replace_codes(actor=actor, request=request)["recoveryCodes"]
    return render(request, "account/recovery_codes.html", {"actor": actor, "codes": codes})


@router.post("/account/authenticator")
def new_authenticator(request: Request, actor: WebActor) -> Response:
    """A new authenticator key, shown once; it replaces the others once a first code confirms it
    (the first key of an account was seen by the administrator who opened it)."""
    require_fresh_second_factor(actor)  # changing a factor needs that factor, freshly proven
    runtime = runtime_of(request)
    with runtime.session_factory.begin() as session:
        device_id, secret = service.start_totp_enrolment(session, account_id=_account_id(actor))
    return render(
        request,
        "account/authenticator.html",
        {
            "actor": actor,
            "device_id": str(device_id),
            "secret": secret,
            "otpauth_uri": totp.provisioning_uri(secret, username=actor.username),
            "problem": None,
        },
    )


@router.post("/account/authenticator/confirm")
def confirm_authenticator(
    request: Request,
    actor: WebActor,
    device_id: Annotated[uuid.UUID, Form()],
    code: Annotated[str, Form(max_length=12)],
) -> Response:
    runtime = runtime_of(request)
    with runtime.session_factory.begin() as session:
        replaced = service.replace_totp(
            session, account_id=_account_id(actor), device_id=device_id, code=code.strip()
        )
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.MFA_ENROLLED,
                outcome=Outcome.SUCCESS if replaced else Outcome.DENIED,
                actor=actor,
                detail={"factor": "totp", "replaces": "the other authenticator keys"},
            ),
        )
    if not replaced:
        return render(
            request,
            "account/authenticator.html",
            {
                "actor": actor,
                "device_id": None,
                "secret": None,
                "otpauth_uri": None,
                "problem": "the code does not match this key: nothing was changed, start again",
            },
            status_code=400,
        )
    return redirect("/account?replaced=1")
