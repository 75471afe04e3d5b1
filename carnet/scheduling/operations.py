"""Scheduling operations (run only by the gate kernel, carnet.phi.kernel): book, move, cancel,
a practitioner's calendar, who a slot is for, the clinician's day list."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Select, select

from carnet.access.permissions import Permission
from carnet.access.policy import Relationship
from carnet.audit.interfaces import AuditKind
from carnet.crypto.blind import IndexKind
from carnet.detection.interfaces import Channel, SearchEvent, SearchShape
from carnet.kernel import localtime
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.kernel.ids import new_id, parse_id
from carnet.org.models import Location, Practitioner
from carnet.patients.models import Patient
from carnet.patients.views import patient_view
from carnet.phi import care
from carnet.phi.kernel import NOT_FOUND, RT, GuardedTx, Refused, guarded
from carnet.phi.schemas import (
    AppointmentInput,
    AppointmentView,
    Arrival,
    Arrivals,
    CalendarGrid,
    DayAppointment,
    DayInpatient,
    DayList,
    EncounterView,
    PatientView,
    PractitionerWeek,
    Schedule,
    ScheduleEntry,
)
from carnet.phi.steps import SECTION_LIMIT, facility_practitioner, read_one, redact, section
from carnet.records.views import encounter_data
from carnet.scheduling.models import Appointment, Encounter
from carnet.scheduling.rules import (
    ARRIVABLE,
    ARRIVALS_NAMED,
    ARRIVALS_ROWS,
    ARRIVALS_WINDOW_AFTER,
    ARRIVALS_WINDOW_BEFORE,
    CALENDAR_MAX_PRACTITIONERS,
    INACTIVE_APPOINTMENT,
    SCHEDULE_MAX_DAYS,
    SCHEDULE_PATIENT,
    check_slot,
)
from carnet.scheduling.views import appointment_data

# The day list shows carnet's columns: the Patient as received (FHIR reads) is not decrypted.
AS_RECEIVED = frozenset({"received"})


@guarded(AuditKind.PHI_CREATE, RT.APPOINTMENT, targeted=True)
def book(tx: GuardedTx, /, *, data: AppointmentInput) -> AppointmentView:
    """Book a slot; a practitioner is never double-booked."""
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.APPOINTMENT, write=True)
    practitioner = facility_practitioner(tx, data.practitioner_id, patient.facility_id)
    assert practitioner is not None
    location = parse_id(data.location_id) if data.location_id else None
    if data.location_id is not None:
        row = tx.session.get(Location, location) if location else None
        if row is None or row.facility_id not in tx.ctx.facility_ids:
            raise InvalidInput("unknown location")
    check_slot(tx, practitioner, data.start_at, data.end_at, exclude=None)
    appointment_id = new_id()
    facility = tx.session.get(Practitioner, practitioner)
    assert facility is not None
    appointment = Appointment(
        id=appointment_id,
        facility_id=facility.facility_id,
        patient_id=patient.id,
        practitioner_id=practitioner,
        location_id=location,
        start_at=data.start_at,
        end_at=data.end_at,
        status="booked",
        reason_ct=tx.enc(data.reason, facility.facility_id, "appointments", "reason", appointment_id),
        booked_by=tx.ctx.account_id,
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(appointment)
    tx.session.flush()
    return _written(tx, patient, appointment, "create")


def _to_change(tx: GuardedTx, appointment_id: str) -> tuple[Appointment, Patient]:
    appointment, patient = tx.record_to_change(Appointment, appointment_id)
    tx.authorize(patient, RT.APPOINTMENT, write=True)
    return appointment, patient


@guarded(AuditKind.PHI_UPDATE, RT.APPOINTMENT, targeted=True)
def move(
    tx: GuardedTx,
    /,
    *,
    appointment_id: str,
    expected_version: int,
    start_at: dt.datetime,
    end_at: dt.datetime,
) -> AppointmentView:
    """Move an appointment (If-Match on `expected_version`)."""
    appointment, patient = _to_change(tx, appointment_id)
    if appointment.status in INACTIVE_APPOINTMENT:
        raise Conflict("a cancelled appointment cannot be moved: book a new one")
    check_slot(tx, appointment.practitioner_id, start_at, end_at, exclude=appointment.id)
    tx.bump(Appointment, appointment, expected_version, start_at=start_at, end_at=end_at)
    return _written(tx, patient, appointment, "update")


@guarded(AuditKind.PHI_UPDATE, RT.APPOINTMENT, targeted=True)
def cancel(tx: GuardedTx, /, *, appointment_id: str, expected_version: int, reason: str) -> AppointmentView:
    appointment, patient = _to_change(tx, appointment_id)
    if appointment.status in INACTIVE_APPOINTMENT:
        raise Conflict("this appointment is already cancelled")
    text = reason.strip()
    if not text or len(text) > 200:
        raise InvalidInput("a cancellation needs a reason (at most 200 characters)")
    tx.bump(Appointment, appointment, expected_version, status="cancelled", cancel_reason=text)
    return _written(tx, patient, appointment, "update")


def _written(tx: GuardedTx, patient: Patient, a: Appointment, action: str) -> AppointmentView:
    tx.relationships.clear()  # the write may have made (or ended) a relationship
    all_fields = frozenset(AppointmentView.model_fields) - {"visible"}
    tx.snapshot(RT.APPOINTMENT, a.id, a.version_id, patient, action, appointment_data(tx, a, all_fields))
    rels = tx.relationships_of([patient])
    fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.APPOINTMENT)
    tx.expose([patient.id], Channel.WRITE, rels, fields, resource=RT.APPOINTMENT)
    return redact(AppointmentView, appointment_data(tx, a, fields), fields)


@guarded(AuditKind.PHI_LIST, RT.APPOINTMENT, targeted=False)
def practitioner_schedule(
    tx: GuardedTx, /, *, practitioner_id: str, day_from: dt.date, day_to: dt.date
) -> Schedule:
    """One practitioner's calendar (at most a week), slots only: when, how long, status and
    version of each booked appointment, never who it is for (no patient id, name or reason).
    It exposes no patient: who one slot is for is `reveal_appointment_patient`, one
    appointment at a time, each one patient exposed."""
    tx.require(Permission.APPOINTMENT_READ)
    tx.check_scopes(RT.APPOINTMENT)
    if day_to < day_from or (day_to - day_from).days >= SCHEDULE_MAX_DAYS:
        raise InvalidInput(f"a calendar shows 1 to {SCHEDULE_MAX_DAYS} days")
    pid = parse_id(practitioner_id)
    practitioner = tx.session.get(Practitioner, pid) if pid else None
    if practitioner is None or practitioner.facility_id not in tx.ctx.facility_ids:
        raise InvalidInput("unknown practitioner")
    start, _ = localtime.day_bounds(day_from)
    _, end = localtime.day_bounds(day_to)
    rows = tx.session.execute(
        select(Appointment, Patient)
        .join(Patient, Patient.id == Appointment.patient_id)
        .where(
            Appointment.practitioner_id == practitioner.id,
            Appointment.start_at >= start,
            Appointment.start_at < end,
            Appointment.status.not_in(INACTIVE_APPOINTMENT),
            care.visible_filter(tx.ctx),
        )
        .order_by(Appointment.start_at)
        .limit(SECTION_LIMIT)
    ).all()
    rels = tx.relationships_of([p for _a, p in rows])
    entries: list[ScheduleEntry] = []
    for appointment, patient in rows:
        if not tx.read_fields(rels.get(patient.id, frozenset()), RT.APPOINTMENT):
            continue  # an appointment this actor may not read at all: not even its slot
        entries.append(
            ScheduleEntry(
                id=str(appointment.id),
                start_at=appointment.start_at,
                end_at=appointment.end_at,
                status=appointment.status,
                version_id=appointment.version_id,
            )
        )
        tx.resource_ids.append(str(appointment.id))
    tx.query = f"practitioner={practitioner.id}&from={day_from.isoformat()}&to={day_to.isoformat()}"
    tx.reasons.append("practitioner schedule (slots, no patient)")
    return Schedule(practitioner_id=str(practitioner.id), day_from=day_from, day_to=day_to, entries=entries)


@guarded(AuditKind.PHI_READ, RT.PATIENT, targeted=True)
def reveal_patient(tx: GuardedTx, /, *, appointment_id: str) -> PatientView:
    """Who one appointment is for, asked from a calendar slot: name, birth date and sex only
    (front-desk minimum necessary: no reason, no contact, nothing clinical). One patient
    exposed (channel chart); detection counts each reveal as a lookup by identifier, so
    revealing slot after slot looks like what it is, an identifier sweep. NotFound when the
    appointment is missing or the actor may not read it or its patient."""
    tx.require(Permission.APPOINTMENT_READ)
    aid = parse_id(appointment_id)
    appointment = tx.session.get(Appointment, aid) if aid else None
    if appointment is None:
        raise NotFound(NOT_FOUND)
    patient = tx.patient(appointment.patient_id)
    tx.authorize(patient, RT.APPOINTMENT)
    fields = tx.authorize(patient, RT.PATIENT).fields & SCHEDULE_PATIENT
    if not fields - {"id"}:
        raise Refused("this role may not see who an appointment is for", [patient.id])
    tx.resource_ids.append(str(appointment.id))
    tx.reasons.append("who an appointment is for")
    rels = tx.relationships_of([patient])
    event = SearchEvent(
        shape=SearchShape.IDENTIFIER,
        term_digest=tx.keyring.blind.index(IndexKind.IDENTIFIER, f"appointment:{appointment.id}").hex(),
        page=1,
    )
    tx.expose([patient.id], Channel.CHART, rels, fields, shape=event)
    return patient_view(tx, patient, fields)


@guarded(AuditKind.PHI_LIST, RT.APPOINTMENT, targeted=False)
def day_list(tx: GuardedTx, /, *, day: dt.date | None = None) -> DayList:
    """The clinician's day: their appointments of the day and their current inpatients."""
    tx.require(Permission.DAY_LIST_READ)
    for listed in (RT.PATIENT, RT.APPOINTMENT, RT.ENCOUNTER):
        tx.check_scopes(listed)
    me = tx.ctx.practitioner_id
    if me is None:
        raise Refused("a day list belongs to a practitioner")
    # The Paris day: at 00:30 in Paris (23:30 UTC) the list is already the new day's.
    day = day or localtime.local_day(tx.now)
    start, end = localtime.day_bounds(day)
    visible = care.visible_filter(tx.ctx)
    appointments = tx.session.execute(
        select(Appointment, Patient)
        .join(Patient, Patient.id == Appointment.patient_id)
        .where(
            Appointment.practitioner_id == me,
            Appointment.start_at >= start,
            Appointment.start_at < end,
            Appointment.status.not_in(INACTIVE_APPOINTMENT),
            visible,
        )
        .order_by(Appointment.start_at)
        .limit(SECTION_LIMIT)
    ).all()
    ward_or_attending = care.patient_filter(tx.ctx, {Relationship.ATTENDING, Relationship.WARD})
    stays: list[Any] = []
    if ward_or_attending is not None:
        stays = list(
            tx.session.execute(
                select(Encounter, Patient)
                .join(Patient, Patient.id == Encounter.patient_id)
                .where(Encounter.status == "in-progress", Encounter.kind == "inpatient", ward_or_attending)
                .order_by(Encounter.start_at)
                .limit(SECTION_LIMIT)
            ).all()
        )
    rels = tx.relationships_of([p for _a, p in appointments] + [p for _e, p in stays])
    shown: list[uuid.UUID] = []
    fields_shown: set[str] = set()
    day_appointments = []
    for appointment, patient in appointments:
        p_fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.PATIENT)
        a_fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.APPOINTMENT)
        if not p_fields or not a_fields:
            continue
        day_appointments.append(
            DayAppointment(
                appointment=redact(AppointmentView, appointment_data(tx, appointment, a_fields), a_fields),
                patient=patient_view(tx, patient, p_fields - AS_RECEIVED),
            )
        )
        shown.append(patient.id)
        fields_shown |= p_fields
        tx.resource_ids.append(str(appointment.id))
    inpatients = []
    for encounter, patient in stays:
        p_fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.PATIENT)
        e_fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.ENCOUNTER)
        if not p_fields or not e_fields:
            continue
        inpatients.append(
            DayInpatient(
                encounter=redact(EncounterView, encounter_data(encounter), e_fields),
                patient=patient_view(tx, patient, p_fields - AS_RECEIVED),
            )
        )
        shown.append(patient.id)
        fields_shown |= p_fields
        tx.resource_ids.append(str(encounter.id))
    tx.query = f"day={day.isoformat()}"
    tx.reasons.append("own day list")
    event = SearchEvent(shape=SearchShape.LIST, term_digest=f"day-list:{day.isoformat()}", page=1)
    tx.expose(shown, Channel.LIST, rels, fields_shown, shape=event)
    return DayList(day=day, appointments=day_appointments, inpatients=inpatients)


