"""Break-the-glass: one patient, one hour, a fresh second factor, a structured reason,
audited and listed for the security officer's review."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
import sqlalchemy as sa

from carnet.access.breakglass import list_break_glass, review_break_glass, take_pending_alerts
from carnet.access.models import BreakGlassAccess
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.kernel.clock import MovableClock
from carnet.kernel.errors import Forbidden, InvalidInput, NotFound, StepUpRequired
from carnet.phi.gate import Gate
from carnet.phi.schemas import AllergyInput, AppointmentInput, PatientChanges
from carnet.phi.system import system_access
from carnet.runtime import Runtime
from tests import factories as f


def test_break_glass_opens_one_patient_for_one_hour(runtime: Runtime, movable_clock: MovableClock) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    first = f.register_patient(runtime, facility, family="Urgence")
    second = f.register_patient(runtime, facility, family="Autre")
    gate = Gate(runtime, doctor)
    with pytest.raises(NotFound):
        gate.read_patient(patient_id=first.id)

    grant = gate.break_glass(
        patient_id=first.id, reason="emergency", justification="inconscient aux urgences"
    )
    assert grant.expires_at - grant.started_at == dt.timedelta(hours=1)
    assert gate.read_patient(patient_id=first.id).family == "Urgence"
    assert gate.list_allergies(patient_id=first.id) == []
    with pytest.raises(NotFound):  # one patient: the other stays closed
        gate.read_patient(patient_id=second.id)

    with runtime.session_factory() as session:
        started = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.kind == "access:break-glass:start")
        ).one()
    assert (
        started.outcome == "success" and started.break_glass_reason == "emergency: inconscient aux urgences"
    )
    assert first.id in started.patient_ids

    # One patient at a time: breaking the glass for another ends the first.
    gate.break_glass(patient_id=second.id, reason="continuity", justification="médecin traitant absent")
    assert gate.read_patient(patient_id=second.id).family == "Autre"
    with pytest.raises(NotFound):
        gate.read_patient(patient_id=first.id)

    movable_clock.advance(dt.timedelta(minutes=61))
    with pytest.raises(NotFound):
        gate.read_patient(patient_id=second.id)

    # Listed for review, newest first, already alerted to the security officer.
    officer = f.make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility)
    listed = list_break_glass(runtime, actor=officer)
    assert [(b.patient_id, b.reason_code, b.alert_state) for b in listed] == [
        (second.id, "continuity", "alerted"),
        (first.id, "emergency", "alerted"),
    ]
    assert listed[1].ended_at is not None
    reviewed = review_break_glass(runtime, actor=officer, access_id=listed[0].id, note="justifié, vérifié")
    assert reviewed.reviewed_by == str(officer.account_id)
    assert [b.id for b in list_break_glass(runtime, actor=officer, unreviewed_only=True)] == [listed[1].id]
    # A physician may not read the review list; an officer may not break the glass.
    with pytest.raises(Forbidden):
        list_break_glass(runtime, actor=doctor)
    with pytest.raises(NotFound):
        Gate(runtime, officer).break_glass(
            patient_id=first.id, reason="emergency", justification="je veux voir"
        )


def test_break_glass_needs_a_fresh_second_factor_and_a_reason(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility)
    stale = dataclasses.replace(doctor, second_factor_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6))
    with pytest.raises(StepUpRequired):
        Gate(runtime, stale).break_glass(
            patient_id=patient.id, reason="emergency", justification="arrêt cardiaque"
        )
    never = dataclasses.replace(doctor, second_factor_at=None)
    with pytest.raises(StepUpRequired):
        Gate(runtime, never).break_glass(
            patient_id=patient.id, reason="emergency", justification="arrêt cardiaque"
        )
    gate = Gate(runtime, doctor)
    with pytest.raises(InvalidInput):
        gate.break_glass(patient_id=patient.id, reason="curiosity", justification="arrêt cardiaque")
    with pytest.raises(InvalidInput):
        gate.break_glass(patient_id=patient.id, reason="emergency", justification="urgent")
    with pytest.raises(NotFound):
        gate.read_patient(patient_id=patient.id)
    # Front desk cannot break the glass (it would open nothing clinical to them).
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    with pytest.raises(NotFound):
        Gate(runtime, clerk).break_glass(
            patient_id=patient.id, reason="emergency", justification="arrêt cardiaque"
        )


def test_detection_takes_each_pending_alert_once(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility)
    Gate(runtime, doctor).break_glass(
        patient_id=patient.id, reason="emergency", justification="détresse respiratoire"
    )
    # The gate alerted in its own transaction: nothing is left pending.
    with system_access(runtime, reason="test: detection picks up break-the-glass") as door:
        assert take_pending_alerts(door.session) == []
        door.session.execute(sa.update(BreakGlassAccess).values(alert_state="pending"))
    with system_access(runtime, reason="test: detection picks up break-the-glass") as door:
        taken = take_pending_alerts(door.session)
    assert [(t.patient_id, t.account_id) for t in taken] == [(patient.id, str(doctor.account_id))]
    with system_access(runtime, reason="test: detection picks up break-the-glass") as door:
        assert take_pending_alerts(door.session) == []


def test_review_list_is_scoped_to_the_officers_facilities(runtime: Runtime) -> None:
    north, south = f.make_facility(runtime), f.make_facility(runtime)
    doctor = f.make_physician(runtime, north)
    patient = f.register_patient(runtime, north)
    grant = Gate(runtime, doctor).break_glass(
        patient_id=patient.id, reason="emergency", justification="polytraumatisé, inconscient"
    )
    southern = f.make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=south)
    assert list_break_glass(runtime, actor=southern) == []
    with pytest.raises(NotFound):
        review_break_glass(runtime, actor=southern, access_id=grant.id, note="pas le mien")
    # An organisation-wide officer (granted without a facility) reviews every facility.
    national = f.make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=None)
    assert [b.id for b in list_break_glass(runtime, actor=national)] == [grant.id]
    assert review_break_glass(runtime, actor=national, access_id=grant.id, note="vérifié").reviewed_at


def test_break_glass_cannot_write_itself_lasting_access(runtime: Runtime) -> None:
    """Under break-the-glass a physician treats (an allergy is recorded), but cannot turn the
    hour into lasting access: not by naming themself designated physician, not by booking
    themself an appointment, not by withdrawing the patient's opposition to other facilities."""
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility, family="Urgence")
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    opposition = Gate(runtime, clerk).record_consent(patient_id=patient.id)
    gate = Gate(runtime, doctor)
    gate.break_glass(patient_id=patient.id, reason="emergency", justification="inconscient aux urgences")

    allergy = gate.record_allergy(
        data=AllergyInput(
            patient_id=patient.id, substance_code="7980", substance_display="pénicilline", criticality="high"
        )
    )
    assert allergy.substance_display == "pénicilline"
    with pytest.raises((Forbidden, NotFound)):
        gate.update_patient(
            patient_id=patient.id,
            expected_version=1,
            changes=PatientChanges(designated_physician_id=str(doctor.practitioner_id)),
        )
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)
    with pytest.raises((Forbidden, NotFound)):
        gate.book_appointment(
            data=AppointmentInput(
                patient_id=patient.id,
                practitioner_id=str(doctor.practitioner_id),
                start_at=soon,
                end_at=soon + dt.timedelta(minutes=30),
            )
        )
    with pytest.raises((Forbidden, NotFound)):
        gate.withdraw_consent(consent_id=opposition.id, expected_version=opposition.version_id)
    # Nothing changed: no designated physician, no appointment, the opposition stands.
    assert Gate(runtime, clerk).read_patient(patient_id=patient.id).designated_physician_id is None
    assert Gate(runtime, clerk).list_appointments(patient_id=patient.id) == []
    assert [c.status for c in Gate(runtime, clerk).list_consents(patient_id=patient.id)] == ["active"]
