"""FHIR Appointment, through the gate: searched by patient (practitioner, date, status), read,
booked (create), moved or cancelled (update, If-Match); a delete cancels (the appointment and
its history stay). Every kept version by vread and `_history`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.appointment import Appointment

from carnet.fhir.core.api import (
    FhirBody,
    checked,
    expected_version,
    gate_for,
    parse_instant,
    reference_id,
    resource_response,
    validated,
    version_or_current,
)
from carnet.fhir.core.bundles import history_response, vread_response
from carnet.fhir.core.mapping import (
    DELETED_REASON,
    clean,
    meta,
    ref,
    schema_input,
    when,
)
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import (
    Found,
    Query,
    Search,
    chart_section,
    date,
    day_span,
    one_record,
    reference,
    respond,
    token,
)
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput
from carnet.phi.gate import Gate
from carnet.phi.schemas import AppointmentInput, ScheduleEntry

router = APIRouter(prefix="/fhir", tags=["fhir"])
APPOINTMENT = "Appointment"


# == mapping ===================================================================================
def appointment_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    participants: list[dict[str, Any]] = [
        {"actor": ref(t, d.get(key)), "status": "accepted"}
        for t, key in (
            ("Patient", "patient_id"),
            ("Practitioner", "practitioner_id"),
            ("Location", "location_id"),
        )
        if d.get(key)
    ]
    if not participants:  # R4 needs one; a redacted view still names nobody
        participants = [{"status": "accepted", "type": [{"text": "redacted"}]}]
    resource = clean(
        {
            "resourceType": "Appointment",
            "id": d["id"],
            "meta": meta(d),
            "status": d.get("status") or "booked",
            "description": d.get("reason"),
            "cancelationReason": {"text": d["cancel_reason"]} if d.get("cancel_reason") else None,
            "start": when(d.get("start_at")),
            "end": when(d.get("end_at")),
            "participant": participants,
        }
    )
    return checked(Appointment, resource)


def _participant(body: dict[str, Any], resource_type: str) -> str | None:
    for p in body.get("participant") or []:
        ref = (p.get("actor") or {}).get("reference") or ""
        if ref.split("/")[-2:-1] == [resource_type]:
            return reference_id(ref, resource_type)
    return None


def appointment_times(body: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    if not body.get("start") or not body.get("end"):
        raise InvalidInput("an Appointment needs start and end")
    return parse_instant(body["start"], "start"), parse_instant(body["end"], "end")


def appointment_input(body: dict[str, Any]) -> AppointmentInput:
    patient = _participant(body, "Patient")
    practitioner = _participant(body, "Practitioner")
    if patient is None or practitioner is None:
        raise InvalidInput("an Appointment needs a Patient and a Practitioner participant")
    start, end = appointment_times(body)
    values = {
        "patient_id": patient,
        "practitioner_id": practitioner,
        "location_id": _participant(body, "Location"),
        "start_at": start,
        "end_at": end,
        "reason": body.get("description"),
    }
    return schema_input(AppointmentInput, values, "Appointment")  # type: ignore[no-any-return]


# == routes ====================================================================================
def slot_to_fhir(entry: ScheduleEntry, practitioner_id: str) -> dict[str, Any]:
    """One slot of a colleague's calendar: when, its status, whose calendar; never whom for."""
    resource = {
        "resourceType": "Appointment",
        "id": entry.id,
        "meta": {"versionId": str(entry.version_id)},
        "status": entry.status,
        "start": when(entry.start_at),
        "end": when(entry.end_at),
        "participant": [{"actor": ref("Practitioner", practitioner_id), "status": "accepted"}],
    }
    return checked(Appointment, resource)


def worklist(gate: Gate, query: Query) -> Found | None:
    """`practitioner=<me>&date=...`: my appointments, as my day list shows them (one list
    exposure a day, bounded to a week); another practitioner's calendar is slots only (the
    gate's practitioner_schedule: who each is for is not listed), where the role may see it."""
    named = query.named("practitioner", "actor")
    if not named:
        return None
    values = [v for c in named for v in c.values]
    practitioner = reference_id(values[0], "Practitioner") if len(values) == 1 else None
    if practitioner is None:
        raise InvalidInput("a worklist is one practitioner's: practitioner=Practitioner/<id>")
    days = day_span(query.named("date"), clock.now().date(), SCHEDULE_DAYS)
    if not days:
        return Found([])
    if str(gate.actor.practitioner_id) == practitioner:
        return Found(
            [
                appointment_to_fhir(a.appointment.model_dump())
                for day in days
                for a in gate.day_list(day=day).appointments
            ]
        )
    schedule = gate.practitioner_schedule(practitioner_id=practitioner, day_from=days[0], day_to=days[-1])
    return Found([slot_to_fhir(e, practitioner) for e in schedule.entries])


