"""Writes through the gate: encrypted and versioned, duplicates caught, stale versions and
double bookings refused with nothing changed, notes amended never overwritten."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from carnet.access.roles import Role
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.patients.models import Patient, ResourceVersion
from carnet.phi.gate import Gate
from carnet.phi.schemas import AppointmentInput, PatientChanges
from carnet.runtime import Runtime
from carnet.scheduling.models import Appointment
from tests import factories as f


def test_registration_encrypts_and_catches_duplicates(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    patient = f.register_patient(
        runtime, facility, family="Lefèvre", given="Zoé", ins="2850575123456", by=clerk
    )
    assert patient.family == "Lefèvre" and patient.version_id == 1
    with runtime.session_factory() as session:
        raw = session.execute(sa.select(Patient.family_ct, Patient.phone_ct)).one()
        snapshot = session.scalars(sa.select(ResourceVersion.snapshot_ct)).one()
    assert all(b"Lef" not in blob and b"06 12" not in blob for blob in (*raw, snapshot))
    with pytest.raises(Conflict):  # same INS
        f.register_patient(runtime, facility, family="Autre", ins="2 85 05 75 123 456", by=clerk)
    with pytest.raises(Conflict):  # same names and birth date, written differently
        f.register_patient(runtime, facility, family="LEFEVRE", given="zoe", by=clerk)
    other = f.make_facility(runtime)
    with pytest.raises(Exception) as outside:  # not the clerk's facility
        f.register_patient(runtime, other, by=clerk)
    assert type(outside.value).__name__ == "Forbidden"
    with runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Patient)) == 1


def test_update_needs_the_current_version(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    patient = f.register_patient(runtime, facility, by=clerk)
    gate = Gate(runtime, clerk)
    updated = gate.update_patient(
        patient_id=patient.id, expected_version=1, changes=PatientChanges(family="Durand")
    )
    assert updated.family == "Durand" and updated.version_id == 2
    with pytest.raises(Conflict):
        gate.update_patient(patient_id=patient.id, expected_version=1, changes=PatientChanges(family="Perdu"))
    assert gate.read_patient(patient_id=patient.id).family == "Durand"
    assert gate.search_patients(family="durand", birth_date=dt.date(1970, 5, 17)).items[0].id == patient.id
    assert gate.search_patients(family="martin", birth_date=dt.date(1970, 5, 17)).items == []
    history = gate.history(resource_type="Patient", resource_id=patient.id)
    assert [(v.version_id, v.data["family"]) for v in history] == [(1, "Martin"), (2, "Durand")]
    with pytest.raises(InvalidInput):
        gate.update_patient(patient_id=patient.id, expected_version=2, changes=PatientChanges())


def test_appointments_never_double_book(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    first, second = f.register_patient(runtime, facility), f.register_patient(runtime, facility)
    gate = Gate(runtime, clerk)
    nine = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=3)

    def slot(patient: str, start: dt.datetime, minutes: int = 30) -> AppointmentInput:
        return AppointmentInput(
            patient_id=patient,
            practitioner_id=str(doctor.practitioner_id),
            start_at=start,
            end_at=start + dt.timedelta(minutes=minutes),
            reason="douleur thoracique",
        )

    booked = gate.book_appointment(data=slot(first.id, nine))
    assert booked.status == "booked" and booked.reason is None  # front desk: no clinical reason
    with pytest.raises(Conflict):
        gate.book_appointment(data=slot(second.id, nine + dt.timedelta(minutes=15)))
    with pytest.raises(InvalidInput):
        gate.book_appointment(data=slot(second.id, nine, minutes=-5))
    later = gate.book_appointment(data=slot(second.id, nine + dt.timedelta(minutes=30)))
    with pytest.raises(Conflict):  # moving onto a booked slot
        gate.amend_appointment(
            appointment_id=later.id, expected_version=1, start_at=nine, end_at=nine + dt.timedelta(minutes=30)
        )
    cancelled = gate.cancel_appointment(appointment_id=booked.id, expected_version=1, reason="annulé")
    assert cancelled.status == "cancelled" and cancelled.version_id == 2
    moved = gate.amend_appointment(
        appointment_id=later.id, expected_version=1, start_at=nine, end_at=nine + dt.timedelta(minutes=30)
    )
    assert moved.start_at == nine and moved.version_id == 2
    # The physician now has both patients (appointments in the window) and sees the reason.
    assert Gate(runtime, doctor).list_appointments(patient_id=second.id)[0].reason == "douleur thoracique"
    # A physician cannot book a patient outside their care to give themselves access.
    stranger = f.register_patient(runtime, facility)
    with pytest.raises(NotFound):
        Gate(runtime, doctor).book_appointment(data=slot(stranger.id, nine + dt.timedelta(hours=4)))


def test_notes_are_amended_never_overwritten(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility)
    f.link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)
    note = gate.write_note(patient_id=patient.id, kind="11506-3", title="Consultation", text="Toux sèche.")
    amended = gate.amend_note(
        note_id=note.id, expected_version=1, text="Toux grasse.", reason="erreur de saisie"
    )
    assert [v.text for v in amended.versions or []] == ["Toux sèche.", "Toux grasse."]
    with pytest.raises(Conflict):
        gate.amend_note(note_id=note.id, expected_version=1, text="Écrasé ?", reason="course")
    notes = gate.list_notes(patient_id=patient.id)
    assert [len(n.versions or []) for n in notes] == [2]
    history = gate.history(resource_type="DocumentReference", resource_id=note.id)
    assert [v.version_id for v in history] == [1, 2]
    # The front desk never sees notes, not even through history.
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    with pytest.raises(NotFound):
        Gate(runtime, clerk).history(resource_type="DocumentReference", resource_id=note.id)
    with pytest.raises(NotFound):  # deny by default: an unknown resource type
        gate.history(resource_type="Secret", resource_id=note.id)


def _race(jobs: list[Callable[[], object]]) -> list[str]:
    """Run the jobs at the same moment on their own threads; what each one met."""
    barrier = threading.Barrier(len(jobs))
    outcomes: list[str] = []

    def run(job: Callable[[], object]) -> None:
        barrier.wait()
        try:
            job()
            outcomes.append("won")
        except Conflict:
            outcomes.append("conflict")
        except Exception as exc:  # anything else fails the assertion below, named
            outcomes.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(outcomes)


def test_concurrent_bookings_of_one_slot_and_registrations_of_one_patient(runtime: Runtime) -> None:
    """Check-then-write under concurrency: on PostgreSQL the practitioner's row lock orders the
    bookings and a per-facility advisory lock the duplicate checks; on SQLite the gate's
    transaction holds the write lock from its first read."""
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    clerks = [f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility) for _ in range(4)]
    patients = [
        f.register_patient(runtime, facility, by=clerks[0], ins=f"18006751234{i:02d}") for i in range(4)
    ]
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=2)

    def book(i: int) -> Callable[[], object]:
        data = AppointmentInput(
            patient_id=patients[i].id,
            practitioner_id=str(doctor.practitioner_id),
            start_at=start + dt.timedelta(minutes=5 * i),  # all four overlap the first
            end_at=start + dt.timedelta(minutes=30 + 5 * i),
        )
        return lambda: Gate(runtime, clerks[i]).book_appointment(data=data)

    assert _race([book(i) for i in range(4)]) == ["conflict", "conflict", "conflict", "won"]
    with runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Appointment)) == 1

    def register(i: int) -> Callable[[], object]:
        return lambda: f.register_patient(
            runtime, facility, by=clerks[i], family="Doublon", ins="2900175000111"
        )

    assert _race([register(i) for i in range(4)]) == ["conflict", "conflict", "conflict", "won"]
    with runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Patient)) == 5
