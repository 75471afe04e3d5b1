"""Identifiers, names and birth dates never travel in a URL: the patient search and the
calendar's lookup are CSRF-protected POST forms, and their pages are never cached."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.web.conftest import Hospital, login, make_person

INS = "180022912345678"


def _events(runtime: Runtime, kind: AuditKind) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind.value)))


def test_search_runs_from_the_form_body_and_is_not_cached(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    empty = client.get("/patients")
    assert empty.status_code == 200 and 'method="post" action="/patients"' in empty.text
    found = client.post("/patients", data={"csrf_token": csrf, "identifier": INS})
    assert found.status_code == 200 and "&lt;script&gt;alert(1)" in found.text
    assert found.headers["cache-control"] == "no-store"
    partial = client.post(
        "/patients", data={"csrf_token": csrf, "identifier": INS}, headers={"HX-Request": "true"}
    )
    assert partial.status_code == 200 and "<h1>" not in partial.text and "&lt;script&gt;" in partial.text
    assert partial.headers["cache-control"] == "no-store"
    assert len(_events(sqlite_runtime, AuditKind.PHI_SEARCH)) == 2


def test_a_search_in_the_address_is_not_run_nor_echoed(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    login(client, hospital.physician)
    for query in (
        {"identifier": INS},
        {"family": "Durand", "birth_date": "1980-02-29"},
        {"given": "Paul", "page": "2"},
    ):
        answer = client.get("/patients", params=query)
        assert answer.status_code == 303
        location = answer.headers["location"]
        assert location == "/patients?moved=1"
        assert INS not in location and "Durand" not in location
    notice = client.get("/patients?moved=1")
    assert "never in the address" in notice.text and INS not in notice.text
    assert _events(sqlite_runtime, AuditKind.PHI_SEARCH) == []


def test_a_search_without_the_page_token_is_refused(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    login(client, hospital.physician)
    forged = client.post("/patients", data={"identifier": INS})
    assert forged.status_code == 403 and "security token" in forged.text
    assert "Zoé" not in forged.text  # not "Zo": a random page token may hold it
    wrong = client.post("/patients", data={"identifier": INS, "csrf_token": "not-the-token"})
    assert wrong.status_code == 403
    assert _events(sqlite_runtime, AuditKind.PHI_SEARCH) == []


def test_a_patient_account_cannot_search(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.patient_person)
    refused = client.post("/patients", data={"csrf_token": csrf, "identifier": "170011234567890"})
    assert refused.status_code in (400, 403, 404)
    assert "Durand" not in refused.text
    denied = [e for e in _events(sqlite_runtime, AuditKind.PHI_SEARCH) if e.outcome == "denied"]
    assert denied


def test_calendar_lookup_is_a_post_and_the_address_never_carries_the_ins(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.front_desk)
    day = clock.now().date() + dt.timedelta(days=1)
    where = {"practitioner": str(hospital.physician.practitioner_id), "day": day.isoformat(), "view": "week"}
    calendar = client.get("/desk/schedule", params=where)
    assert calendar.status_code == 200 and 'action="/desk/schedule/lookup"' in calendar.text
    old_link = client.get("/desk/schedule", params={**where, "ins": INS})
    assert old_link.status_code == 303 and INS not in old_link.headers["location"]
    assert "/desk/schedule?" in old_link.headers["location"]
    assert _events(sqlite_runtime, AuditKind.PHI_SEARCH) == []
    forged = client.post("/desk/schedule/lookup", data={**where, "ins": INS})
    assert forged.status_code == 403
    assert _events(sqlite_runtime, AuditKind.PHI_SEARCH) == []
    found = client.post("/desk/schedule/lookup", data={**where, "ins": INS, "csrf_token": csrf})
    assert found.status_code == 200 and 'name="patient_id"' in found.text
    assert found.headers["cache-control"] == "no-store"
    unknown = client.post(
        "/desk/schedule/lookup", data={**where, "ins": "199999999999999", "csrf_token": csrf}
    )
    assert unknown.status_code == 404 and "no patient has this identifier" in unknown.text


def test_calendar_lookup_refuses_the_wrong_role_and_audits_it(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    clerk = make_person(
        sqlite_runtime, "billing.bea", roles=(Role.BILLING,), facility_id=hospital.facility_id
    )
    csrf = login(client, clerk)
    refused = client.post("/desk/schedule/lookup", data={"ins": INS, "csrf_token": csrf})
    assert refused.status_code == 403 and "Zoé" not in refused.text
    denied = [e for e in _events(sqlite_runtime, AuditKind.PHI_LIST) if e.outcome == "denied"]
    assert denied and denied[-1].resource_type == "Appointment"
    assert _events(sqlite_runtime, AuditKind.PHI_SEARCH) == []


def test_every_page_showing_patients_is_not_cached(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    login(client, hospital.physician)
    for path, fragment in (
        ("/day", False),
        (f"/patients/{hospital.my_patient}", False),
        (f"/patients/{hospital.my_patient}/sections/notes", True),
        (f"/patients/{hospital.my_patient}/sections/appointments", True),
    ):
        page = client.get(path, headers={"HX-Request": "true"} if fragment else None)
        assert page.status_code == 200, path
        assert page.headers["cache-control"] == "no-store", path
    client.cookies.clear()
    login(client, hospital.front_desk)
    calendar = client.get("/desk/schedule", params={"practitioner": str(hospital.physician.practitioner_id)})
    assert calendar.status_code == 200 and calendar.headers["cache-control"] == "no-store"
    client.cookies.clear()
    login(client, hospital.patient_person)
    portal = client.get("/portal")
    assert portal.status_code == 200 and portal.headers["cache-control"] == "no-store"
