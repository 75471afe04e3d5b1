"""Print buttons and the PDF they answer (TestClient): the right role gets a watermarked PDF in
the page's language, the wrong role the refusal page (audited), and a post without the page's
token (another site, or a stolen cookie alone) prints nothing."""

from __future__ import annotations

import io

from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.phi.gate import Gate
from carnet.phi.schemas import PaymentInput, PrescriptionInput
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, login, make_person
from tests.web.test_browser import staff_actor

FRENCH = {"Accept-Language": "fr-FR,fr;q=0.9"}


def _text(pdf: bytes) -> str:
    return "\n".join(p.extract_text() or "" for p in PdfReader(io.BytesIO(pdf)).pages)


def _prints(runtime: Runtime) -> list[tuple[str, str, str | None]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            select(AuditEvent.username, AuditEvent.outcome, AuditEvent.query)
            .where(AuditEvent.kind == "phi:resource:print")
            .order_by(AuditEvent.seq)
        ).all()
    return [(u, o, q) for u, o, q in rows]


def _prescription(runtime: Runtime, hospital: Hospital) -> str:
    doctor = Gate(runtime, staff_actor(hospital.physician, Role.PHYSICIAN))
    rx = doctor.prescribe(
        data=PrescriptionInput(
            patient_id=hospital.my_patient,
            medication_code="N02BE01",
            medication_display="Paracétamol 500 mg",
            substance_code="N02BE01",
            dosage_text="1 comprimé si douleur",
        )
    )
    assert rx.id is not None
    return rx.id


def test_a_physician_prints_a_prescription_from_the_chart(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    rx = _prescription(sqlite_runtime, hospital)
    csrf = login(client, hospital.physician)
    section = client.get(
        f"/patients/{hospital.my_patient}/sections/prescriptions", headers={"HX-Request": "true"} | FRENCH
    )
    assert (
        f'action="/print/prescriptions/{rx}"' in section.text and "Imprimer l&#39;ordonnance" in section.text
    )

    # Without the page's token: refused, nothing printed.
    assert client.post(f"/print/prescriptions/{rx}").status_code == 403
    assert _prints(sqlite_runtime) == []

    pdf = client.post(f"/print/prescriptions/{rx}", data={"csrf_token": csrf}, headers=FRENCH)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["cache-control"] == "no-store"
    assert pdf.headers["content-disposition"].startswith("inline; filename=")
    text = _text(pdf.content)
    document = pdf.headers["x-carnet-document"]
    assert "Ordonnance" in text and "Zoé" in text and "Paracétamol 500 mg" in text
    assert "Imprimé par dr.house" in text and document in text
    [(who, outcome, query)] = _prints(sqlite_runtime)
    assert (who, outcome) == ("dr.house", "success") and query and document in query

    # The other physician, not in this patient's care: refused like a missing record, audited.
    client.cookies.clear()
    other = login(client, hospital.other_physician)
    refused = client.post(f"/print/prescriptions/{rx}", data={"csrf_token": other})
    assert refused.status_code == 404 and refused.headers["content-type"].startswith("text/html")
    assert _prints(sqlite_runtime)[-1][:2] == ("dr.other", "denied")


def test_billing_prints_invoices_and_receipts_and_the_desk_cannot(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    runtime = sqlite_runtime
    clerk = make_person(runtime, "bill.ana", roles=(Role.BILLING,), facility_id=hospital.facility_id)
    invoice = factories.make_invoice(
        runtime, patient_id=hospital.my_patient, facility_id=hospital.facility_id
    )
    paid = Gate(runtime, staff_actor(clerk, Role.BILLING)).record_payment(
        data=PaymentInput(invoice_id=str(invoice), expected_version=1, amount_cents=1000, method="cash")
    )
    payment = paid.payments[0].id
    csrf = login(client, clerk)
    section = client.get(f"/patients/{hospital.my_patient}/sections/invoices", headers={"HX-Request": "true"})
    assert f'action="/print/invoices/{invoice}"' in section.text
    assert f'action="/print/payments/{payment}"' in section.text
    worklist = client.get("/billing/worklist")  # the unpaid invoices print from there too
    assert f'action="/print/invoices/{invoice}"' in worklist.text
    assert f'action="/print/payments/{payment}"' in worklist.text
    for path, words in ((f"/print/invoices/{invoice}", "Invoice"), (f"/print/payments/{payment}", "Receipt")):
        pdf = client.post(path, data={"csrf_token": csrf}, headers={"Accept-Language": "en-GB"})
        assert pdf.status_code == 200, pdf.text
        text = _text(pdf.content)
        assert words in text and "Zoé" in text and "Printed by bill.ana" in text
    client.cookies.clear()
    desk = login(client, hospital.front_desk)
    assert client.post(f"/print/invoices/{invoice}", data={"csrf_token": desk}).status_code == 404
    assert [(u, o) for u, o, _q in _prints(runtime)] == [
        ("bill.ana", "success"),
        ("bill.ana", "success"),
        ("desk.anna", "denied"),
    ]


def test_a_physician_prints_a_discharge_letter_from_the_stays_section(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    assert hospital.physician.practitioner_id is not None
    stay = factories.admit(
        sqlite_runtime,
        patient_id=hospital.my_patient,
        facility_id=hospital.facility_id,
        location_id=factories.make_location(sqlite_runtime, hospital.facility_id),
        attending_id=hospital.physician.practitioner_id,
    )
    csrf = login(client, hospital.physician)
    section = client.get(
        f"/patients/{hospital.my_patient}/sections/stays", headers={"HX-Request": "true"} | FRENCH
    )
    assert section.status_code == 200 and f'action="/print/stays/{stay}"' in section.text
    chart = client.get(f"/patients/{hospital.my_patient}", headers=FRENCH)
    assert f'action="/print/stays/{stay}"' in chart.text  # the banner's stay too
    pdf = client.post(f"/print/stays/{stay}", data={"csrf_token": csrf}, headers=FRENCH)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    text = _text(pdf.content)
    assert "Lettre de sortie" in text and "Zoé" in text and "Imprimé par dr.house" in text
    assert _prints(sqlite_runtime)[-1][:2] == ("dr.house", "success")