def appointments_section(pid: uuid.UUID | None) -> Select[Appointment]:
    """The statement of a patient's appointments, newest first (the fast read sends it ahead)."""
    return select(Appointment).where(Appointment.patient_id == pid).order_by(Appointment.start_at.desc())


@guarded(AuditKind.PHI_READ, RT.APPOINTMENT, targeted=True)
def list_for_patient(tx: GuardedTx, /, *, patient_id: str) -> list[AppointmentView]:
    rows, fields = section(tx, patient_id, RT.APPOINTMENT, appointments_section(parse_id(patient_id)))
    return [redact(AppointmentView, appointment_data(tx, r, fields), fields) for r in rows]


@guarded(AuditKind.PHI_READ, RT.APPOINTMENT, targeted=True)
def read(tx: GuardedTx, /, *, appointment_id: str) -> AppointmentView:
    row, fields = read_one(tx, RT.APPOINTMENT, appointment_id)
    return redact(AppointmentView, appointment_data(tx, row, fields), fields)


@dataclasses.dataclass(frozen=True, slots=True)
class _Scoped:
    """A patient as the scope sees it (care.InScope), from a row of a few columns."""

    id: uuid.UUID
    facility_id: uuid.UUID
    opposes_other_facilities: bool


@guarded(AuditKind.PHI_LIST, RT.APPOINTMENT, targeted=False)
def calendar_grid(
    tx: GuardedTx, /, *, day_from: dt.date, day_to: dt.date, practitioner_ids: list[str] | None = None
) -> CalendarGrid:
    """The facility's calendar as a grid, practitioners by days (at most a week): each row the
    booked slots of one practitioner, never who they are for, like `practitioner_schedule`.
    It exposes no patient; the free slots are what the grid leaves out (carnet.scheduling.slots)."""
    tx.require(Permission.APPOINTMENT_READ)
    tx.check_scopes(RT.APPOINTMENT)
    if day_to < day_from or (day_to - day_from).days >= SCHEDULE_MAX_DAYS:
        raise InvalidInput(f"a calendar shows 1 to {SCHEDULE_MAX_DAYS} days")
    chosen = select(Practitioner).where(
        Practitioner.facility_id.in_(tx.ctx.facility_ids),
        Practitioner.active.is_(True),
        Practitioner.profession == "physician",
    )
    if practitioner_ids is not None:
        wanted = [pid for pid in (parse_id(p) for p in practitioner_ids) if pid is not None]
        chosen = chosen.where(Practitioner.id.in_(wanted))
    practitioners = list(
        tx.session.scalars(
            chosen.order_by(Practitioner.family, Practitioner.given).limit(CALENDAR_MAX_PRACTITIONERS)
        )
    )
    start, _ = localtime.day_bounds(day_from)
    _, end = localtime.day_bounds(day_to)
    ids = [p.id for p in practitioners]
    # Only the columns a slot shows and the scope needs: a week of a facility is up to 2,000
    # appointments, and loading each whole appointment and patient row (encrypted columns
    # included, none of which the grid shows) was most of the page's cost.
    rows = (
        tx.session.connection()
        .execute(
            select(
                Appointment.id,
                Appointment.practitioner_id,
                Appointment.start_at,
                Appointment.end_at,
                Appointment.status,
                Appointment.version_id,
                Patient.id.label("patient_id"),
                Patient.facility_id.label("patient_facility_id"),
                Patient.opposes_other_facilities,
            )
            .join(Patient, Patient.id == Appointment.patient_id)
            .where(
                Appointment.practitioner_id.in_(ids),
                Appointment.start_at >= start,
                Appointment.start_at < end,
                Appointment.status.not_in(INACTIVE_APPOINTMENT),
                care.visible_filter(tx.ctx),
            )
            .order_by(Appointment.start_at)
            .limit(SECTION_LIMIT * 4)
        )
        .all()
        if ids
        else []
    )
    rels = tx.relationships_of(
        _Scoped(r.patient_id, r.patient_facility_id, r.opposes_other_facilities) for r in rows
    )
    readable: dict[frozenset[Relationship], bool] = {}
    by_practitioner: dict[uuid.UUID, list[ScheduleEntry]] = {p.id: [] for p in practitioners}
    for row in rows:
        rel = rels.get(row.patient_id, frozenset())
        if rel not in readable:  # the same decision for every patient with these relationships
            readable[rel] = bool(tx.read_fields(rel, RT.APPOINTMENT))
        if not readable[rel]:
            continue  # an appointment this actor may not read at all: not even its slot
        by_practitioner[row.practitioner_id].append(
            ScheduleEntry(
                id=str(row.id),
                start_at=row.start_at,
                end_at=row.end_at,
                status=row.status,
                version_id=row.version_id,
            )
        )
    tx.query = f"calendar;from={day_from.isoformat()}&to={day_to.isoformat()}&rows={len(practitioners)}"
    tx.reasons.append("calendar grid (slots, no patient)")
    return CalendarGrid(
        day_from=day_from,
        day_to=day_to,
        rows=[
            PractitionerWeek(
                practitioner_id=str(p.id), name=f"{p.given} {p.family}", entries=by_practitioner[p.id]
            )
            for p in practitioners
        ],
    )


