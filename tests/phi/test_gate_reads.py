"""The gate's reads: a physician sees their patients and not others; redaction by role;
search never browses; every access audited and accounted in the exposure ledger."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid

import pytest
import sqlalchemy as sa

from carnet.access.models import RoleGrant
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.billing.models import Invoice, InvoiceLine
from carnet.coverage.models import CardReading, Coverage
from carnet.detection.models import Exposure
from carnet.identity.models import Account
from carnet.kernel.clock import MovableClock
from carnet.kernel.errors import AccountContained, Forbidden, InvalidInput, NotFound
from carnet.phi.gate import AllergyWarning, Gate
from carnet.phi.schemas import AllergyInput, AppointmentInput, PrescriptionInput
from carnet.phi.system import system_access
from carnet.runtime import Runtime
from tests import factories as f


def _events(runtime: Runtime) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        return list(session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)))


def _exposures(runtime: Runtime, actor_ref: str) -> list[Exposure]:
    with runtime.session_factory() as session:
        return list(session.scalars(sa.select(Exposure).where(Exposure.actor_ref == actor_ref)))


def test_physician_sees_their_patients_and_not_others(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    mine = f.register_patient(runtime, facility, family="Dupont")
    other = f.register_patient(runtime, facility, family="Durand")
    f.link_care(runtime, patient_id=mine.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)

    chart = gate.read_patient(patient_id=mine.id)
    assert chart.family == "Dupont" and chart.phone is not None and chart.ins is None
    # Not in their care: exactly like a missing record.
    with pytest.raises(NotFound) as refused:
        gate.read_patient(patient_id=other.id)
    with pytest.raises(NotFound) as missing:
        gate.read_patient(patient_id=str(uuid.uuid4()))
    assert str(refused.value) == str(missing.value)
    with pytest.raises(NotFound):
        gate.list_allergies(patient_id=other.id)

    events = [e for e in _events(runtime) if e.actor_ref == doctor.actor_ref]
    assert [(e.kind, e.outcome) for e in events] == [
        ("phi:resource:read", "success"),
        ("phi:resource:read", "denied"),
        ("phi:resource:read", "error"),
        ("phi:resource:read", "denied"),
    ]
    assert json.loads(events[0].patient_ids) == [mine.id]
    assert json.loads(events[1].patient_ids) == [other.id]  # the attempt is in the patient's log
    exposed = _exposures(runtime, doctor.actor_ref)
    assert [(str(x.patient_id), x.channel) for x in exposed] == [(mine.id, "chart")]


def test_relationships_that_open_a_chart(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    ward = f.make_location(runtime, facility)
    doctor = f.make_physician(runtime, facility)
    nurse = f.make_nurse(runtime, facility)
    f.assign_ward(runtime, practitioner_id=nurse.practitioner_id, location_id=ward, facility_id=facility)
    booked = f.register_patient(runtime, facility)
    attending = f.register_patient(runtime, facility)
    designated = f.register_patient(runtime, facility, designated_physician_id=str(doctor.practitioner_id))
    ended = f.register_patient(runtime, facility)
    far = f.register_patient(runtime, facility)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    front = Gate(runtime, clerk)
    now = dt.datetime.now(dt.UTC)
    for patient, start in ((booked, now + dt.timedelta(days=3)), (far, now + dt.timedelta(days=60))):
        front.book_appointment(
            data=AppointmentInput(
                patient_id=patient.id,
                practitioner_id=str(doctor.practitioner_id),
                start_at=start,
                end_at=start + dt.timedelta(minutes=20),
            )
        )
    f.admit(
        runtime,
        patient_id=attending.id,
        facility_id=facility,
        location_id=ward,
        attending_id=doctor.practitioner_id,
    )
    f.link_care(
        runtime,
        patient_id=ended.id,
        practitioner_id=doctor.practitioner_id,
        facility_id=facility,
        end=now - dt.timedelta(hours=1),
    )
    gate = Gate(runtime, doctor)
    for patient in (booked, attending, designated):
        assert gate.read_patient(patient_id=patient.id).family == "Martin"
    for patient in (ended, far):
        with pytest.raises(NotFound):
            gate.read_patient(patient_id=patient.id)
    # The nurse of the ward sees the current stay's clinical data, without contact details.
    stay = Gate(runtime, nurse).read_patient(patient_id=attending.id)
    assert stay.family == "Martin" and stay.phone is None and stay.address is None
    assert Gate(runtime, nurse).list_allergies(patient_id=attending.id) == []
    with pytest.raises(NotFound):
        Gate(runtime, nurse).read_patient(patient_id=booked.id)


def test_minimum_necessary_by_role(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility, ins="1700575123456")
    f.link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    Gate(runtime, doctor).record_allergy(
        data=AllergyInput(
            patient_id=patient.id, substance_code="J01CA", substance_display="Penicillins", criticality="high"
        )
    )
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    billing = f.make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    front = Gate(runtime, clerk).read_patient(patient_id=patient.id)
    assert front.phone == "06 12 34 56 78" and front.ins == "1700575123456"
    bill = Gate(runtime, billing).read_patient(patient_id=patient.id)
    assert bill.family == "Martin" and bill.phone is None and bill.address is None
    assert Gate(runtime, billing).list_coverage(patient_id=patient.id).coverages == []
    for actor in (clerk, billing):
        for read in (
            Gate(runtime, actor).list_notes,
            Gate(runtime, actor).list_prescriptions,
            Gate(runtime, actor).list_allergies,
        ):
            with pytest.raises(NotFound):
                read(patient_id=patient.id)
    assert [a.substance_code for a in Gate(runtime, doctor).list_allergies(patient_id=patient.id)] == [
        "J01CA"
    ]


def test_search_needs_specificity_and_is_bounded(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    mine = f.register_patient(runtime, facility, family="Lefèvre", given="Anne", ins="2700575123456")
    stranger = f.register_patient(runtime, facility, family="Lefèvre", given="Paul")
    f.link_care(runtime, patient_id=mine.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)
    with pytest.raises(InvalidInput):
        gate.search_patients()
    with pytest.raises(InvalidInput):
        gate.search_patients(identifier="x", count=500)
    with pytest.raises(InvalidInput):
        gate.search_patients(identifier="x", page=99)
    # A name alone searches only the physician's own patients (decrypted in memory).
    by_name = gate.search_patients(family="lefevre")
    assert [p.id for p in by_name.items] == [mine.id]
    # Family + birth date finds a patient outside their care, but only to locate them.
    located = gate.search_patients(family="LEFEVRE", birth_date=dt.date(1970, 5, 17))
    found = {p.id: p for p in located.items}
    assert set(found) == {mine.id, stranger.id}
    assert found[stranger.id].given == "Paul" and found[stranger.id].phone is None
    assert found[mine.id].phone is not None
    assert [p.id for p in gate.search_patients(identifier="2 70 05 75 123 456").items] == [mine.id]
    searches = [
        e for e in _events(runtime) if e.actor_ref == doctor.actor_ref and e.kind == "phi:resource:search"
    ]
    assert all("Lef" not in (e.query or "") for e in searches)
    exposed = {(str(x.patient_id), x.channel) for x in _exposures(runtime, doctor.actor_ref)}
    assert (stranger.id, "search") in exposed


def test_day_list(runtime: Runtime, movable_clock: MovableClock) -> None:
    movable_clock.set(dt.datetime(2026, 3, 10, 9, 0, tzinfo=dt.UTC))
    facility = f.make_facility(runtime)
    ward = f.make_location(runtime, facility)
    doctor = f.make_physician(runtime, facility)
    today = f.register_patient(runtime, facility, family="Aujourdhui")
    tomorrow = f.register_patient(runtime, facility, family="Demain")
    inpatient = f.register_patient(runtime, facility, family="Hospitalise")
    f.register_patient(runtime, facility, family="Autre")
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    for patient, start in (
        (today, dt.datetime(2026, 3, 10, 14, 0, tzinfo=dt.UTC)),
        (tomorrow, dt.datetime(2026, 3, 11, 14, 0, tzinfo=dt.UTC)),
    ):
        Gate(runtime, clerk).book_appointment(
            data=AppointmentInput(
                patient_id=patient.id,
                practitioner_id=str(doctor.practitioner_id),
                start_at=start,
                end_at=start + dt.timedelta(minutes=15),
                reason="suivi",
            )
        )
    f.admit(
        runtime,
        patient_id=inpatient.id,
        facility_id=facility,
        location_id=ward,
        attending_id=doctor.practitioner_id,
    )
    day = Gate(runtime, doctor).day_list()
    assert day.day == dt.date(2026, 3, 10)
    assert [a.patient.family for a in day.appointments] == ["Aujourdhui"]
    assert day.appointments[0].appointment.reason == "suivi"
    assert [i.patient.family for i in day.inpatients] == ["Hospitalise"]
    listed = {(str(x.patient_id), x.channel) for x in _exposures(runtime, doctor.actor_ref)}
    assert listed == {(today.id, "list"), (inpatient.id, "list")}
    with pytest.raises(Forbidden):
        Gate(runtime, clerk).day_list()


def test_patient_sees_only_their_own_record(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    me = f.register_patient(runtime, facility)
    other = f.register_patient(runtime, facility)
    actor = f.make_account(runtime, roles=[Role.PATIENT], facility_id=None, patient_id=uuid.UUID(me.id))
    gate = Gate(runtime, actor)
    assert gate.read_patient(patient_id=me.id).phone == "06 12 34 56 78"
    with pytest.raises(NotFound):
        gate.read_patient(patient_id=other.id)
    with pytest.raises(Forbidden):
        gate.search_patients(identifier="1700575123456")


def test_restricted_patient_is_hidden_from_other_facilities(runtime: Runtime) -> None:
    home = f.make_facility(runtime)
    away = f.make_facility(runtime)
    doctor_practitioner = f.make_practitioner(runtime, home)
    # A physician granted at both facilities, acting from the other one.
    doctor = f.make_account(
        runtime, roles=[Role.PHYSICIAN], facility_id=home, practitioner_id=doctor_practitioner
    )
    open_patient = f.register_patient(runtime, home)
    closed = f.register_patient(runtime, home, opposes_other_facilities=True)
    for p in (open_patient, closed):
        f.link_care(runtime, patient_id=p.id, practitioner_id=doctor_practitioner, facility_id=home)
    with runtime.session_factory.begin() as session:
        session.add(
            RoleGrant(
                account_id=doctor.account_id,
                role="physician",
                facility_id=away,
                status="active",
                requested_at=dt.datetime.now(dt.UTC),
                reason="second site",
            )
        )
    at_home = Gate(runtime, doctor)
    assert at_home.read_patient(patient_id=closed.id).family == "Martin"
    away_actor = dataclasses.replace(doctor, facility_id=away)
    away_gate = Gate(runtime, away_actor)
    assert away_gate.read_patient(patient_id=open_patient.id).family == "Martin"
    with pytest.raises(NotFound):
        away_gate.read_patient(patient_id=closed.id)
    assert [p.id for p in away_gate.search_patients(family="martin").items] == [open_patient.id]


def test_prescription_allergy_warning(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility)
    f.link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)
    gate.record_allergy(
        data=AllergyInput(
            patient_id=patient.id, substance_code="J01CA", substance_display="Penicillins", criticality="high"
        )
    )
    order = PrescriptionInput(
        patient_id=patient.id,
        medication_code="3400930000001",
        medication_display="Amoxicilline 1 g",
        substance_code="J01CA",
        dosage_text="1 g x 3 / jour",
    )
    with pytest.raises(AllergyWarning):
        gate.prescribe(data=order)
    assert gate.list_prescriptions(patient_id=patient.id) == []
    done = gate.prescribe(data=order.model_copy(update={"allergy_override_reason": "tolerated in 2020"}))
    assert done.warnings and done.allergy_override_reason == "tolerated in 2020"
    stopped = gate.stop_prescription(prescription_id=done.id, expected_version=1, reason="switched")
    assert stopped.status == "stopped" and stopped.version_id == 2
    history = gate.history(resource_type="MedicationRequest", resource_id=done.id)
    assert [(v.version_id, v.data["status"]) for v in history] == [(1, "active"), (2, "stopped")]


def test_suspended_account_and_revoked_grant_are_refused_at_once(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility)
    f.link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)
    assert gate.read_patient(patient_id=patient.id).family == "Martin"
    with runtime.session_factory.begin() as session:
        session.execute(sa.update(Account).where(Account.id == doctor.account_id).values(status="suspended"))
    with pytest.raises(AccountContained):
        gate.read_patient(patient_id=patient.id)
    with runtime.session_factory.begin() as session:
        session.execute(sa.update(Account).where(Account.id == doctor.account_id).values(status="active"))
        session.execute(
            sa.update(RoleGrant).where(RoleGrant.account_id == doctor.account_id).values(status="revoked")
        )
    with pytest.raises(NotFound):
        gate.read_patient(patient_id=patient.id)
    outcomes = [(e.kind, e.outcome) for e in _events(runtime) if e.actor_ref == doctor.actor_ref]
    assert outcomes[-2:] == [("phi:resource:read", "denied"), ("phi:resource:read", "denied")]


def test_coverage_card_readings_and_invoices_by_role(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility)
    f.link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    pid = uuid.UUID(patient.id)
    now = dt.datetime.now(dt.UTC)
    with system_access(runtime, reason="test fixture: coverage and billing") as door:
        keyring = door.keyring
        coverage_id, reading_id, invoice_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        door.session.add(
            Coverage(
                id=coverage_id,
                facility_id=facility,
                patient_id=pid,
                kind="AMO",
                payer="CPAM Paris",
                member_id_ct=keyring.encrypt(
                    "170057512345678",
                    facility_id=facility,
                    table="coverages",
                    column="member_id",
                    row_id=coverage_id,
                ),
                status="active",
                period_start=now - dt.timedelta(days=300),
                period_end=None,
                created_at=now,
                updated_at=now,
            )
        )
        door.session.flush()
        door.session.add(
            CardReading(
                id=reading_id,
                facility_id=facility,
                patient_id=pid,
                coverage_id=coverage_id,
                read_at=now,
                card_serial_ct=keyring.encrypt(
                    "SN-42",
                    facility_id=facility,
                    table="card_readings",
                    column="card_serial",
                    row_id=reading_id,
                ),
                payload_ct=keyring.encrypt(
                    '{"regime": "01"}',
                    facility_id=facility,
                    table="card_readings",
                    column="payload",
                    row_id=reading_id,
                ),
            )
        )
        door.session.add(
            Invoice(
                id=invoice_id,
                facility_id=facility,
                patient_id=pid,
                number="F-0001",
                status="issued",
                issued_at=now,
                total_cents=2500,
                created_at=now,
                updated_at=now,
            )
        )
        door.session.flush()
        door.session.add(
            InvoiceLine(invoice_id=invoice_id, code="G", description="Consultation", amount_cents=2500)
        )
    billing = f.make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    section = Gate(runtime, billing).list_coverage(patient_id=patient.id)
    assert [c.member_id for c in section.coverages] == ["170057512345678"]
    assert [(r.card_serial, r.payload) for r in section.card_readings] == [("SN-42", {"regime": "01"})]
    invoices = Gate(runtime, billing).list_invoices(patient_id=patient.id)
    assert [(i.number, [line.code for line in i.lines or []]) for i in invoices] == [("F-0001", ["G"])]
    # The physician sees the coverage in the chart, but neither card readings nor invoices.
    clinical = Gate(runtime, doctor).list_coverage(patient_id=patient.id)
    assert [c.payer for c in clinical.coverages] == ["CPAM Paris"] and clinical.card_readings == []
    with pytest.raises(NotFound):
        Gate(runtime, doctor).list_invoices(patient_id=patient.id)
    # Admission reads health cards: the desk sees coverage and readings, never invoices.
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    desk = Gate(runtime, clerk).list_coverage(patient_id=patient.id)
    assert [c.member_id for c in desk.coverages] == ["170057512345678"] and len(desk.card_readings) == 1
    with pytest.raises(NotFound):
        Gate(runtime, clerk).list_invoices(patient_id=patient.id)


def test_token_scopes_narrow_what_roles_allow(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility)
    f.link_care(runtime, patient_id=patient.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    app = dataclasses.replace(doctor, scopes=frozenset({"user/Patient.read"}))
    gate = Gate(runtime, app)
    assert gate.read_patient(patient_id=patient.id).family == "Martin"
    with pytest.raises(NotFound):  # no scope for allergies
        gate.list_allergies(patient_id=patient.id)
    with pytest.raises(Forbidden):  # read is not search... in SMART v1 `read` covers search
        Gate(runtime, dataclasses.replace(doctor, scopes=frozenset({"user/Patient.r"}))).search_patients(
            family="martin"
        )
    with pytest.raises(NotFound):  # tokens never break the glass
        Gate(runtime, dataclasses.replace(doctor, scopes=frozenset({"user/*.*"}))).break_glass(
            patient_id=patient.id, reason="emergency", justification="arrêt cardiaque"
        )


def test_name_fragments_are_refused_or_counted_as_partial_sweeps(sqlite_runtime: Runtime) -> None:
    """One letter is browsing (refused); a short fragment is a partial search detection counts."""
    from carnet.detection.models import DetectionEvent

    runtime = sqlite_runtime
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    mine = f.register_patient(runtime, facility, family="Lefèvre", given="Anne")
    f.link_care(runtime, patient_id=mine.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    gate = Gate(runtime, doctor)
    with pytest.raises(InvalidInput):
        gate.search_patients(family="l")
    assert [p.id for p in gate.search_patients(family="lef").items] == [mine.id]
    assert [p.id for p in gate.search_patients(family="lefevre").items] == [mine.id]
    with runtime.session_factory() as session:
        kinds = session.scalars(
            sa.select(DetectionEvent.kind).where(DetectionEvent.actor_ref == doctor.actor_ref)
        ).all()
    assert kinds.count("wildcard-search") == 1  # "lef", not "lefevre"
