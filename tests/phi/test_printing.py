"""Printing through the gate: the right role gets a PDF naming the patient and watermarked with
who printed it, when and the document id (which the audit event names); the wrong role is
refused and audited; a print is an exposure of the patient, and mass printing trips detection
like mass reading."""

from __future__ import annotations

import datetime as dt
import io
import uuid

import pytest
import sqlalchemy as sa
from pypdf import PdfReader

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.detection.models import Exposure
from carnet.kernel import clock
from carnet.kernel.errors import AccountContained, Conflict, NotFound, StepUpRequired, Throttled
from carnet.phi.gate import Gate
from carnet.phi.schemas import AllergyInput, PaymentInput, PrescriptionInput
from carnet.runtime import Runtime
from tests import factories as f

PRINT = "phi:resource:print"


def text_of(pdf: bytes) -> str:
    assert pdf.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() or "" for page in reader.pages)


def _prints(runtime: Runtime, actor: Actor) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        return list(
            session.scalars(
                sa.select(AuditEvent)
                .where(AuditEvent.actor_ref == actor.actor_ref, AuditEvent.kind == PRINT)
                .order_by(AuditEvent.seq)
            )
        )


def _report_exposures(runtime: Runtime, actor: Actor) -> list[uuid.UUID]:
    with runtime.session_factory() as session:
        return list(
            session.scalars(
                sa.select(Exposure.patient_id).where(
                    Exposure.actor_ref == actor.actor_ref, Exposure.channel == "report"
                )
            )
        )


@pytest.fixture
def ward(sqlite_runtime: Runtime, movable_clock: clock.MovableClock) -> dict[str, object]:
    # Mid-morning, a weekday: no night rule of detection applies.
    movable_clock.set(dt.datetime(2026, 12, 8, 9, 30, tzinfo=dt.UTC))
    runtime = sqlite_runtime
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    nurse = f.make_nurse(runtime, facility)
    billing = f.make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    patient = f.register_patient(runtime, facility, family="Lefèvre", given="Élise")
    assert doctor.practitioner_id and nurse.practitioner_id
    for who in (doctor.practitioner_id, nurse.practitioner_id):
        f.link_care(runtime, patient_id=patient.id, practitioner_id=who, facility_id=facility)
    gate = Gate(runtime, doctor)
    gate.record_allergy(
        data=AllergyInput(
            patient_id=patient.id, substance_code="J01C", substance_display="Pénicillines", criticality="high"
        )
    )
    rx = gate.prescribe(
        data=PrescriptionInput(
            patient_id=patient.id,
            medication_code="N02BE01",
            medication_display="Paracétamol 1 g",
            substance_code="N02BE01",
            dosage_text="1 g matin, midi et soir\npendant 5 jours",
        )
    )
    location = f.make_location(runtime, facility)
    stay = f.admit(
        runtime,
        patient_id=patient.id,
        facility_id=facility,
        location_id=location,
        attending_id=doctor.practitioner_id,
    )
    gate.write_note(
        patient_id=patient.id,
        kind="18842-5",
        title="Synthèse",
        text="Sortie à domicile.\nRevoir en consultation dans 1 mois.",
        encounter_id=str(stay),
    )
    invoice = f.make_invoice(runtime, patient_id=patient.id, facility_id=facility, total_cents=5_000)
    paid = Gate(runtime, billing).record_payment(
        data=PaymentInput(invoice_id=str(invoice), expected_version=1, amount_cents=2_000, method="card")
    )
    return {
        "runtime": runtime,
        "facility": facility,
        "doctor": doctor,
        "nurse": nurse,
        "billing": billing,
        "patient": patient.id,
        "rx": rx.id,
        "stay": str(stay),
        "invoice": str(invoice),
        "payment": paid.payments[0].id,
    }


def _traced(runtime: Runtime, actor: Actor, document_id: str, patient: str) -> AuditEvent:
    """The print's audit event names the document and the patient."""
    events = [e for e in _prints(runtime, actor) if e.outcome == "success"]
    assert events, "the print was not audited"
    event = events[-1]
    assert event.query is not None and f"document={document_id}" in event.query
    assert patient in event.patient_ids
    return event


def test_a_physician_prints_a_prescription_watermarked_audited_and_counted(ward: dict[str, object]) -> None:
    runtime, doctor = ward["runtime"], ward["doctor"]
    assert isinstance(runtime, Runtime) and isinstance(doctor, Actor)
    printed = Gate(runtime, doctor).print_prescription(prescription_id=str(ward["rx"]))
    text = text_of(printed.pdf)
    assert "Ordonnance" in text and "LEFÈVRE" in text.upper() and "Élise" in text
    assert "Paracétamol 1 g" in text and "pendant 5 jours" in text
    # The watermark: who printed it, when (Paris time), which document.
    assert f"Imprimé par {doctor.username}" in text
    assert printed.document_id in text
    assert "10:30" in text  # 09:30 UTC printed as Paris time
    # Only what the page needs of the patient: no address, phone or INS.
    assert "rue de Test" not in text and "06 12 34 56 78" not in text
    _traced(runtime, doctor, printed.document_id, str(ward["patient"]))
    assert _report_exposures(runtime, doctor) == [uuid.UUID(str(ward["patient"]))]


def test_a_nurse_or_billing_cannot_print_a_prescription_and_the_refusal_is_audited(
    ward: dict[str, object],
) -> None:
    runtime = ward["runtime"]
    assert isinstance(runtime, Runtime)
    for who in ("nurse", "billing"):
        actor = ward[who]
        assert isinstance(actor, Actor)
        with pytest.raises(NotFound):
            Gate(runtime, actor).print_prescription(prescription_id=str(ward["rx"]))
        assert [e.outcome for e in _prints(runtime, actor)] == ["denied"]
        assert _report_exposures(runtime, actor) == []