# An appointment of the list not named: its slot, as the calendar shows it (no patient).
ARRIVAL_SLOT = frozenset({"facility_id", "practitioner_id", "start_at", "end_at", "status", "version_id"})


def _nearest_now(
    tx: GuardedTx, facilities: list[uuid.UUID], day_start: dt.datetime, day_end: dt.datetime
) -> set[uuid.UUID]:
    """The ARRIVALS_NAMED appointments of today nearest now (the hour before, the two after):
    the only ones the arrivals list names, whatever its window."""
    base = (
        select(Appointment.id, Appointment.start_at)
        .join(Patient, Patient.id == Appointment.patient_id)
        .where(
            Appointment.facility_id.in_(facilities),
            Appointment.status.not_in(INACTIVE_APPOINTMENT),
            care.visible_filter(tx.ctx),
        )
    )
    ahead = tx.session.execute(
        base.where(
            Appointment.start_at >= tx.now,
            Appointment.start_at < min(tx.now + ARRIVALS_WINDOW_AFTER, day_end),
        )
        .order_by(Appointment.start_at, Appointment.id)
        .limit(ARRIVALS_NAMED)
    ).all()
    behind = tx.session.execute(
        base.where(
            Appointment.start_at >= max(tx.now - ARRIVALS_WINDOW_BEFORE, day_start),
            Appointment.start_at < tx.now,
        )
        .order_by(Appointment.start_at.desc(), Appointment.id)
        .limit(ARRIVALS_NAMED)
    ).all()
    nearest = sorted([*ahead, *behind], key=lambda row: abs(row[1] - tx.now))
    return {row[0] for row in nearest[:ARRIVALS_NAMED]}


