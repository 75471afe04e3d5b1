"""Security console, administration, front desk, billing and portal pages: each refuses the
wrong role (audited) and does its job for the right one."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.runtime import Runtime
from tests.proofs import prove
from tests.web.conftest import Hospital, login, make_person, open_session_for


def _outcomes(runtime: Runtime, kind: AuditKind) -> list[str]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(AuditEvent.outcome).where(AuditEvent.kind == kind.value)))


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/security", AuditKind.DETECTION_ALERTS_READ),
        ("/security/audit", AuditKind.AUDIT_VERIFIED),
        ("/admin", AuditKind.ACCOUNTS_LISTED),
        ("/portal", AuditKind.AUDIT_EVENTS_READ),
        ("/portal/access-log", AuditKind.AUDIT_EVENTS_READ),
        ("/desk", AuditKind.PHI_CREATE),
        ("/billing", AuditKind.PHI_LIST),
        ("/security/incident", AuditKind.INCIDENT_REPORT),
    ],
)
def test_staff_pages_refuse_a_physician(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, path: str, kind: AuditKind
) -> None:
    login(client, hospital.physician)
    page = client.get(path)
    assert page.status_code == 403, page.text
    assert "not allowed" in page.text
    assert "denied" in _outcomes(sqlite_runtime, kind)


def test_security_console_lists_and_reviews_break_glass(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    officer = make_person(
        sqlite_runtime, "sec.olga", roles=(Role.SECURITY_OFFICER,), facility_id=hospital.facility_id
    )
    from carnet.phi.gate import Gate
    from tests import factories

    doctor = factories.make_physician(sqlite_runtime, hospital.facility_id)
    Gate(sqlite_runtime, doctor).break_glass(
        patient_id=hospital.their_patient, reason="emergency", justification="Unconscious, no relative here"
    )
    csrf = open_session_for(client, sqlite_runtime, officer)
    prove(client, sqlite_runtime)
    page = client.get("/security")
    assert page.status_code == 200, page.text
    assert "Unconscious, no relative here" in page.text
    assert "success" in _outcomes(sqlite_runtime, AuditKind.BREAK_GLASS_LISTED)
    access_id = page.text.split("/security/break-glass/")[1].split("/review")[0]
    done = client.post(
        f"/security/break-glass/{access_id}/review",
        data={"note": "called the ER: justified", "csrf_token": csrf},
    )
    assert done.status_code == 303
    assert "Nothing to review." in client.get("/security").text
    assert "success" in _outcomes(sqlite_runtime, AuditKind.BREAK_GLASS_REVIEWED)
    timeline = client.get("/security/timeline", params={"actor_ref": f"account:{doctor.account_id}"})
    assert timeline.status_code == 200
    chain = client.get("/security/audit")
    assert chain.status_code == 200 and "no-checkpoints" not in chain.text  # start-up pinned the chain
    assert sqlite_runtime.checkpointer is not None
    sqlite_runtime.checkpointer.checkpoint(force=True)
    chain = client.get("/security/audit")
    assert "Intact." in chain.text, chain.text[chain.text.index("<main") :]
    assert "success" in _outcomes(sqlite_runtime, AuditKind.AUDIT_VERIFIED)


def test_administrator_needs_a_second_administrator(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    first = make_person(sqlite_runtime, "admin.one", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    second = make_person(sqlite_runtime, "admin.two", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    newcomer = make_person(sqlite_runtime, "nurse.new", roles=(), facility_id=hospital.facility_id)
    csrf = open_session_for(client, sqlite_runtime, first)
    prove(client, sqlite_runtime)
    page = client.get("/admin")
    assert page.status_code == 200 and "nurse.new" in page.text
    asked = client.post(
        "/admin/grants",
        data={
            "account_id": str(newcomer.account_id),
            "role": "nurse",
            "facility_id": str(hospital.facility_id),
            "reason": "hired on ward 3",
            "csrf_token": csrf,
        },
    )
    assert asked.status_code == 303, asked.text
    page = client.get("/admin")
    grant_id = page.text.split("/admin/grants/")[1].split("/approve")[0]
    refused = client.post(f"/admin/grants/{grant_id}/approve", data={"csrf_token": csrf})
    assert refused.status_code == 403 and "second administrator" in refused.text
    client.cookies.clear()
    csrf = open_session_for(client, sqlite_runtime, second)
    prove(client, sqlite_runtime)
    assert client.post(f"/admin/grants/{grant_id}/approve", data={"csrf_token": csrf}).status_code == 303
    assert "success" in _outcomes(sqlite_runtime, AuditKind.ROLE_GRANT_APPROVED)
    # Administrators administer: no chart, no search.
    assert client.get(f"/patients/{hospital.my_patient}").status_code in (403, 404)


def test_front_desk_registers_detects_duplicates_and_books(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.front_desk)
    form = {
        "family": "Lefèvre",
        "given": "Anaïs",
        "birth_date": "1991-07-14",
        "gender": "female",
        "ins": "291077512345612",
        "csrf_token": csrf,
    }
    created = client.post("/desk/patients", data=form)
    assert created.status_code == 303, created.text
    patient_path = created.headers["location"]
    again = client.post("/desk/patients", data=form)
    assert again.status_code == 409
    assert "already registered" in again.text
    chart = client.get(patient_path)
    assert chart.status_code == 200 and "Lefèvre" in chart.text
    practitioner = str(hospital.physician.practitioner_id)
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).replace(
        hour=9, minute=0, second=0, microsecond=0
    )
    booked = client.post(
        f"{patient_path}/appointments",
        data={
            "practitioner_id": practitioner,
            "start_at": start.strftime("%Y-%m-%dT%H:%M"),
            "csrf_token": csrf,
        },
    )
    assert booked.status_code == 303, booked.text
    chart = client.get(f"{patient_path}/sections/appointments")
    appointment_id = chart.text.split("/appointments/")[1].split("/move")[0]
    cancelled = client.post(
        f"{patient_path}/appointments/{appointment_id}/cancel",
        data={"expected_version": "1", "reason": "patient called", "csrf_token": csrf},
    )
    assert cancelled.status_code == 303, cancelled.text
    assert "patient called" in client.get(f"{patient_path}/sections/appointments").text
    assert client.get(f"{patient_path}/sections/notes").status_code == 404  # not a front-desk section


def test_portal_shows_the_patient_their_record_and_who_opened_it(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    from carnet.phi.gate import Gate
    from tests import factories

    doctor = factories.make_physician(sqlite_runtime, hospital.facility_id)
    Gate(sqlite_runtime, doctor).break_glass(
        patient_id=hospital.my_patient, reason="emergency", justification="Found unconscious at the bus stop"
    )
    Gate(sqlite_runtime, doctor).read_patient(patient_id=hospital.my_patient)
    login(client, hospital.patient_person)
    assert client.get("/home").headers["location"] == "/portal"
    page = client.get("/portal")
    assert page.status_code == 200, page.text
    assert "&lt;script&gt;" in page.text and "<script>alert" not in page.text
    assert 'hx-get="/portal/access-log"' in page.text  # the log loads after the page
    log = client.get("/portal/access-log", headers={"HX-Request": "true"})
    assert log.status_code == 200 and log.text.startswith("<section")
    assert "opened your record" in log.text
    assert "emergency access" in log.text and "Found unconscious at the bus stop" in log.text


def test_billing_sees_coverage_and_invoices_not_notes(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    clerk = make_person(
        sqlite_runtime, "billing.bob", roles=(Role.BILLING,), facility_id=hospital.facility_id
    )
    csrf = login(client, clerk)
    assert client.get("/home").headers["location"] == "/billing"
    found = client.post("/patients", data={"csrf_token": csrf, "identifier": "180022912345678"})
    assert found.status_code == 200 and "&lt;script&gt;" in found.text
    chart = client.get(f"/patients/{hospital.my_patient}")
    assert chart.status_code == 200
    assert "/sections/invoices" in chart.text and "/sections/notes" not in chart.text
    invoices = client.get(
        f"/patients/{hospital.my_patient}/sections/invoices", headers={"HX-Request": "true"}
    )
    assert invoices.status_code == 200 and "Invoices" in invoices.text
    assert client.get(f"/patients/{hospital.my_patient}/sections/notes").status_code == 404
