"""The front desk's and billing's gate operations: a practitioner's calendar (slots only, no
patient exposed; who a slot is for is revealed one appointment at a time), health-card readings
(coverage history kept) and payments."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.detection.models import Exposure
from carnet.kernel import clock
from carnet.kernel.errors import Conflict, InvalidInput, NotFound, StepUpRequired
from carnet.phi.gate import Gate
from carnet.phi.schemas import AppointmentInput, CardReadingInput, PaymentInput
from carnet.runtime import Runtime
from tests import factories as f


def _book(runtime: Runtime, clerk: object, patient: str, practitioner: uuid.UUID, start: dt.datetime) -> str:
    return (
        Gate(runtime, clerk)  # type: ignore[arg-type]
        .book_appointment(
            data=AppointmentInput(
                patient_id=patient,
                practitioner_id=str(practitioner),
                start_at=start,
                end_at=start + dt.timedelta(minutes=30),
                reason="suivi diabète",
            )
        )
        .id
    )


def _exposed(runtime: Runtime, actor_ref: str) -> list[tuple[uuid.UUID, str]]:
    with runtime.session_factory() as session:
        return [
            (row.patient_id, row.channel)
            for row in session.execute(
                sa.select(Exposure.patient_id, Exposure.channel).where(Exposure.actor_ref == actor_ref)
            )
        ]


def test_schedule_shows_slots_only_and_reveals_one_patient_at_a_time(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    colleague = f.make_physician(runtime, facility)
    booker = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    a = f.register_patient(runtime, facility, family="Alpha")
    b = f.register_patient(runtime, facility, family="Beta")
    c = f.register_patient(runtime, facility, family="Gamma")
    monday = clock.now().date() - dt.timedelta(days=clock.now().weekday()) + dt.timedelta(days=7)
    at = dt.datetime.combine(monday, dt.time(9), tzinfo=dt.UTC)
    assert doctor.practitioner_id and colleague.practitioner_id
    first = _book(runtime, booker, a.id, doctor.practitioner_id, at)
    second = _book(runtime, booker, b.id, doctor.practitioner_id, at + dt.timedelta(days=3))
    _book(runtime, booker, c.id, colleague.practitioner_id, at)  # another practitioner's
    cancelled = _book(runtime, booker, c.id, doctor.practitioner_id, at + dt.timedelta(hours=2))
    Gate(runtime, booker).cancel_appointment(appointment_id=cancelled, expected_version=1, reason="malade")

    week = Gate(runtime, clerk).practitioner_schedule(
        practitioner_id=str(doctor.practitioner_id), day_from=monday, day_to=monday + dt.timedelta(days=6)
    )
    assert [e.id for e in week.entries] == [first, second]
    assert [e.start_at for e in week.entries] == [at, at + dt.timedelta(days=3)]
    assert {e.status for e in week.entries} == {"booked"} and {e.version_id for e in week.entries} == {1}
    dumped = week.model_dump_json()
    for secret in (a.id, b.id, "Alpha", "Beta", "diabète"):
        assert secret not in dumped  # no patient id, name or reason in a calendar
    day = Gate(runtime, clerk).practitioner_schedule(
        practitioner_id=str(doctor.practitioner_id), day_from=monday, day_to=monday
    )
    assert [e.id for e in day.entries] == [first]
    with runtime.session_factory() as session:
        last = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).one()
    assert last.kind == "phi:resource:list" and last.outcome == "success"
    assert first in (last.resource_ids or "") and last.patient_ids in (None, "", "[]")
    assert _exposed(runtime, clerk.actor_ref) == []  # a calendar exposes nobody

    # "Who is this?": one appointment's patient, identity only, one patient exposed and audited.
    who = Gate(runtime, clerk).reveal_appointment_patient(appointment_id=first)
    assert (who.id, who.family, who.birth_date) == (a.id, "Alpha", a.birth_date)
    assert who.phone is None and who.address is None and who.ins is None and who.email is None
    assert _exposed(runtime, clerk.actor_ref) == [(uuid.UUID(a.id), "chart")]
    with runtime.session_factory() as session:
        last = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).one()
    assert last.kind == "phi:resource:read" and last.outcome == "success"
    assert a.id in (last.patient_ids or "") and b.id not in (last.patient_ids or "")
    assert first in (last.resource_ids or "")

    # Billing reads no appointments: refused as if the appointment did not exist (and audited).
    cashier = f.make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    with pytest.raises(NotFound):
        Gate(runtime, cashier).reveal_appointment_patient(appointment_id=first)
    with pytest.raises(NotFound):
        Gate(runtime, clerk).reveal_appointment_patient(appointment_id=str(uuid.uuid4()))
    other = f.make_facility(runtime, name="Autre")
    stranger = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=other)
    with pytest.raises(NotFound):  # another facility's appointment
        Gate(runtime, stranger).reveal_appointment_patient(appointment_id=first)
    assert _exposed(runtime, cashier.actor_ref) == [] and _exposed(runtime, stranger.actor_ref) == []
    with runtime.session_factory() as session:
        denied = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.outcome != "success").order_by(AuditEvent.seq)
        ).all()
    assert len(denied) >= 3

    # The physician's own calendar: their slots (no names either; "my day" names their patients).
    mine = Gate(runtime, doctor).practitioner_schedule(
        practitioner_id=str(doctor.practitioner_id), day_from=monday, day_to=monday + dt.timedelta(days=6)
    )
    assert [e.id for e in mine.entries] == [first, second]

    with pytest.raises(InvalidInput):  # more than a week
        Gate(runtime, clerk).practitioner_schedule(
            practitioner_id=str(doctor.practitioner_id), day_from=monday, day_to=monday + dt.timedelta(days=7)
        )
    with pytest.raises(InvalidInput):  # another facility's practitioner: unknown
        Gate(runtime, stranger).practitioner_schedule(
            practitioner_id=str(doctor.practitioner_id), day_from=monday, day_to=monday
        )


def _card(patient: str, **extra: object) -> CardReadingInput:
    values: dict[str, object] = {
        "patient_id": patient,
        "card_serial": "SN0001",
        "payer": "CPAM Lyon",
        "member_id": "170056912345678",
        "rights_start": dt.date(2026, 1, 1),
    }
    return CardReadingInput(**(values | extra))  # type: ignore[arg-type]


def test_card_readings_keep_the_coverage_history(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    patient = f.register_patient(runtime, facility, family="Carte")
    gate = Gate(runtime, clerk)
    first = gate.record_card_reading(data=_card(patient.id))
    assert [(c.payer, c.status) for c in first.coverages] == [("CPAM Lyon", "active")]
    same = gate.record_card_reading(data=_card(patient.id, card_serial="SN0002"))
    assert len(same.coverages) == 1 and len(same.card_readings) == 2
    assert {r.coverage_id for r in same.card_readings} == {first.coverages[0].id}
    moved = gate.record_card_reading(
        data=_card(patient.id, payer="CPAM Paris", rights_start=dt.date(2026, 6, 1))
    )
    statuses = sorted((c.payer, c.status) for c in moved.coverages)
    assert statuses == [("CPAM Lyon", "cancelled"), ("CPAM Paris", "active")]
    ended = next(c for c in moved.coverages if c.payer == "CPAM Lyon")
    assert ended.period_end is not None
    # A complementary card does not end the statutory coverage.
    both = gate.record_card_reading(
        data=_card(patient.id, kind="AMC", payer="Mutuelle X", member_id="M12345")
    )
    assert sorted((c.kind, c.status) for c in both.coverages if c.status == "active") == [
        ("AMC", "active"),
        ("AMO", "active"),
    ]
    with runtime.session_factory() as session:
        versions = session.scalar(
            sa.text("SELECT count(*) FROM resource_versions WHERE resource_type = 'Coverage'")
        )
    assert versions == 4  # three created, one ended: every change kept
    with pytest.raises(InvalidInput):
        gate.record_card_reading(data=_card(patient.id, rights_end=dt.date(2025, 1, 1)))
    doctor = f.make_physician(runtime, facility)
    with pytest.raises(NotFound):  # clinicians do not read cards
        Gate(runtime, doctor).record_card_reading(data=_card(patient.id))


def test_payments_never_exceed_what_is_due_and_balance_the_invoice(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    billing = f.make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    patient = f.register_patient(runtime, facility, family="Facture")
    invoice = str(f.make_invoice(runtime, patient_id=patient.id, facility_id=facility, total_cents=3000))
    gate = Gate(runtime, billing)
    with pytest.raises(InvalidInput):
        gate.record_payment(
            data=PaymentInput(invoice_id=invoice, expected_version=1, amount_cents=3001, method="card")
        )
    part = gate.record_payment(
        data=PaymentInput(invoice_id=invoice, expected_version=1, amount_cents=1000, method="cash")
    )
    assert (part.status, part.paid_cents, part.version_id) == ("issued", 1000, 2)
    with pytest.raises(Conflict):  # a second clerk working from the old page
        gate.record_payment(
            data=PaymentInput(invoice_id=invoice, expected_version=1, amount_cents=1000, method="cash")
        )
    full = gate.record_payment(
        data=PaymentInput(invoice_id=invoice, expected_version=2, amount_cents=2000, method="insurer")
    )
    assert (full.status, full.paid_cents) == ("balanced", 3000)
    assert [p.method for p in full.payments or []] == ["cash", "insurer"]
    with pytest.raises(Conflict):
        gate.record_payment(
            data=PaymentInput(invoice_id=invoice, expected_version=3, amount_cents=1, method="cash")
        )
    listed = gate.list_invoices(patient_id=patient.id)
    assert listed[0].paid_cents == 3000
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    with pytest.raises(NotFound):
        Gate(runtime, clerk).record_payment(
            data=PaymentInput(invoice_id=invoice, expected_version=3, amount_cents=1, method="cash")
        )


def test_asking_who_slot_after_slot_is_a_lookup_sweep(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    booker = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    assert doctor.practitioner_id
    start = dt.datetime.combine(clock.now().date() + dt.timedelta(days=1), dt.time(8), tzinfo=dt.UTC)
    slots = [
        _book(
            runtime,
            booker,
            f.register_patient(runtime, facility, family=f"Patient{n}").id,
            doctor.practitioner_id,
            start + dt.timedelta(minutes=30 * n),
        )
        for n in range(9)
    ]
    gate = Gate(runtime, clerk)
    for slot in slots[:7]:  # a desk agent checking a morning's first slots: no question asked
        gate.reveal_appointment_patient(appointment_id=slot)
    with pytest.raises(StepUpRequired):  # the eighth in 15 minutes: prove it is really you
        gate.reveal_appointment_patient(appointment_id=slots[7])
    with pytest.raises(StepUpRequired):  # and nothing more until then
        gate.reveal_appointment_patient(appointment_id=slots[8])
    assert len({p for p, _c in _exposed(runtime, clerk.actor_ref)}) == 7
