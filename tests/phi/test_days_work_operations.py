"""The day's work through the gate, on SQLite and PostgreSQL: the arrivals list (today, the
clerk's facility, name and birth date only) and check-in, the calendar grid (slots, no patient),
the billing worklist (unpaid, with lines, nothing clinical) and the nurse's ward board."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from carnet.access.roles import Role
from carnet.kernel import clock, localtime
from carnet.kernel.errors import Conflict, Forbidden, InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.phi.schemas import AppointmentInput
from carnet.runtime import Runtime
from tests import factories as f

MORNING = dt.datetime(2026, 12, 8, 8, 30, tzinfo=dt.UTC)  # Tuesday 09:30 in Paris


def test_the_days_work_lists(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    today = localtime.local_day(clock.now())
    facility = f.make_facility(runtime)
    elsewhere = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    nurse = f.make_nurse(runtime, facility)
    desk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    billing = f.make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    ward, other_ward = f.make_location(runtime, facility), f.make_location(runtime, facility)
    assert nurse.practitioner_id is not None and doctor.practitioner_id is not None
    f.assign_ward(runtime, practitioner_id=nurse.practitioner_id, location_id=ward, facility_id=facility)
    due = f.register_patient(runtime, facility, family="Attendu", by=desk)
    later = f.register_patient(runtime, facility, family="Demain", by=desk)
    inpatient = f.register_patient(runtime, facility, family="Hospitalise", by=desk)
    moved = f.register_patient(runtime, facility, family="Ailleurs", by=desk)
    away = f.register_patient(runtime, elsewhere, family="Autre")
    gate = Gate(runtime, desk)

    def book(patient: str, start: dt.datetime) -> str:
        data = AppointmentInput(
            patient_id=patient,
            practitioner_id=str(doctor.practitioner_id),
            start_at=start,
            end_at=start + dt.timedelta(minutes=20),
            reason="bilan",
        )
        return gate.book_appointment(data=data).id

    appointment = book(due.id, localtime.at(today, dt.time(10, 0)))
    book(later.id, localtime.at(today + dt.timedelta(days=1), dt.time(10, 0)))
    f.admit(runtime, patient_id=inpatient.id, facility_id=facility, location_id=ward)
    f.admit(runtime, patient_id=moved.id, facility_id=facility, location_id=other_ward)
    invoice = f.make_invoice(runtime, patient_id=inpatient.id, facility_id=facility)
    f.make_invoice(runtime, patient_id=away.id, facility_id=elsewhere)

    arrivals = gate.arrivals()
    assert [(e.patient.family, e.appointment.status) for e in arrivals.entries] == [("Attendu", "booked")]
    assert arrivals.entries[0].appointment.reason is None  # never why
    assert arrivals.entries[0].patient.phone is None  # who, not how to reach them
    checked = gate.check_in(appointment_id=appointment, expected_version=1)
    assert checked.status == "arrived"
    with pytest.raises(Conflict):
        gate.check_in(appointment_id=appointment, expected_version=2)  # already arrived
    with pytest.raises(InvalidInput):
        gate.arrivals(window_start=dt.datetime(2026, 12, 8, 9, 0))  # no time zone
    with pytest.raises((Forbidden, NotFound)):
        Gate(runtime, doctor).arrivals()  # clinicians have their day list

    grid = gate.calendar_grid(day_from=today, day_to=today + dt.timedelta(days=4))
    (row,) = [r for r in grid.rows if r.practitioner_id == str(doctor.practitioner_id)]
    assert len(row.entries) == 2 and not hasattr(row.entries[0], "patient_id")

    worklist = Gate(runtime, billing).billing_worklist()
    assert [(i.invoice.id, i.patient.family) for i in worklist.items] == [(str(invoice), "Hospitalise")]
    assert worklist.items[0].invoice.lines and worklist.items[0].patient.ins is None
    with pytest.raises(InvalidInput):
        Gate(runtime, billing).billing_worklist(page=0)

    board = Gate(runtime, nurse).ward_board()
    assert [(w.id, [s.patient.family for s in w.stays]) for w in board.wards] == [
        (str(ward), ["Hospitalise"])
    ]
    with pytest.raises((Forbidden, NotFound)):
        Gate(runtime, doctor).ward_board()
    assert uuid.UUID(board.wards[0].stays[0].encounter.id)


def test_arrivals_name_only_the_patients_expected_nearest_now(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    """Whatever window the desk asks for, the list names the ARRIVALS_NAMED appointments nearest
    now; the others are slots (no patient), so no window or refresh shows more of the day."""
    from carnet.scheduling.rules import ARRIVALS_NAMED

    movable_clock.set(MORNING)  # 09:30 in Paris
    today = localtime.local_day(clock.now())
    facility = f.make_facility(runtime)
    doctors = [f.make_physician(runtime, facility) for _ in range(2)]
    desk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    gate = Gate(runtime, desk)
    starts = [localtime.at(today, dt.time(8, 0)) + dt.timedelta(minutes=5 * i) for i in range(24)]
    starts += [localtime.at(today, dt.time(15, 0)) + dt.timedelta(minutes=10 * i) for i in range(6)]
    for n, start in enumerate(starts):
        patient = f.register_patient(runtime, facility, family=f"Patient{n:02d}", by=desk)
        gate.book_appointment(
            data=AppointmentInput(
                patient_id=patient.id,
                practitioner_id=str(doctors[n % 2].practitioner_id),
                start_at=start,
                end_at=start + dt.timedelta(minutes=5),
            )
        )
    now = clock.now()
    nearest = sorted(
        (s for s in starts if now - dt.timedelta(hours=1) <= s < now + dt.timedelta(hours=2)),
        key=lambda s: abs(s - now),
    )[:ARRIVALS_NAMED]
    for window in (None, localtime.at(today, dt.time(7, 0)), localtime.at(today, dt.time(14, 0))):
        listing = gate.arrivals(window_start=window)
        named = {e.appointment.start_at for e in listing.entries if e.patient is not None}
        assert named <= set(nearest), window
        assert all(e.appointment.patient_id is None for e in listing.entries if e.patient is None)
    morning = gate.arrivals(window_start=localtime.at(today, dt.time(8, 0)))
    assert len(nearest) == ARRIVALS_NAMED  # more in the hours around now than the list names
    assert (
        len(morning.entries) == 24 and sum(e.patient is not None for e in morning.entries) == ARRIVALS_NAMED
    )
    afternoon = gate.arrivals(window_start=localtime.at(today, dt.time(14, 0)))
    assert len(afternoon.entries) == 6 and all(e.patient is None for e in afternoon.entries)
