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
