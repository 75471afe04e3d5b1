"""The front desk's arrivals: today's appointments around now at the clerk's facility, and
checking a patient in (booked -> arrived).

The list is `Gate.arrivals`: today only (the Paris day), a window of a few hours that the
clerk moves earlier or later, name and birth date of each patient and nothing clinical;
counted as one list of the day by detection, so an honest morning at the desk is not stepped
up while a sweep of other days or of the register still is.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.identity.dependencies import runtime_of
from carnet.kernel import clock, localtime
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.web.rendering import render
from carnet.web.routing import WebActor, WebRoute, redirect, refuse

router = APIRouter(prefix="/desk/arrivals", route_class=WebRoute, include_in_schema=False)

STEP = dt.timedelta(hours=2)  # "Earlier" / "Later" move the window by this much
DONE = {"checked-in"}


def _require_desk(request: Request, actor: Actor, kind: AuditKind) -> None:
    if Role.FRONT_DESK not in actor.roles:
        raise refuse(
            request,
            actor,
            kind=kind,
            resource_type="Appointment",
            reason="the arrivals list is for front-desk staff",
        )


def _window_start(value: str) -> dt.datetime | None:
    """'HH:MM' on today's Paris wall clock; None for the default window around now."""
    if not value:
        return None
    try:
        time = dt.time.fromisoformat(value)
    except ValueError:
        raise InvalidInput("the time must be written HH:MM, e.g. 08:30") from None
    return localtime.at(localtime.local_day(clock.now()), time)


def _page(
    request: Request,
    actor: Actor,
    *,
    start: str = "",
    done: str = "",
    problem: str | None = None,
    status: int = 200,
) -> Response:
    try:
        window = _window_start(start)
    except InvalidInput as exc:
        window, problem, status = None, str(exc), 400
    listing = Gate(runtime_of(request), actor).arrivals(window_start=window)
    shown_start = localtime.local(listing.window_start)
    context = {
        "actor": actor,
        "listing": listing,
        "earlier": (shown_start - STEP).strftime("%H:%M") if shown_start.hour >= 2 else "00:00",
        "later": (shown_start + STEP).strftime("%H:%M")
        if shown_start.hour < 22
        else shown_start.strftime("%H:%M"),
        "start": start,
        "done": done if done in DONE else "",
        "problem": problem,
    }
    return render(request, "work/arrivals.html", context, status_code=status)


@router.get("")
def arrivals(request: Request, actor: WebActor, start: str = "", done: str = "") -> Response:
    _require_desk(request, actor, AuditKind.PHI_LIST)
    return _page(request, actor, start=start[:5], done=done)


@router.post("/{appointment_id}/check-in")
def check_in(
    request: Request,
    actor: WebActor,
    appointment_id: str,
    expected_version: Annotated[int, Form()],
    start: Annotated[str, Form(max_length=5)] = "",
) -> Response:
    """The patient is at the desk: their appointment is marked arrived (a stale version, an
    appointment not booked or not today: nothing changes, the list says why)."""
    _require_desk(request, actor, AuditKind.PHI_UPDATE)
    try:
        Gate(runtime_of(request), actor).check_in(
            appointment_id=appointment_id, expected_version=expected_version
        )
    except (Conflict, InvalidInput) as exc:
        return _page(
            request, actor, start=start, problem=str(exc), status=409 if isinstance(exc, Conflict) else 400
        )
    except NotFound as exc:
        return _page(request, actor, start=start, problem=str(exc), status=404)
    suffix = f"&start={start}" if start else ""
    return redirect(f"/desk/arrivals?done=checked-in{suffix}")