def test_billing_prints_an_invoice_and_a_receipt_without_clinical_content(ward: dict[str, object]) -> None:
    runtime, billing = ward["runtime"], ward["billing"]
    assert isinstance(runtime, Runtime) and isinstance(billing, Actor)
    gate = Gate(runtime, billing)
    invoice = gate.print_invoice(invoice_id=str(ward["invoice"]))
    text = text_of(invoice.pdf)
    assert "Facture F-TEST-" in text and "Élise" in text and "Consultation" in text
    assert "50,00" in text and "30,00" in text  # the total, and what is still due
    for clinical in ("Pénicillines", "Paracétamol", "Synthèse", "Sortie à domicile"):
        assert clinical not in text
    assert f"Imprimé par {billing.username}" in text and invoice.document_id in text
    _traced(runtime, billing, invoice.document_id, str(ward["patient"]))

    receipt = gate.print_receipt(payment_id=str(ward["payment"]), language="en")
    text = text_of(receipt.pdf)
    assert "Receipt" in text and "Élise" in text and "€20.00" in text and "card" in text
    assert f"Printed by {billing.username}" in text and receipt.document_id in text
    _traced(runtime, billing, receipt.document_id, str(ward["patient"]))
    assert len(_report_exposures(runtime, billing)) == 2


def test_clinicians_cannot_print_invoices(ward: dict[str, object]) -> None:
    runtime = ward["runtime"]
    assert isinstance(runtime, Runtime)
    for who in ("doctor", "nurse"):
        actor = ward[who]
        assert isinstance(actor, Actor)
        with pytest.raises(NotFound):
            Gate(runtime, actor).print_invoice(invoice_id=str(ward["invoice"]))
        with pytest.raises(NotFound):
            Gate(runtime, actor).print_receipt(payment_id=str(ward["payment"]))
        assert [e.outcome for e in _prints(runtime, actor)] == ["denied", "denied"]


def test_a_physician_prints_the_discharge_letter_of_a_stay(ward: dict[str, object]) -> None:
    runtime, doctor = ward["runtime"], ward["doctor"]
    assert isinstance(runtime, Runtime) and isinstance(doctor, Actor)
    letter = Gate(runtime, doctor).print_discharge_letter(encounter_id=str(ward["stay"]))
    text = text_of(letter.pdf)
    assert "Lettre de sortie" in text and "Élise" in text
    assert "Pénicillines" in text and "Paracétamol 1 g" in text
    # The stay's discharge summary, its line breaks kept.
    assert "Sortie à domicile.\nRevoir en consultation" in text
    assert letter.document_id in text
    _traced(runtime, doctor, letter.document_id, str(ward["patient"]))
    for who in ("nurse", "billing"):
        actor = ward[who]
        assert isinstance(actor, Actor)
        with pytest.raises(NotFound):
            Gate(runtime, actor).print_discharge_letter(encounter_id=str(ward["stay"]))
        assert [e.outcome for e in _prints(runtime, actor)] == ["denied"]


def test_what_is_not_printable_is_refused_and_audited_as_an_error(
    ward: dict[str, object], movable_clock: clock.MovableClock
) -> None:
    runtime, doctor = ward["runtime"], ward["doctor"]
    assert isinstance(runtime, Runtime) and isinstance(doctor, Actor)
    gate = Gate(runtime, doctor)
    # An expired prescription: a pharmacy would refuse it, so it is renewed, not printed.
    short = gate.prescribe(
        data=PrescriptionInput(
            patient_id=str(ward["patient"]),
            medication_code="A02BC01",
            medication_display="Oméprazole 20 mg",
            substance_code="A02BC01",
            dosage_text="1 gélule le matin",
            valid_until=clock.now() + dt.timedelta(days=1),
        )
    )
    movable_clock.advance(dt.timedelta(days=2))
    with pytest.raises(Conflict, match="expired"):
        gate.print_prescription(prescription_id=str(short.id))
    rx = gate.read_prescription(prescription_id=str(ward["rx"]))
    assert rx.id and rx.version_id
    gate.stop_prescription(prescription_id=rx.id, expected_version=rx.version_id, reason="fin du traitement")
    with pytest.raises(Conflict):
        gate.print_prescription(prescription_id=rx.id)
    assert [e.outcome for e in _prints(runtime, doctor)] == ["error", "error"]
    assert _report_exposures(runtime, doctor) == []


def test_mass_printing_trips_detection_like_mass_reading(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    """A billing clerk printing every invoice of the facility is stopped at the same count as
    one opening every patient's invoices: a print is an exposure like a read."""
    movable_clock.set(dt.datetime(2026, 12, 8, 9, 30, tzinfo=dt.UTC))
    runtime = sqlite_runtime
    facility = f.make_facility(runtime)
    desk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    invoices = []
    for n in range(40):
        patient = f.register_patient(runtime, facility, family=f"Serie{n}", by=desk)
        invoices.append(
            (patient.id, str(f.make_invoice(runtime, patient_id=patient.id, facility_id=facility)))
        )

    def stopped_at(action: str) -> int:
        clerk = f.make_account(runtime, roles=[Role.BILLING], facility_id=facility)
        gate = Gate(runtime, clerk)
        for count, (patient_id, invoice_id) in enumerate(invoices, start=1):
            try:
                if action == "print":
                    gate.print_invoice(invoice_id=invoice_id)
                else:
                    gate.list_invoices(patient_id=patient_id)
            except (StepUpRequired, Throttled, AccountContained):
                return count
        return 0

    printed = stopped_at("print")
    read = stopped_at("read")
    assert 0 < printed <= 30, printed
    assert printed == read
