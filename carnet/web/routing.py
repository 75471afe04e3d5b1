"""Who is asking (session cookie + CSRF from a header or a hidden form field) and the pages
that explain a refusal: expired session, contained account, step-up, forbidden, missing."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from carnet.access.actor import Actor
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity import stepup
from carnet.identity.authenticate import AccountSetupRequired, Authenticator
from carnet.identity.dependencies import (
    CSRF_HEADER,
    SAFE_METHODS,
    request_context,
    runtime_of,
    session_token,
)
from carnet.identity.sessions import csrf_matches
from carnet.kernel.errors import (
    AccountContained,
    AuthenticationRequired,
    CarnetError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    StepUpRequired,
    Throttled,
)
from carnet.runtime import Runtime
from carnet.web.rendering import CSRF_FIELD, render


def refuse(request: Request, actor: Actor, *, kind: AuditKind, resource_type: str, reason: str) -> Forbidden:
    """A page refused before any service is called: audited like the services' own refusals."""
    runtime = runtime_of(request)
    with runtime.session_factory.begin() as session:
        runtime.audit.append(
            session,
            AuditRecord(
                kind=kind,
                outcome=Outcome.DENIED,
                actor=actor,
                resource_type=resource_type,
                policy_reason=reason,
            ),
        )
    return Forbidden(reason)


class CsrfRefused(Forbidden):
    """An unsafe request without our page's token: it may come from another site."""


async def web_actor(request: Request) -> Actor:
    """The Actor of a browser session; unsafe methods must echo the CSRF token
    (X-CSRF-Token header from our scripts, or the hidden `csrf_token` field of our forms)."""
    return await _actor(request, allow_enrollment_only=False)


async def enrolling_web_actor(request: Request) -> Actor:
    """Also a privileged account's first session, which may only register its passkey."""
    return await _actor(request, allow_enrollment_only=True)


async def _actor(request: Request, *, allow_enrollment_only: bool) -> Actor:
    runtime = runtime_of(request)
    token = session_token(request, runtime)
    if token is None:
        raise AuthenticationRequired("sign in first")
    actor, row = await run_in_threadpool(
        Authenticator.of(runtime).resolve,
        token=token,
        context=request_context(request),
        allow_enrollment_only=allow_enrollment_only,
    )
    request.state.actor = actor  # lets a refusal page still show the navigation
    if request.method not in SAFE_METHODS:
        presented = request.headers.get(CSRF_HEADER)
        if presented is None:
            form = await request.form()
            value = form.get(CSRF_FIELD)
            presented = value if isinstance(value, str) else None
        # A cookie rides along with cross-site posts; only our own pages know the token.
        if not csrf_matches(row, presented):
            raise CsrfRefused("this form was not sent by a carnet page (missing or wrong security token)")
    return actor


WebActor = Annotated[Actor, Depends(web_actor)]
EnrollingWebActor = Annotated[Actor, Depends(enrolling_web_actor)]


def proven(action: stepup.Action) -> Any:
    """The actor of an access-widening form: a session cookie is not enough, its person must
    have proven their passkey in this session in the last 5 minutes (carnet.identity.stepup).
    Refused (audited, counted by detection) before the form's service is called."""

    async def dependency(request: Request, actor: WebActor) -> Actor:
        await run_in_threadpool(lambda: stepup.require(runtime_of(request), actor=actor, action=action))
        return actor

    return Depends(dependency)


def runtime(request: Request) -> Runtime:
    return runtime_of(request)


def safe_next(value: str | None, default: str = "/home") -> str:
    """Only a path on this site: never an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def error_page(request: Request, exc: Exception) -> Response:
    """A page that says what happened and what to do; never a traceback, never patient data."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if isinstance(exc, AccountContained):
        return render(request, "errors/contained.html", {"message": str(exc)}, status_code=403)
    if isinstance(exc, AuthenticationRequired):
        ended = "ended" in str(exc)
        target = "/login?next=" + quote(here if request.method == "GET" else "/home", safe="/")
        if ended:
            target += "&ended=1"
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": target})
        return redirect(target)
    if isinstance(exc, AccountSetupRequired):
        # A handover session: the only way on is to replace the handed-over credentials.
        if request.headers.get("hx-request"):
            return Response(status_code=403, headers={"HX-Redirect": "/account/setup"})
        return render(request, "errors/setup_required.html", {"message": str(exc)}, status_code=403)
    if isinstance(exc, stepup.ProofRequired):
        back = request.headers.get("referer", "/home") if request.method != "GET" else here
        return render(
            request,
            "errors/proof_required.html",
            {"message": str(exc), "next": safe_next(_local(back))},
            status_code=403,
        )
    if isinstance(exc, StepUpRequired):
        back = here if request.method == "GET" else request.headers.get("referer", "/home")
        return render(
            request,
            "errors/step_up.html",
            {"message": str(exc), "next": safe_next(_local(back))},
            status_code=403,
        )
    if isinstance(exc, Throttled):
        return render(
            request, "errors/refused.html", {"message": str(exc), "kind": "throttled"}, status_code=429
        )
    if isinstance(exc, Forbidden):
        kind = "csrf" if isinstance(exc, CsrfRefused) else "forbidden"
        return render(request, "errors/refused.html", {"message": str(exc), "kind": kind}, status_code=403)
    if isinstance(exc, NotFound):
        return render(request, "errors/not_found.html", {"message": str(exc)}, status_code=404)
    if isinstance(exc, InvalidInput | Conflict | RequestValidationError):
        message = str(exc) if isinstance(exc, CarnetError) else _validation_message(exc)
        status = 409 if isinstance(exc, Conflict) else 400
        return render(request, "errors/invalid.html", {"message": message}, status_code=status)
    return render(request, "errors/refused.html", {"message": str(exc), "kind": "error"}, status_code=500)


def unavailable_page(request: Request, what: str, retry_after: int) -> Response:
    """The page of a request that found the database or access monitoring unavailable (its
    transaction rolled back): say so, nothing changed, retry shortly (carnet.app's 503 handler).
    `what`: "database" or "monitoring"."""
    here = request.url.path if request.method == "GET" else "/home"
    return render(
        request,
        "errors/unavailable.html",
        {"what": what, "here": safe_next(here)},
        status_code=503,
        headers={"Retry-After": str(retry_after)},
    )


def _local(url: str) -> str:
    # A Referer is absolute: keep its path and query only.
    if "://" in url:
        rest = url.split("://", 1)[1]
        return "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return url


def _validation_message(exc: Exception) -> str:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    names = sorted({str(e.get("loc", ("", "?"))[-1]) for e in errors})
    return "some fields are missing or not valid: " + ", ".join(names)


class WebRoute(APIRoute):
    """A route whose carnet errors become explanatory pages instead of OperationOutcome JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except (CarnetError, RequestValidationError) as exc:
                return error_page(request, exc)

        return handler
