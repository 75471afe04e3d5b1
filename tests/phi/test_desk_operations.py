"""The front desk's and billing's gate operations: a practitioner's calendar (identity only,
every patient shown exposed), health-card readings (coverage history kept) and payments."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.detection.models import Exposure
from carnet.kernel import clock
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
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


def _listed(runtime: Runtime, actor_ref: str) -> set[uuid.UUID]:
    """Patients exposed to the actor through a list (not through their own bookings)."""
    with runtime.session_factory() as session:
        return set(
            session.scalars(
                sa.select(Exposure.patient_id).where(
                    Exposure.actor_ref == actor_ref, Exposure.channel == "list"
                )
            )
        )


def test_schedule_shows_identity_only_and_exposes_every_patient_shown(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    colleague = f.make_physician(runtime, facility)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    a = f.register_patient(runtime, facility, family="Alpha")
    b = f.register_patient(runtime, facility, family="Beta")
    c = f.register_patient(runtime, facility, family="Gamma")
    monday = clock.now().date() - dt.timedelta(days=clock.now().weekday()) + dt.timedelta(days=7)
    at = dt.datetime.combine(monday, dt.time(9), tzinfo=dt.UTC)
    assert doctor.practitioner_id and colleague.practitioner_id
    _book(runtime, clerk, a.id, doctor.practitioner_id, at)
    _book(runtime, clerk, b.id, doctor.practitioner_id, at + dt.timedelta(days=3))
    _book(runtime, clerk, c.id, colleague.practitioner_id, at)  # another practitioner's
    cancelled = _book(runtime, clerk, c.id, doctor.practitioner_id, at + dt.timedelta(hours=2))
    Gate(runtime, clerk).cancel_appointment(appointment_id=cancelled, expected_version=1, reason="malade")

    week = Gate(runtime, clerk).practitioner_schedule(
        practitioner_id=str(doctor.practitioner_id), day_from=monday, day_to=monday + dt.timedelta(days=6)
    )
    assert [e.patient.family for e in week.entries] == ["Alpha", "Beta"]
    for entry in week.entries:
        assert entry.appointment.reason is None  # never why
        assert entry.patient.phone is None and entry.patient.address is None and entry.patient.ins is None
        assert entry.patient.birth_date is not None
    assert _listed(runtime, clerk.actor_ref) == {uuid.UUID(a.id), uuid.UUID(b.id)}
    day = Gate(runtime, clerk).practitioner_schedule(
        practitioner_id=str(doctor.practitioner_id), day_from=monday, day_to=monday
    )
    assert [e.patient.family for e in day.entries] == ["Alpha"]
    with runtime.session_factory() as session:
        last = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).one()
    assert last.kind == "phi:resource:list" and last.outcome == "success"
    assert str(a.id) in (last.patient_ids or "")

    # The physician's own calendar shows their patients only (the others are not in their care).
    mine = Gate(runtime, doctor).practitioner_schedule(
        practitioner_id=str(doctor.practitioner_id), day_from=monday, day_to=monday + dt.timedelta(days=6)
    )
    assert {e.patient.family for e in mine.entries} <= {"Alpha", "Beta"}

    with pytest.raises(InvalidInput):  # more than a week
        Gate(runtime, clerk).practitioner_schedule(
            practitioner_id=str(doctor.practitioner_id), day_from=monday, day_to=monday + dt.timedelta(days=7)
        )
    other = f.make_facility(runtime, name="Autre")
    stranger = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=other)
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
