"""Finishing an account an administrator opened: the owner's own password and second factor.

Only a handover session reaches these pages (any other page sends it here, audited). When the
password and the factor are both the owner's, every session of the account ends and the owner
signs in with them; the administrator's copy no longer opens anything.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from carnet.access.actor import Actor
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity import handover, service, totp
from carnet.identity.authenticate import Authenticator
from carnet.identity.dependencies import runtime_of
from carnet.identity.models import Account
from carnet.kernel.errors import Forbidden, InvalidInput, NotFound, StepUpRequired
from carnet.web.account import clear_cookies
from carnet.web.rendering import render
from carnet.web.routing import EnrollingWebActor, WebRoute, redirect

router = APIRouter(prefix="/account/setup", route_class=WebRoute, include_in_schema=False)

DONE_URL = "/login?setup_done=1"


def _account_id(actor: Actor) -> uuid.UUID:
    if actor.account_id is None or actor.client_id is not None:
        raise NotFound("no account")
    return actor.account_id


def _state(request: Request, actor: Actor) -> handover.SetupState:
    with runtime_of(request).session_factory() as session:
        return handover.state(session, account_id=_account_id(actor))


def _totp_allowed(request: Request, actor: Actor) -> bool:
    # Privileged roles must use a phishing-resistant factor (TOTP only in a demo).
    return not actor.is_privileged or Authenticator.of(runtime_of(request)).demo


def _page(
    request: Request,
    actor: Actor,
    state: handover.SetupState,
    *,
    problem: str | None = None,
    new_key: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "account/setup.html",
        {
            "actor": actor,
            "setting_up": True,
            "state": state,
            "totp_allowed": _totp_allowed(request, actor),
            "problem": problem,
            "new_key": new_key,
        },
        status_code=status_code,
    )


def _finished(request: Request) -> Response:
    response = redirect(DONE_URL)
    clear_cookies(response, request)
    return response


@router.get("")
def setup_page(request: Request, actor: EnrollingWebActor) -> Response:
    state = _state(request, actor)
    if not state.pending:
        return redirect("/home")
    return _page(request, actor, state)


@router.post("/password")
def choose_password(
    request: Request,
    actor: EnrollingWebActor,
    current_password: Annotated[str, Form(max_length=1024)],
    new_password: Annotated[str, Form(max_length=1024)],
    repeat_password: Annotated[str, Form(max_length=1024)],
) -> Response:
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    problem: str | None = None
    finished = False
    with runtime.session_factory.begin() as session:
        account = session.get_one(Account, account_id)
        if not account.must_change_password:
            raise Forbidden(
                "the password of this account is already its owner's; change it from your account"
            )
        try:
            if new_password != repeat_password:
                raise InvalidInput("the two new passwords are not the same")
            handover.change_password(
                session,
                account=account,
                current=current_password,
                new=new_password,
                actor=actor,
                audit=runtime.audit,
            )
        except InvalidInput as exc:
            problem = str(exc)
        else:
            finished = handover.finish_if_done(session, account=account, actor=actor, audit=runtime.audit)
    if problem is not None:
        _refused(request, actor, kind=AuditKind.PASSWORD_CHANGED, reason=problem)
        return _page(request, actor, _state(request, actor), problem=problem, status_code=400)
    if finished:
        return _finished(request)
    return redirect("/account/setup?password=1")


@router.post("/authenticator")
def new_authenticator(request: Request, actor: EnrollingWebActor) -> Response:
    """A fresh authenticator key, shown once; a first code from it confirms it."""
    state = _state(request, actor)
    if not state.second_factor:
        raise Forbidden("this account's second factor is already its owner's")
    if not _totp_allowed(request, actor):
        raise Forbidden("your role signs in with a passkey: register one")
    try:
        handover.require_recent_sign_in(actor)
    except StepUpRequired as exc:
        return _page(request, actor, state, problem=str(exc), status_code=403)
    runtime = runtime_of(request)
    with runtime.session_factory.begin() as session:
        device_id, secret = service.start_totp_enrolment(session, account_id=_account_id(actor))
    key = {
        "device_id": str(device_id),
        "secret": secret,
        "otpauth_uri": totp.provisioning_uri(secret, username=actor.username),
    }
    return _page(request, actor, state, new_key=key)


@router.post("/authenticator/confirm")
def confirm_authenticator(
    request: Request,
    actor: EnrollingWebActor,
    device_id: Annotated[uuid.UUID, Form()],
    code: Annotated[str, Form(max_length=12)],
) -> Response:
    if not _totp_allowed(request, actor):
        raise Forbidden("your role signs in with a passkey: register one")
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    finished = False
    with runtime.session_factory.begin() as session:
        account = session.get_one(Account, account_id)
        if not account.must_replace_second_factor:
            raise Forbidden("this account's second factor is already its owner's")
        confirmed = service.confirm_totp(
            session, account_id=account_id, device_id=device_id, code=code.strip()
        )
        if confirmed:
            handover.second_factor_replaced(
                session, account=account, kept_totp=device_id, actor=actor, audit=runtime.audit
            )
            finished = handover.finish_if_done(session, account=account, actor=actor, audit=runtime.audit)
    if not confirmed:
        reason = "the code does not match the new key: nothing was changed, show a new key and try again"
        _refused(request, actor, kind=AuditKind.MFA_ENROLLED, reason=reason)
        return _page(request, actor, _state(request, actor), problem=reason, status_code=400)
    if finished:
        return _finished(request)
    return redirect("/account/setup?factor=1")


def _refused(request: Request, actor: Actor, *, kind: AuditKind, reason: str) -> None:
    """A refused step of the setup, in the audit trail and the account's security history."""
    runtime = runtime_of(request)
    account_id = _account_id(actor)
    detail: dict[str, Any] = {"step": "account setup"}
    with runtime.session_factory.begin() as session:
        runtime.audit.append(
            session,
            AuditRecord(
                kind=kind,
                outcome=Outcome.DENIED,
                actor=actor,
                resource_type="Account",
                resource_ids=(str(account_id),),
                policy_reason=reason[:500],
                detail=detail,
            ),
        )
        service.record_event(
            session,
            account_id=account_id,
            kind=kind,
            outcome=Outcome.DENIED,
            address=actor.address,
            user_agent=actor.user_agent,
            detail=f"account setup: {reason}"[:300],
        )
