"""Billing clerks issue, issue from draft and cancel invoices from the chart's invoices section
(TestClient): CSRF-protected form posts, errors shown on the chart with nothing written, the
wrong role refused like a missing record and audited."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.billing.models import Invoice
from carnet.runtime import Runtime
from tests.web.conftest import Hospital, Person, login, make_person


def _clerk(runtime: Runtime, hospital: Hospital) -> Person:
    return make_person(runtime, "bill.ana", roles=(Role.BILLING,), facility_id=hospital.facility_id)


def _invoices(runtime: Runtime) -> list[tuple[str, str, int, int]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            select(Invoice.number, Invoice.status, Invoice.total_cents, Invoice.version_id).order_by(
                Invoice.number
            )
        ).all()
        return [(n, s, t, v) for n, s, t, v in rows]


def _outcomes(runtime: Runtime, kind: AuditKind) -> list[str]:
    with runtime.session_factory() as session:
        return list(
            session.scalars(
                select(AuditEvent.outcome)
                .where(AuditEvent.kind == kind.value, AuditEvent.resource_type == "Invoice")
                .order_by(AuditEvent.seq)
            )
        )


def _form(csrf: str, patient: str, *lines: tuple[str, str, str], **extra: str) -> dict[str, object]:
    rows = list(lines) + [("", "", "")] * (5 - len(lines))
    return {
        "csrf_token": csrf,
        "patient_id": patient,
        "code": [r[0] for r in rows],
        "description": [r[1] for r in rows],
        "amount": [r[2] for r in rows],
        **extra,
    }


def test_a_billing_clerk_issues_and_cancels_invoices_from_the_chart(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    runtime = sqlite_runtime
    csrf = login(client, _clerk(runtime, hospital))
    section = client.get(f"/patients/{hospital.my_patient}/sections/invoices", headers={"HX-Request": "true"})
    assert 'action="/billing/invoices"' in section.text

    issued = client.post(
        "/billing/invoices",
        data=_form(csrf, hospital.my_patient, ("CS", "Consultation", "30"), ("DEQP003", "ECG", "14,26")),
    )
    assert issued.status_code == 303 and issued.headers["location"].endswith("#invoices")
    [(number, status, total, version)] = _invoices(runtime)
    assert status == "issued" and total == 4426 and version == 1 and number.endswith("-0000001")

    # Bad input: shown on the chart, the typed acts kept, nothing written.
    for lines, message in (
        ([("CS", "Consultation", "-3")], "amount_cents"),
        ([("CS", "", "3")], "each act needs"),
        ([], "at least one act"),
        ([("CS", "Consultation", "3.999")], "euros"),
    ):
        bad = client.post("/billing/invoices", data=_form(csrf, hospital.my_patient, *lines))
        assert bad.status_code == 400 and "Nothing was changed" in bad.text and message in bad.text
    assert 'value="Consultation"' in bad.text  # the clerk does not type it again
    assert len(_invoices(runtime)) == 1
    assert (
        client.post("/billing/invoices", data=_form("", hospital.my_patient, ("CS", "C", "1"))).status_code
        == 403
    )

    # A draft, issued later; then an unpaid one cancelled with its reason (a stale form: 409).
    draft = client.post(
        "/billing/invoices", data=_form(csrf, hospital.my_patient, ("CS", "Consultation", "25"), draft="1")
    )
    assert draft.status_code == 303
    with runtime.session_factory() as session:
        draft_id = session.scalar(select(Invoice.id).where(Invoice.status == "draft"))
    section = client.get(f"/patients/{hospital.my_patient}/sections/invoices", headers={"HX-Request": "true"})
    assert f"/billing/invoices/{draft_id}/issue" in section.text
    form = {"csrf_token": csrf, "patient_id": hospital.my_patient, "expected_version": "1"}
    assert client.post(f"/billing/invoices/{draft_id}/issue", data=form).status_code == 303
    again = client.post(f"/billing/invoices/{draft_id}/issue", data=form)
    assert again.status_code == 409 and "changed by someone else" in again.text
    cancel = form | {"expected_version": "2", "reason": "acte en double"}
    assert client.post(f"/billing/invoices/{draft_id}/cancel", data=cancel).status_code == 303
    section = client.get(f"/patients/{hospital.my_patient}/sections/invoices", headers={"HX-Request": "true"})
    assert "acte en double" in section.text and f"/billing/invoices/{draft_id}/cancel" not in section.text
    assert sorted(s for _n, s, _t, _v in _invoices(runtime)) == ["cancelled", "issued"]
    assert _outcomes(runtime, AuditKind.PHI_CREATE).count("success") == 2
    assert _outcomes(runtime, AuditKind.PHI_UPDATE) == ["success", "error", "success"]


def test_physicians_and_the_front_desk_cannot_issue_or_cancel_invoices(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    runtime = sqlite_runtime
    csrf = login(client, _clerk(runtime, hospital))
    client.post("/billing/invoices", data=_form(csrf, hospital.my_patient, ("CS", "Consultation", "30")))
    with runtime.session_factory() as session:
        invoice = session.scalar(select(Invoice.id))
        count = session.scalar(select(func.count()).select_from(Invoice))
    for person in (hospital.physician, hospital.front_desk):  # the physician has the patient in care
        client.cookies.clear()
        csrf = login(client, person)
        section = client.get(
            f"/patients/{hospital.my_patient}/sections/invoices", headers={"HX-Request": "true"}
        )
        assert 'action="/billing/invoices"' not in section.text
        refused = client.post("/billing/invoices", data=_form(csrf, hospital.my_patient, ("CS", "C", "9")))
        assert refused.status_code == 404
        cancel = {
            "csrf_token": csrf,
            "patient_id": hospital.my_patient,
            "expected_version": "1",
            "reason": "x",
        }
        assert client.post(f"/billing/invoices/{invoice}/cancel", data=cancel).status_code == 404
    assert _outcomes(runtime, AuditKind.PHI_CREATE) == ["success", "denied", "denied"]
    assert _outcomes(runtime, AuditKind.PHI_UPDATE) == ["denied", "denied"]
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Invoice)) == count
        assert session.scalar(select(Invoice.status).where(Invoice.id == invoice)) == "issued"
