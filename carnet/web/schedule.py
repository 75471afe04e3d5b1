"""The scheduling calendar: one practitioner's day or week, book, move and cancel with a reason.

What it shows comes from `Gate.practitioner_schedule`: slots only (time, length, status, an
opaque "booked" marker), never who they are for, so opening a calendar exposes no patient. Who one
slot is for is a "Who is this?" button (an htmx POST, CSRF protected) answered by
`Gate.reveal_appointment_patient`: name and birth date of that one patient, audited and counted as
exposed to the clerk. To book, the clerk finds the patient first (by INS, or from the patient's
page), then picks a slot. A double booking is refused by the gate; the calendar shows the refusal
next to the form and changes nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from carnet.access import directory
from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.identity.dependencies import runtime_of
from carnet.kernel import clock, localtime
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.phi.schemas import AppointmentInput, PatientView
from carnet.web.rendering import render
from carnet.web.routing import WebActor, WebRoute, redirect, refuse

router = APIRouter(prefix="/desk/schedule", route_class=WebRoute, include_in_schema=False)

SCHEDULING_ROLES = frozenset({Role.FRONT_DESK, Role.PHYSICIAN, Role.NURSE})
VIEWS = ("day", "week")
DONE = {"booked", "moved", "cancelled"}


def _moment(value: str, name: str) -> dt.datetime:
    """A datetime-local field, read on the wall clock the pages show (Europe/Paris)."""
    try:
        return localtime.wall_clock(value)
    except ValueError:
        raise InvalidInput(f"{name} must be a date and time") from None


def _span(day: dt.date, view: str) -> tuple[dt.date, dt.date]:
    if view == "week":
        monday = day - dt.timedelta(days=day.weekday())
        return monday, monday + dt.timedelta(days=6)
    return day, day


def _where(practitioner: str, day: dt.date, view: str, patient: str = "", **extra: str) -> str:
    query = {"practitioner": practitioner, "day": day.isoformat(), "view": view}
    if patient:
        query["patient"] = patient
    query.update(extra)
    return "/desk/schedule?" + urlencode(query)


def _require_scheduler(request: Request, actor: Actor) -> None:
    if not actor.roles & SCHEDULING_ROLES:
        raise refuse(
            request,
            actor,
            kind=AuditKind.PHI_LIST,
            resource_type="Appointment",
            reason="the calendar is for front-desk staff and clinicians",
        )


def _page(
    request: Request,
    actor: Actor,
    *,
    practitioner: str,
    day: dt.date,
    view: str,
    patient: str = "",
    ins: str = "",
    problem: str | None = None,
    done: str = "",
    status: int = 200,
) -> Response:
    runtime = runtime_of(request)
    practitioners = directory.list_practitioners(runtime, actor=actor)
    chosen = practitioner or (practitioners[0].id if practitioners else "")
    gate = Gate(runtime, actor)
    booking_for: PatientView | None = None
    if ins.strip() and problem is None:
        try:
            found = gate.search_patients(identifier=ins.strip(), count=2)
        except InvalidInput as exc:
            problem, status = str(exc), 400
        else:
            if len(found.items) == 1:
                patient = found.items[0].id
            else:
                problem, status = "no patient has this identifier in your facilities", 404
    if patient:
        booking_for = gate.read_patient(patient_id=patient)
    day_from, day_to = _span(day, view)
    schedule = None
    if chosen:
        schedule = gate.practitioner_schedule(practitioner_id=chosen, day_from=day_from, day_to=day_to)
    days = [day_from + dt.timedelta(days=n) for n in range((day_to - day_from).days + 1)]
    by_day: dict[dt.date, list[Any]] = {d: [] for d in days}
    for entry in schedule.entries if schedule else []:
        if localtime.local_day(entry.start_at) in by_day:
            by_day[localtime.local_day(entry.start_at)].append(entry)
    step = dt.timedelta(days=7 if view == "week" else 1)
    context = {
        "actor": actor,
        "practitioners": practitioners,
        "chosen": chosen,
        "chosen_name": next((p.name for p in practitioners if p.id == chosen), ""),
        "view": view,
        "shown_day": day,
        "days": days,
        "by_day": by_day,
        "today": localtime.local_day(clock.now()),
        "previous": _where(chosen, day - step, view, patient),
        "next": _where(chosen, day + step, view, patient),
        "switch": _where(chosen, day, "day" if view == "week" else "week", patient),
        "booking_for": booking_for,
        "problem": problem,
        "done": done if done in DONE else "",
        "here": {"practitioner": chosen, "day": day.isoformat(), "view": view, "patient": patient},
    }
    return render(request, "desk/schedule.html", context, status_code=status)


def _view(value: str) -> str:
    return value if value in VIEWS else "week"


@router.get("")
def calendar(
    request: Request,
    actor: WebActor,
    practitioner: str = "",
    day: dt.date | None = None,
    view: str = "week",
    patient: str = "",
    done: str = "",
) -> Response:
    _require_scheduler(request, actor)
    if "ins" in request.query_params:
        # An identifier never rides in a URL: the lookup is the POST form below; not run, not echoed.
        return redirect(_where(practitioner, day or localtime.local_day(clock.now()), _view(view)))
    return _page(
        request,
        actor,
        practitioner=practitioner,
        day=day or localtime.local_day(clock.now()),
        view=_view(view),
        patient=patient,
        done=done,
    )


@router.post("/lookup")
def lookup(
    request: Request,
    actor: WebActor,
    ins: Annotated[str, Form(max_length=20)],
    practitioner: Annotated[str, Form(max_length=40)] = "",
    day: Annotated[str, Form(max_length=10)] = "",
    view: Annotated[str, Form(max_length=5)] = "week",
) -> Response:
    """Find the patient to book for by their INS, sent in the form body (CSRF protected)."""
    _require_scheduler(request, actor)
    return _page(request, actor, practitioner=practitioner, day=_day_of(day), view=_view(view), ins=ins)


def _day_of(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return localtime.local_day(clock.now())


@router.post("/book")
def book(
    request: Request,
    actor: WebActor,
    patient_id: Annotated[str, Form(max_length=40)],
    practitioner_id: Annotated[str, Form(max_length=40)],
    start_at: Annotated[str, Form(max_length=30)],
    minutes: Annotated[int, Form(ge=5, le=480)] = 20,
    view: Annotated[str, Form(max_length=5)] = "week",
) -> Response:
    _require_scheduler(request, actor)
    try:
        start = _moment(start_at, "the start")
        data = AppointmentInput(
            patient_id=patient_id,
            practitioner_id=practitioner_id,
            start_at=start,
            end_at=start + dt.timedelta(minutes=minutes),
        )
        Gate(runtime_of(request), actor).book_appointment(data=data)
    except (Conflict, InvalidInput) as exc:
        # Nothing was booked: the same calendar, with the reason next to the form.
        day = _day_of(start_at[:10])
        return _page(
            request,
            actor,
            practitioner=practitioner_id,
            day=day,
            view=_view(view),
            patient=patient_id,
            problem=str(exc),
            status=409 if isinstance(exc, Conflict) else 400,
        )
    return redirect(
        _where(practitioner_id, localtime.local_day(start), _view(view), patient_id, done="booked")
    )


@router.post("/{appointment_id}/who")
def who(request: Request, actor: WebActor, appointment_id: str) -> Response:
    """ "Who is this?" for one slot: that appointment's patient, name and birth date only, as an
    htmx fragment replacing the button (a full page without htmx). One patient exposed, audited."""
    _require_scheduler(request, actor)
    gate = Gate(runtime_of(request), actor)
    if not request.headers.get("HX-Request"):
        patient = gate.reveal_appointment_patient(appointment_id=appointment_id)
        return render(request, "desk/who_page.html", {"actor": actor, "patient": patient})
    try:
        patient = gate.reveal_appointment_patient(appointment_id=appointment_id)
    except NotFound:
        # In place of the button, the same answer as a missing appointment (the refusal is audited).
        return render(request, "desk/who.html", {"actor": actor, "patient": None}, status_code=404)
    return render(request, "desk/who.html", {"actor": actor, "patient": patient})


@router.post("/{appointment_id}/move")
def move(
    request: Request,
    actor: WebActor,
    appointment_id: str,
    practitioner_id: Annotated[str, Form(max_length=40)],
    expected_version: Annotated[int, Form()],
    start_at: Annotated[str, Form(max_length=30)],
    minutes: Annotated[int, Form(ge=5, le=480)] = 20,
    view: Annotated[str, Form(max_length=5)] = "week",
) -> Response:
    _require_scheduler(request, actor)
    try:
        start = _moment(start_at, "the new start")
        Gate(runtime_of(request), actor).amend_appointment(
            appointment_id=appointment_id,
            expected_version=expected_version,
            start_at=start,
            end_at=start + dt.timedelta(minutes=minutes),
        )
    except (Conflict, InvalidInput) as exc:
        return _page(
            request,
            actor,
            practitioner=practitioner_id,
            day=_day_of(start_at[:10]),
            view=_view(view),
            problem=str(exc),
            status=409 if isinstance(exc, Conflict) else 400,
        )
    return redirect(_where(practitioner_id, localtime.local_day(start), _view(view), done="moved"))


@router.post("/{appointment_id}/cancel")
def cancel(
    request: Request,
    actor: WebActor,
    appointment_id: str,
    practitioner_id: Annotated[str, Form(max_length=40)],
    expected_version: Annotated[int, Form()],
    reason: Annotated[str, Form(max_length=200)],
    day: Annotated[str, Form(max_length=10)] = "",
    view: Annotated[str, Form(max_length=5)] = "week",
) -> Response:
    _require_scheduler(request, actor)
    shown = _day_of(day)
    try:
        Gate(runtime_of(request), actor).cancel_appointment(
            appointment_id=appointment_id, expected_version=expected_version, reason=reason
        )
    except (Conflict, InvalidInput) as exc:
        return _page(
            request,
            actor,
            practitioner=practitioner_id,
            day=shown,
            view=_view(view),
            problem=str(exc),
            status=409 if isinstance(exc, Conflict) else 400,
        )
    return redirect(_where(practitioner_id, shown, _view(view), done="cancelled"))
