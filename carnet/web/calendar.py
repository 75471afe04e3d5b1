"""The calendar grid: the facility's practitioners by the days of a week, each cell the free
and booked slots of that day; one practitioner's week as a grid of slots; booking a free slot
with a reason.

Slots come from `Gate.calendar_grid` (when, never who: no patient exposed) and the opening
hours cut into slots (carnet.scheduling.slots), all on the Paris wall clock. Who a booked slot
is for stays the calendar's "Who is this?" (one patient, audited). Booking goes through the
gate, so the double-booking rule (carnet.scheduling.rules) holds even for a slot taken since
the page was shown: the refusal is shown and nothing is booked.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.identity.dependencies import runtime_of
from carnet.kernel import clock, localtime
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.phi.gate import Gate
from carnet.phi.schemas import AppointmentInput, PatientView
from carnet.scheduling import slots
from carnet.web.rendering import render
from carnet.web.routing import WebActor, WebRoute, redirect, refuse

router = APIRouter(prefix="/desk/calendar", route_class=WebRoute, include_in_schema=False)

SCHEDULING_ROLES = frozenset({Role.FRONT_DESK, Role.PHYSICIAN, Role.NURSE})
WORK_DAYS = 5  # Monday to Friday
DONE = {"booked"}


def _require_scheduler(request: Request, actor: Actor, kind: AuditKind = AuditKind.PHI_LIST) -> None:
    if not actor.roles & SCHEDULING_ROLES:
        raise refuse(
            request,
            actor,
            kind=kind,
            resource_type="Appointment",
            reason="the calendar is for front-desk staff and clinicians",
        )


def _where(day: dt.date, practitioner: str = "", patient: str = "", **extra: str) -> str:
    query = {"day": day.isoformat()}
    if practitioner:
        query["practitioner"] = practitioner
    if patient:
        query["patient"] = patient
    query.update(extra)
    return "/desk/calendar?" + urlencode(query)


def _slot(value: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else None


def _page(
    request: Request,
    actor: Actor,
    *,
    day: dt.date,
    practitioner: str = "",
    patient: str = "",
    slot: str = "",
    done: str = "",
    problem: str | None = None,
    reason: str = "",
    status: int = 200,
) -> Response:
    gate = Gate(runtime_of(request), actor)
    monday = day - dt.timedelta(days=day.weekday())
    days = [monday + dt.timedelta(days=n) for n in range(WORK_DAYS)]
    grid = gate.calendar_grid(day_from=days[0], day_to=days[-1])
    now = clock.now()
    # Practitioners by days: each cell's slots (free or booked) from the booked entries.
    cells: dict[tuple[str, dt.date], list[slots.Slot]] = {}
    # Each cell's free (not yet begun) and booked slot counts, counted here once rather than by
    # template filters over every slot of every cell.
    counts: dict[tuple[str, dt.date], tuple[int, int]] = {}
    for row in grid.rows:
        busy_by_day: dict[dt.date, list[tuple[dt.datetime, dt.datetime]]] = {d: [] for d in days}
        for e in row.entries:
            busy_by_day.setdefault(localtime.local_day(e.start_at), []).append((e.start_at, e.end_at))
        for d in days:
            day_slots = slots.day_slots(d, busy_by_day[d], now=now)
            cells[(row.practitioner_id, d)] = day_slots
            counts[(row.practitioner_id, d)] = (
                sum(1 for s in day_slots if s.free and not s.past),
                sum(1 for s in day_slots if not s.free),
            )
    chosen = next((r for r in grid.rows if r.practitioner_id == practitioner), None)
    booking_for: PatientView | None = gate.read_patient(patient_id=patient) if patient else None
    picked = _slot(slot) if slot else None
    # One practitioner's week: a row per slot time, a column per day.
    times: list[dt.time] = []
    week: dict[tuple[dt.time, dt.date], dict[str, Any]] = {}
    if chosen is not None:
        for d in days:
            for s in cells[(chosen.practitioner_id, d)]:
                wall = localtime.local(s.start).time()
                if wall not in times:
                    times.append(wall)
                week[(wall, d)] = {
                    "slot": s,
                    "entries": [e for e in chosen.entries if s.start <= e.start_at < s.end],
                }
        times.sort()
    context = {
        "actor": actor,
        "grid": grid,
        "days": days,
        "cells": cells,
        "counts": counts,
        "chosen": chosen,
        "times": times,
        "week": week,
        "today": localtime.local_day(now),
        "shown_day": day,
        "previous": _where(monday - dt.timedelta(days=7), practitioner, patient),
        "next": _where(monday + dt.timedelta(days=7), practitioner, patient),
        "this_week": _where(localtime.local_day(now), practitioner, patient),
        "where": _where,
        "booking_for": booking_for,
        "picked": picked,
        "picked_day": localtime.local_day(picked) if picked else None,
        "slot_minutes": int(slots.SLOT.total_seconds() // 60),
        "problem": problem,
        "reason": reason,
        "done": done if done in DONE else "",
        "here": {"day": day.isoformat(), "practitioner": practitioner, "patient": patient},
    }
    return render(request, "work/calendar.html", context, status_code=status)


@router.get("")
def calendar(
    request: Request,
    actor: WebActor,
    day: dt.date | None = None,
    practitioner: str = "",
    patient: str = "",
    slot: str = "",
    done: str = "",
) -> Response:
    _require_scheduler(request, actor)
    return _page(
        request,
        actor,
        day=day or localtime.local_day(clock.now()),
        practitioner=practitioner[:40],
        patient=patient[:40],
        slot=slot[:40],
        done=done,
    )


def _day_of(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return localtime.local_day(clock.now())


@router.post("/lookup")
def lookup(
    request: Request,
    actor: WebActor,
    ins: Annotated[str, Form(max_length=20)],
    day: Annotated[str, Form(max_length=10)] = "",
    practitioner: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """The patient to book for, by their INS sent in the form body (never in a URL)."""
    _require_scheduler(request, actor)
    shown = _day_of(day)
    try:
        found = Gate(runtime_of(request), actor).search_patients(identifier=ins.strip(), count=2)
    except InvalidInput as exc:
        return _page(request, actor, day=shown, practitioner=practitioner, problem=str(exc), status=400)
    if len(found.items) != 1:
        problem = "no patient has this identifier in your facilities"
        return _page(request, actor, day=shown, practitioner=practitioner, problem=problem, status=404)
    return redirect(_where(shown, practitioner, found.items[0].id))


@router.post("/book")
def book(
    request: Request,
    actor: WebActor,
    patient_id: Annotated[str, Form(max_length=40)],
    practitioner_id: Annotated[str, Form(max_length=40)],
    start_at: Annotated[str, Form(max_length=40)],
    reason: Annotated[str, Form(max_length=500)] = "",
    minutes: Annotated[int, Form(ge=5, le=480)] = 20,
) -> Response:
    """Book the free slot picked in the grid, with the reason for the visit (required)."""
    _require_scheduler(request, actor, AuditKind.PHI_CREATE)
    start = _slot(start_at)
    shown = localtime.local_day(start) if start else localtime.local_day(clock.now())

    def again(problem: str, status: int) -> Response:
        return _page(
            request,
            actor,
            day=shown,
            practitioner=practitioner_id,
            patient=patient_id,
            slot=start_at,
            problem=problem,
            reason=reason,
            status=status,
        )

    if start is None:
        return again("the slot must be a date and time", 400)
    if not reason.strip():
        return again("say why the patient is coming (the reason for the visit)", 400)
    try:
        data = AppointmentInput(
            patient_id=patient_id,
            practitioner_id=practitioner_id,
            start_at=start,
            end_at=start + dt.timedelta(minutes=minutes),
            reason=reason.strip(),
        )
        Gate(runtime_of(request), actor).book_appointment(data=data)
    except (Conflict, InvalidInput) as exc:
        return again(str(exc), 409 if isinstance(exc, Conflict) else 400)
    return redirect(_where(shown, practitioner_id, patient_id, done="booked"))