SCHEDULE_DAYS = 7  # a week at a time, as a practitioner's calendar
SEARCH = Search(
    APPOINTMENT,
    {
        "patient": reference("participant.actor", target="Patient"),
        "practitioner": reference("participant.actor", target="Practitioner"),
        "actor": reference("participant.actor"),
        "location": reference("participant.actor", target="Location"),
        "date": date("start"),
        "status": token("status"),
    },
    fetch=chart_section("list_appointments", appointment_to_fhir),
    read=one_record("read_appointment", "appointment_id", appointment_to_fhir),
    source=worklist,
    subjects=("patient",),
    includes=("patient",),
)


@router.get("/Appointment")
def search_appointments(request: Request) -> Response:
    return respond(request, SEARCH)


@router.post("/Appointment")
def create_appointment(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    gate = gate_for(request, APPOINTMENT, "create")
    resource = validated(Appointment, body, APPOINTMENT)
    if resource.get("status") not in (None, "booked", "proposed", "pending"):
        raise InvalidInput("a new Appointment is booked")
    view = gate.book_appointment(data=appointment_input(resource))
    return resource_response(request, appointment_to_fhir(view.model_dump()), status=201)


@router.get("/Appointment/{appointment_id}")
def read_appointment(request: Request, appointment_id: str) -> Response:
    gate = gate_for(request, APPOINTMENT, "read")
    view = gate.read_appointment(appointment_id=appointment_id)
    return resource_response(request, appointment_to_fhir(view.model_dump()))


@router.put("/Appointment/{appointment_id}")
def update_appointment(request: Request, appointment_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """Move an appointment (new start/end) or cancel it (status cancelled + cancelationReason)."""
    gate = gate_for(request, APPOINTMENT, "update")
    resource = validated(Appointment, body, APPOINTMENT)
    if resource.get("id") != appointment_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    if resource.get("status") == "cancelled":
        reason = (resource.get("cancelationReason") or {}).get("text")
        if not reason:
            raise InvalidInput("a cancellation needs cancelationReason.text")
        view = gate.cancel_appointment(appointment_id=appointment_id, expected_version=version, reason=reason)
    else:
        start, end = appointment_times(resource)
        view = gate.amend_appointment(
            appointment_id=appointment_id, expected_version=version, start_at=start, end_at=end
        )
    return resource_response(request, appointment_to_fhir(view.model_dump()))


@router.delete("/Appointment/{appointment_id}")
def delete_appointment(request: Request, appointment_id: str) -> Response:
    """A delete cancels (the appointment and its history stay)."""
    gate = gate_for(request, APPOINTMENT, "delete")
    version = version_or_current(request, lambda: gate.read_appointment(appointment_id=appointment_id))
    view = gate.cancel_appointment(
        appointment_id=appointment_id, expected_version=version, reason="deleted through the FHIR API"
    )
    return resource_response(request, appointment_to_fhir(view.model_dump()))


@router.get("/Appointment/{appointment_id}/_history")
def appointment_history(request: Request, appointment_id: str) -> Response:
    return history_response(request, APPOINTMENT, appointment_id, appointment_to_fhir)


@router.get("/Appointment/{appointment_id}/_history/{version_id}")
def vread_appointment(request: Request, appointment_id: str, version_id: str) -> Response:
    return vread_response(request, APPOINTMENT, appointment_id, version_id, appointment_to_fhir)


# == in a Bundle, and the declaration ==========================================================
def appointment_change(r: dict[str, Any], rid: str, version: int) -> tuple[str, dict[str, Any]]:
    if r.get("status") == "cancelled":
        reason = (r.get("cancelationReason") or {}).get("text")
        if not reason:
            raise InvalidInput("a cancellation needs cancelationReason.text")
        return "cancel_appointment", {"appointment_id": rid, "expected_version": version, "reason": reason}
    start, end = appointment_times(r)
    return "amend_appointment", {
        "appointment_id": rid,
        "expected_version": version,
        "start_at": start,
        "end_at": end,
    }


MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            APPOINTMENT,
            ("read", "vread", "history-instance", "search-type", "create", "update", "delete"),
            searcher=SEARCH,
            writes=Writes(
                Appointment,
                appointment_to_fhir,
                creates="book_appointment",
                create=lambda r, g, m: ("book_appointment", {"data": appointment_input(r)}),
                # A PUT's operation depends on its content (an Appointment is moved or cancelled).
                updates=lambda r: (
                    "cancel_appointment" if r.get("status") == "cancelled" else "amend_appointment"
                ),
                update=appointment_change,
                delete=lambda rid, v: (
                    "cancel_appointment",
                    {"appointment_id": rid, "expected_version": v, "reason": DELETED_REASON},
                ),
                current=lambda g, rid: g.read_appointment(appointment_id=rid),
            ),
        ),
    ),
)
