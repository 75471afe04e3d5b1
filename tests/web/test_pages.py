"""Pages through the TestClient: rendering, refusals (audited), CSRF, escaping, languages."""

from __future__ import annotations

import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.web.conftest import Hospital, login


def _events(runtime: Runtime, kind: AuditKind) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind.value)))


def test_login_page_has_strict_csp_and_no_inline_script(client: TestClient) -> None:
    page = client.get("/login")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script>" not in page.text  # only <script src=...>
    assert page.headers["cache-control"] == "no-store"


def test_pages_without_session_send_to_login(client: TestClient) -> None:
    response = client.get("/day")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=/day")


def test_chart_escapes_markup_in_names(client: TestClient, hospital: Hospital) -> None:
    login(client, hospital.physician)
    page = client.get(f"/patients/{hospital.my_patient}")
    assert page.status_code == 200, page.text
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "Zoé &#34;l&#39;Éclair&#34;" in page.text


def test_day_list_and_search(client: TestClient, hospital: Hospital, sqlite_runtime: Runtime) -> None:
    csrf = login(client, hospital.physician)
    assert client.get("/day").status_code == 200
    page = client.post("/patients", data={"csrf_token": csrf, "identifier": "170011234567890"})
    assert page.status_code == 200
    assert "Durand" in page.text  # located, not opened
    assert page.headers["cache-control"] == "no-store"
    vague = client.post("/patients", data={"csrf_token": csrf, "birth_date": "1980-02-29"})
    assert vague.status_code == 400
    assert "needs an identifier" in vague.text
    assert _events(sqlite_runtime, AuditKind.PHI_SEARCH)


def test_out_of_care_chart_offers_break_glass(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    login(client, hospital.physician)
    page = client.get(f"/patients/{hospital.their_patient}")
    assert page.status_code == 404
    assert f"/patients/{hospital.their_patient}/break-glass" in page.text
    denied = [e for e in _events(sqlite_runtime, AuditKind.PHI_READ) if e.outcome == "denied"]
    assert denied


def test_post_without_csrf_token_is_refused(client: TestClient, hospital: Hospital) -> None:
    login(client, hospital.physician)
    response = client.post(
        f"/patients/{hospital.my_patient}/notes",
        data={"kind": "11506-3", "title": "t", "text": "x"},
    )
    assert response.status_code == 403
    assert "security token" in response.text
    page = client.get(f"/patients/{hospital.my_patient}")
    assert "Nothing here" not in page.text and ">t <" not in page.text


def test_note_write_amend_and_history(client: TestClient, hospital: Hospital) -> None:
    csrf = login(client, hospital.physician)
    pid = hospital.my_patient
    response = client.post(
        f"/patients/{pid}/notes",
        data={"kind": "11506-3", "title": "Admission", "text": "Chest pain", "csrf_token": csrf},
    )
    assert response.status_code == 303, response.text
    assert "Chest pain" not in client.get(f"/patients/{pid}").text  # notes load after the page
    page = client.get(f"/patients/{pid}/sections/notes")
    assert "Chest pain" in page.text
    note_id = page.text.split("/notes/")[1].split("/amend")[0]
    response = client.post(
        f"/patients/{pid}/notes/{note_id}/amend",
        data={
            "expected_version": "1",
            "text": "Chest pain, resolved",
            "reason": "follow-up",
            "csrf_token": csrf,
        },
    )
    assert response.status_code == 303, response.text
    page = client.get(f"/patients/{pid}/sections/notes", headers={"HX-Request": "true"})
    assert page.text.startswith("<section") and "Version history" in page.text and "follow-up" in page.text
    stale = client.post(
        f"/patients/{pid}/notes/{note_id}/amend",
        data={"expected_version": "1", "text": "overwrite", "reason": "stale", "csrf_token": csrf},
    )
    assert stale.status_code == 409
    assert "Nothing was saved" in stale.text


def test_wrong_role_is_refused_and_audited(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    login(client, hospital.front_desk)
    response = client.get("/day")
    assert response.status_code == 403
    assert "not allowed" in response.text
    denied = [e for e in _events(sqlite_runtime, AuditKind.PHI_LIST) if e.outcome == "denied"]
    assert denied


def test_break_glass_needs_step_up_then_opens_for_an_hour(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    csrf = login(client, hospital.physician)
    pid = hospital.their_patient
    form = client.get(f"/patients/{pid}/break-glass")
    assert form.status_code == 200
    short = client.post(
        f"/patients/{pid}/break-glass",
        data={"reason": "emergency", "justification": "short", "otp": "", "csrf_token": csrf},
    )
    assert short.status_code in (400, 403)
    assert client.get(f"/patients/{pid}").status_code == 404
    movable_clock.advance(dt.timedelta(seconds=31))  # a TOTP code is accepted once: wait for the next
    ok = client.post(
        f"/patients/{pid}/break-glass",
        data={
            "reason": "emergency",
            "justification": "Unconscious in the emergency room, no relative",
            "otp": hospital.physician.code(),
            "csrf_token": csrf,
        },
    )
    assert ok.status_code == 303, ok.text
    chart = client.get(f"/patients/{pid}")
    assert chart.status_code == 200
    assert "break-the-glass" in chart.text
    assert _events(sqlite_runtime, AuditKind.BREAK_GLASS_START)


def test_expired_session_explains_and_keeps_the_way_back(
    client: TestClient, hospital: Hospital, movable_clock: clock.MovableClock
) -> None:
    login(client, hospital.physician)
    movable_clock.advance(dt.timedelta(hours=2))  # past the idle timeout
    response = client.get("/day")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/day&ended=1"
    page = client.get(response.headers["location"])
    assert "Your session has ended." in page.text and "sign in again" in page.text


def test_contained_account_gets_a_page_that_says_whom_to_call(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    from carnet.identity.models import Account

    login(client, hospital.physician)
    with sqlite_runtime.session_factory.begin() as session:
        account = session.get_one(Account, hospital.physician.account_id)
        account.status = "suspended"
        account.status_reason = "read 300 charts outside their care in 10 minutes"
    page = client.get("/day")
    assert page.status_code == 403
    assert "Your account is suspended" in page.text
    assert "call the security office" in page.text.lower()


def test_recovery_codes_need_a_fresh_code_and_are_shown_once(
    client: TestClient, hospital: Hospital, movable_clock: clock.MovableClock
) -> None:
    csrf = login(client, hospital.physician)
    movable_clock.advance(dt.timedelta(minutes=6))  # the login's second factor is no longer fresh
    asked = client.post("/account/recovery-codes", data={"csrf_token": csrf})
    assert asked.status_code == 403 and "Confirm it is you" in asked.text
    confirmed = client.post(
        "/step-up", data={"otp": hospital.physician.code(), "next": "/account", "csrf_token": csrf}
    )
    assert confirmed.status_code == 303 and confirmed.headers["location"] == "/account"
    made = client.post("/account/recovery-codes", data={"csrf_token": csrf})
    assert made.status_code == 200 and made.text.count("<code>") >= 8
    assert made.headers["cache-control"] == "no-store"