@guarded(AuditKind.PHI_LIST, RT.APPOINTMENT, targeted=False)
def arrivals(tx: GuardedTx, /, *, window_start: dt.datetime | None = None) -> Arrivals:
    """The front desk's arrivals: today's appointments (the Paris day) at the actor's facility
    in a window around now (or from `window_start`, kept within today) and their status, to
    check patients in. Who each is for (name, birth date, sex) is shown for the appointments
    nearest now only (ARRIVALS_NAMED: carnet.scheduling.rules); the others are slots. Counted
    as one list of the day, like the day list: refreshing it after each check-in, or moving
    its window, is the same list; the desk sees who is expected now, not the register."""
    tx.require(Permission.APPOINTMENT_WRITE)
    for listed in (RT.PATIENT, RT.APPOINTMENT):
        tx.check_scopes(listed)
    if tx.ctx.practitioner_id is not None:
        raise Refused("the arrivals list is the front desk's (clinicians have their day list)")
    # Its own facility: the desk where the clerk works, not every facility of their grants.
    here = tx.ctx.acting_facility_id
    facilities = [here] if here is not None else list(tx.ctx.facility_ids)
    day = localtime.local_day(tx.now)
    day_start, day_end = localtime.day_bounds(day)
    start = window_start if window_start is not None else tx.now - ARRIVALS_WINDOW_BEFORE
    if start.tzinfo is None:
        raise InvalidInput("the window start needs a time zone")
    start = min(max(start, day_start), day_end - dt.timedelta(minutes=1))
    end = min(start + ARRIVALS_WINDOW_BEFORE + ARRIVALS_WINDOW_AFTER, day_end)
    rows = tx.session.execute(
        select(Appointment, Patient, Practitioner)
        .join(Patient, Patient.id == Appointment.patient_id)
        .join(Practitioner, Practitioner.id == Appointment.practitioner_id)
        .where(
            Appointment.facility_id.in_(facilities),
            Appointment.start_at >= start,
            Appointment.start_at < end,
            Appointment.status.not_in(INACTIVE_APPOINTMENT),
            care.visible_filter(tx.ctx),
        )
        .order_by(Appointment.start_at, Appointment.id)
        .limit(ARRIVALS_ROWS + 1)
    ).all()
    more = len(rows) > ARRIVALS_ROWS
    rows = rows[:ARRIVALS_ROWS]
    named = _nearest_now(tx, facilities, day_start, day_end) if rows else set()
    rels = tx.relationships_of([p for a, p, _pr in rows if a.id in named])
    entries: list[Arrival] = []
    shown: list[uuid.UUID] = []
    fields_shown: set[str] = set()
    for appointment, patient, practitioner in rows:
        rel = rels.get(patient.id, frozenset())
        p_fields = tx.read_fields(rel, RT.PATIENT) & SCHEDULE_PATIENT if appointment.id in named else set()
        a_fields = tx.read_fields(rel, RT.APPOINTMENT) - {"reason"} if p_fields else ARRIVAL_SLOT
        if p_fields and (not p_fields - {"id"} or not a_fields):
            continue
        entries.append(
            Arrival(
                appointment=redact(AppointmentView, appointment_data(tx, appointment, a_fields), a_fields),
                patient=patient_view(tx, patient, frozenset(p_fields)) if p_fields else None,
                practitioner_name=f"{practitioner.given} {practitioner.family}",
            )
        )
        tx.resource_ids.append(str(appointment.id))
        if p_fields:
            shown.append(patient.id)
            fields_shown |= p_fields
    tx.query = f"arrivals;day={day.isoformat()}&from={start.isoformat()}"
    tx.reasons.append("today's arrivals")
    # One list per day, whichever window: detection counts its patients, not its refreshes.
    event = SearchEvent(shape=SearchShape.LIST, term_digest=f"arrivals:{day.isoformat()}", page=1)
    tx.expose(shown, Channel.LIST, rels, fields_shown, shape=event)
    return Arrivals(day=day, window_start=start, window_end=end, entries=entries, more=more)


@guarded(AuditKind.PHI_UPDATE, RT.APPOINTMENT, targeted=True)
def check_in(tx: GuardedTx, /, *, appointment_id: str, expected_version: int) -> AppointmentView:
    """The patient is here: a booked appointment of today becomes arrived (If-Match on
    `expected_version`)."""
    appointment, patient = _to_change(tx, appointment_id)
    if appointment.status not in ARRIVABLE:
        raise Conflict(f"this appointment is {appointment.status}: only a booked one is checked in")
    if localtime.local_day(appointment.start_at) != localtime.local_day(tx.now):
        raise InvalidInput("only today's appointments are checked in")
    tx.bump(Appointment, appointment, expected_version, status="arrived")
    return _written(tx, patient, appointment, "update")
