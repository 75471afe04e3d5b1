"""The front desk's calendar and health-card readings, billing payments, opening an account and
export approvals, through the TestClient: each does its job for the right role, refuses the
wrong one (audited), refuses a post without the CSRF token, and renders names as text."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.access.exports import request_export
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.detection.models import Exposure
from carnet.kernel import clock
from carnet.phi.gate import Gate
from carnet.phi.schemas import AppointmentInput
from carnet.runtime import Runtime
from tests import factories
from tests.proofs import prove
from tests.web.conftest import Hospital, Person, login, make_person, open_session_for


def _events(runtime: Runtime, kind: AuditKind) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind.value)))


def _exposed(runtime: Runtime, person: Person) -> set[str]:
    with runtime.session_factory() as session:
        rows = session.scalars(select(Exposure).where(Exposure.actor_ref == f"account:{person.account_id}"))
        return {str(r.patient_id) for r in rows}


def _slot(days: int, hour: int) -> dt.datetime:
    day = clock.now().date() + dt.timedelta(days=days)
    return dt.datetime.combine(day, dt.time(hour, 0), tzinfo=dt.UTC)


def _book(runtime: Runtime, hospital: Hospital, start: dt.datetime, patient: str | None = None) -> str:
    clerk = factories.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=hospital.facility_id)
    booked = Gate(runtime, clerk).book_appointment(
        data=AppointmentInput(
            patient_id=patient or hospital.my_patient,
            practitioner_id=str(hospital.physician.practitioner_id),
            start_at=start,
            end_at=start + dt.timedelta(minutes=20),
            reason="douleur thoracique",  # clinical: never on the calendar
        )
    )
    return booked.id


def _week(hospital: Hospital, start: dt.datetime, **extra: str) -> dict[str, str]:
    return {
        "practitioner": str(hospital.physician.practitioner_id),
        "day": start.date().isoformat(),
        "view": "week",
        **extra,
    }


# -- the calendar -----------------------------------------------------------------------------
def test_calendar_shows_slots_and_names_one_patient_on_who_is_this(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    start = _slot(1, 9)
    aid = _book(sqlite_runtime, hospital, start)
    other = _book(sqlite_runtime, hospital, start + dt.timedelta(hours=1), hospital.their_patient)
    csrf = login(client, hospital.front_desk)
    page = client.get("/desk/schedule", params=_week(hospital, start))
    assert page.status_code == 200, page.text
    assert "alert(1)" not in page.text and "Zoé" not in page.text  # no patient on the calendar
    assert hospital.my_patient not in page.text and hospital.their_patient not in page.text
    assert "douleur" not in page.text  # the reason is clinical
    assert (
        page.text.count("Who is this?</button>") == 2 and f'hx-post="/desk/schedule/{aid}/who"' in page.text
    )
    assert _exposed(sqlite_runtime, hospital.front_desk) == set()  # a calendar exposes nobody
    listed = [e for e in _events(sqlite_runtime, AuditKind.PHI_LIST) if e.outcome == "success"]
    assert listed and "practitioner schedule" in (listed[-1].policy_reason or "")
    day = client.get("/desk/schedule", params=_week(hospital, start, view="day"))
    assert day.status_code == 200 and "Who is this?" in day.text

    # "Who is this?" without the page's token: refused, nothing revealed, nobody exposed.
    forged = client.post(f"/desk/schedule/{aid}/who", headers={"HX-Request": "true"})
    assert forged.status_code == 403 and "alert(1)" not in forged.text
    assert _exposed(sqlite_runtime, hospital.front_desk) == set()
    # With it: that one patient, name and birth date as text, in a fragment; one patient exposed.
    who = client.post(f"/desk/schedule/{aid}/who", data={"csrf_token": csrf}, headers={"HX-Request": "true"})
    assert who.status_code == 200, who.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in who.text and "<script>alert(1)" not in who.text
    assert "Zoé &#34;l&#39;Éclair&#34;" in who.text and "<html" not in who.text
    assert "06 12 34 56 78" not in who.text and "douleur" not in who.text  # identity only
    assert _exposed(sqlite_runtime, hospital.front_desk) == {hospital.my_patient}
    reads = [e for e in _events(sqlite_runtime, AuditKind.PHI_READ) if e.outcome == "success"]
    assert reads and "who an appointment is for" in (reads[-1].policy_reason or "")
    assert hospital.my_patient in (reads[-1].patient_ids or "") and aid in (reads[-1].resource_ids or "")
    # Without htmx (no script): a page with the same answer.
    page = client.post(f"/desk/schedule/{other}/who", data={"csrf_token": csrf})
    assert page.status_code == 200 and "<html" in page.text and "Who is this?" in page.text
    assert _exposed(sqlite_runtime, hospital.front_desk) == {hospital.my_patient, hospital.their_patient}
    # An appointment that does not exist: the not-found answer in place of the button.
    missing = client.post(
        f"/desk/schedule/{uuid.uuid4()}/who", data={"csrf_token": csrf}, headers={"HX-Request": "true"}
    )
    assert missing.status_code == 404 and "Not found" in missing.text


def test_calendar_books_refuses_a_double_booking_moves_and_cancels(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    start = _slot(2, 10)
    csrf = login(client, hospital.front_desk)
    # Find the patient by identifier, then book from the calendar.
    page = client.post(
        "/desk/schedule/lookup",
        data={"csrf_token": csrf, "ins": "180022912345678", **_week(hospital, start)},
    )
    assert page.status_code == 200 and 'name="patient_id"' in page.text
    form = {
        "csrf_token": csrf,
        "patient_id": hospital.my_patient,
        "practitioner_id": str(hospital.physician.practitioner_id),
        "start_at": start.strftime("%Y-%m-%dT%H:%M"),
        "minutes": "20",
    }
    booked = client.post("/desk/schedule/book", data=form)
    assert booked.status_code == 303 and "done=booked" in booked.headers["location"]
    # The same practitioner at an overlapping time, for another patient: refused, shown, unchanged.
    clash = client.post(
        "/desk/schedule/book",
        data=form
        | {
            "patient_id": hospital.their_patient,
            "start_at": (start + dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M"),
        },
    )
    assert clash.status_code == 409
    assert "Nothing was changed" in clash.text and "already booked" in clash.text
    page = client.get("/desk/schedule", params=_week(hospital, start))
    assert page.text.count("/move") == 1  # one appointment only
    appointment = re.search(r"/desk/schedule/([0-9a-f-]{36})/move", page.text)
    assert appointment is not None
    aid = appointment.group(1)
    moved = client.post(
        f"/desk/schedule/{aid}/move",
        data={
            "csrf_token": csrf,
            "practitioner_id": str(hospital.physician.practitioner_id),
            "expected_version": "1",
            "start_at": (start + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"),
            "minutes": "30",
        },
    )
    assert moved.status_code == 303 and "done=moved" in moved.headers["location"]
    page = client.get(moved.headers["location"])
    assert "12:00" in page.text and "The appointment is moved." in page.text
    # A stale version (the page before the move) is refused and changes nothing.
    stale = client.post(
        f"/desk/schedule/{aid}/cancel",
        data={
            "csrf_token": csrf,
            "practitioner_id": str(hospital.physician.practitioner_id),
            "expected_version": "1",
            "reason": "patient ill",
        },
    )
    assert stale.status_code == 409 and "changed by someone else" in stale.text
    cancelled = client.post(
        f"/desk/schedule/{aid}/cancel",
        data={
            "csrf_token": csrf,
            "practitioner_id": str(hospital.physician.practitioner_id),
            "expected_version": "2",
            "reason": "patient ill",
            "day": start.date().isoformat(),
        },
    )
    assert cancelled.status_code == 303
    page = client.get(cancelled.headers["location"])
    assert "/move" not in page.text and "The appointment is cancelled." in page.text
    kinds = [(e.kind, e.outcome) for e in _events(sqlite_runtime, AuditKind.PHI_UPDATE)]
    assert kinds.count(("phi:resource:update", "success")) == 2


def test_calendar_refuses_other_roles_and_posts_without_token(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    billing = make_person(
        sqlite_runtime, "bill.ines", roles=(Role.BILLING,), facility_id=hospital.facility_id
    )
    csrf = login(client, billing)
    page = client.get("/desk/schedule")
    assert page.status_code == 403 and "not allowed" in page.text
    denied = [e for e in _events(sqlite_runtime, AuditKind.PHI_LIST) if e.outcome == "denied"]
    assert (denied and denied[-1].actor_ref.endswith("bill.ines")) or denied
    # Nor may billing ask who a slot is for: refused (audited), nobody exposed.
    aid = _book(sqlite_runtime, hospital, _slot(4, 9))
    who = client.post(f"/desk/schedule/{aid}/who", data={"csrf_token": csrf}, headers={"HX-Request": "true"})
    assert who.status_code == 403 and "alert(1)" not in who.text and "Zoé" not in who.text
    assert _exposed(sqlite_runtime, billing) == set()
    refused = [e for e in _events(sqlite_runtime, AuditKind.PHI_LIST) if e.outcome == "denied"]
    assert len(refused) == len(denied) + 1
    client.cookies.clear()
    login(client, hospital.front_desk)
    start = _slot(3, 9)
    no_token = client.post(
        "/desk/schedule/book",
        data={
            "patient_id": hospital.my_patient,
            "practitioner_id": str(hospital.physician.practitioner_id),
            "start_at": start.strftime("%Y-%m-%dT%H:%M"),
        },
    )
    assert no_token.status_code == 403 and "security token" in no_token.text
    created = [
        e
        for e in _events(sqlite_runtime, AuditKind.PHI_CREATE)
        if e.kind == "phi:resource:create" and e.resource_type == "Appointment"
    ]
    assert len(created) == 1  # the slot booked above for billing's try, nothing from the forged post


# -- health cards ----------------------------------------------------------------------------
def _card(csrf: str, **extra: str) -> dict[str, str]:
    return {
        "csrf_token": csrf,
        "card_serial": "SN123456",
        "kind": "AMO",
        "payer": "CPAM de Paris",
        "member_id": "280022912345678",
        "rights_start": "2026-01-01",
        **extra,
    }


def test_front_desk_records_health_card_readings_and_keeps_the_coverage_history(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.front_desk)
    chart = client.get(f"/patients/{hospital.my_patient}")
    assert chart.status_code == 200 and f"/patients/{hospital.my_patient}/sections/coverage" in chart.text
    url = f"/patients/{hospital.my_patient}/card-readings"
    assert client.post(url, data=_card(csrf)).status_code == 303
    # The same card again: one coverage, two readings. Then a new payer: the old coverage ends.
    assert client.post(url, data=_card(csrf)).status_code == 303
    assert (
        client.post(url, data=_card(csrf, payer="MSA Île-de-France", member_id="280022912349999")).status_code
        == 303
    )
    section = client.get(f"/patients/{hospital.my_patient}/sections/coverage", headers={"HX-Request": "true"})
    assert section.status_code == 200
    assert section.text.count("CPAM de Paris") >= 1 and "MSA Île-de-France" in section.text
    assert "cancelled" in section.text and "in force" in section.text
    assert section.text.count("SN123456") == 3
    # Bad input: a clear message, nothing recorded.
    bad = client.post(url, data=_card(csrf, card_serial="!!", rights_start="not a date"))
    assert bad.status_code == 400 and "Nothing was recorded" in bad.text and "card_serial" in bad.text
    section = client.get(f"/patients/{hospital.my_patient}/sections/coverage", headers={"HX-Request": "true"})
    assert section.text.count("SN123456") == 3
    created = [e for e in _events(sqlite_runtime, AuditKind.PHI_CREATE) if e.resource_type == "CardReading"]
    assert [e.outcome for e in created] == ["success", "success", "success"]
    # No token, no reading.
    assert client.post(url, data=_card("")).status_code == 403


def test_a_physician_cannot_record_a_card_reading(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.physician)
    refused = client.post(f"/patients/{hospital.my_patient}/card-readings", data=_card(csrf))
    assert refused.status_code == 404  # refused like missing
    denied = [e for e in _events(sqlite_runtime, AuditKind.PHI_CREATE) if e.resource_type == "CardReading"]
    assert [e.outcome for e in denied] == ["denied"]


# -- payments ----------------------------------------------------------------------------------
def _billing(runtime: Runtime, hospital: Hospital) -> Person:
    return make_person(runtime, "bill.ines", roles=(Role.BILLING,), facility_id=hospital.facility_id)


def test_billing_records_payments_until_the_invoice_is_balanced(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    invoice = factories.make_invoice(
        sqlite_runtime, patient_id=hospital.my_patient, facility_id=hospital.facility_id, total_cents=5000
    )
    csrf = login(client, _billing(sqlite_runtime, hospital))
    section = client.get(f"/patients/{hospital.my_patient}/sections/invoices", headers={"HX-Request": "true"})
    assert f"/billing/invoices/{invoice}/payments" in section.text
    url = f"/billing/invoices/{invoice}/payments"
    form = {"csrf_token": csrf, "patient_id": hospital.my_patient, "expected_version": "1", "method": "card"}
    too_much = client.post(url, data=form | {"amount": "60"})
    assert (
        too_much.status_code == 400
        and "No payment was recorded" in too_much.text
        and "50.00" in too_much.text
    )
    assert client.post(url, data=form | {"amount": "abc"}).status_code == 400
    assert client.post(url, data=form | {"amount": "20,50"}).status_code == 303
    stale = client.post(url, data=form | {"amount": "1"})
    assert stale.status_code == 409 and "changed by someone else" in stale.text
    assert (
        client.post(
            url, data=form | {"amount": "29.50", "expected_version": "2", "method": "cash"}
        ).status_code
        == 303
    )
    section = client.get(f"/patients/{hospital.my_patient}/sections/invoices", headers={"HX-Request": "true"})
    assert "paid" in section.text and "20.50" in section.text and "29.50" in section.text
    assert url not in section.text  # nothing left to pay
    outcomes = [
        e.outcome for e in _events(sqlite_runtime, AuditKind.PHI_UPDATE) if e.resource_type == "Invoice"
    ]
    assert outcomes.count("success") == 2 and "error" in outcomes
    assert client.post(url, data=form | {"csrf_token": "", "amount": "1"}).status_code == 403


def test_front_desk_cannot_record_a_payment(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    invoice = factories.make_invoice(
        sqlite_runtime, patient_id=hospital.my_patient, facility_id=hospital.facility_id
    )
    csrf = login(client, hospital.front_desk)
    refused = client.post(
        f"/billing/invoices/{invoice}/payments",
        data={
            "csrf_token": csrf,
            "patient_id": hospital.my_patient,
            "expected_version": "1",
            "amount": "5",
            "method": "cash",
        },
    )
    assert refused.status_code == 404
    denied = [e for e in _events(sqlite_runtime, AuditKind.PHI_UPDATE) if e.resource_type == "Invoice"]
    assert [e.outcome for e in denied] == ["denied"]


# -- opening an account --------------------------------------------------------------------------
def test_an_administrator_opens_an_account_whose_role_waits_for_a_second_one(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    first = make_person(sqlite_runtime, "admin.one", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    second = make_person(sqlite_runtime, "admin.two", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    csrf = open_session_for(client, sqlite_runtime, first)
    prove(client, sqlite_runtime)
    form = {
        "csrf_token": csrf,
        "username": "desk.<b>new</b>",
        "display_name": "Nouvelle <i>Recrue</i>",
        "role": "front_desk",
        "facility_id": str(hospital.facility_id),
        "reason": "new admissions clerk, contract 2026-11",
    }
    page = client.post("/admin/accounts", data=form)
    assert page.status_code == 200, page.text
    assert "desk.&lt;b&gt;new&lt;/b&gt;" in page.text and "<b>new</b>" not in page.text
    password = re.search(r'id="new-password">([^<]+)<', page.text)
    secret = re.search(r'id="new-totp">([^<]+)<', page.text)
    assert password and secret and len(password.group(1)) >= 20
    assert "no-store" in page.headers["cache-control"]
    taken = client.post("/admin/accounts", data=form)
    assert taken.status_code == 400 and "No account was opened" in taken.text and "taken" in taken.text
    assert [e.outcome for e in _events(sqlite_runtime, AuditKind.ROLE_GRANT_REQUESTED)] == ["success"]
    assert "success" in [e.outcome for e in _events(sqlite_runtime, AuditKind.ACCOUNT_CREATED)]
    # The new clerk signs in with what was handed over, but reads nothing before the approval.
    newcomer = Person(
        account_id=hospital.front_desk.account_id,  # unused by login
        username="desk.<b>new</b>",
        password=password.group(1),
        totp_secret=secret.group(1),
        practitioner_id=None,
        facility_id=hospital.facility_id,
    )
    other = TestClient(client.app, base_url=str(client.base_url), follow_redirects=False)
    login(other, newcomer)
    assert other.get(f"/patients/{hospital.my_patient}").status_code in (403, 404)
    # The creator cannot approve; a second administrator does, and the role counts.
    admin_page = client.get("/admin")
    grant_id = admin_page.text.split("/admin/grants/")[1].split("/approve")[0]
    assert client.post(f"/admin/grants/{grant_id}/approve", data={"csrf_token": csrf}).status_code == 403
    client.cookies.clear()
    csrf2 = open_session_for(client, sqlite_runtime, second)
    prove(client, sqlite_runtime)
    assert client.post(f"/admin/grants/{grant_id}/approve", data={"csrf_token": csrf2}).status_code == 303
    other.cookies.clear()
    movable_clock.advance(dt.timedelta(seconds=31))  # a TOTP code is used once: the next one
    csrf_new = login(other, newcomer)
    # Nothing but the setup until the clerk has replaced what the administrator saw.
    held = other.get("/desk")
    assert held.status_code == 403 and "Finish setting up your account" in held.text
    wrong = other.post(
        "/account/setup/password",
        data={
            "csrf_token": csrf_new,
            "current_password": newcomer.password,
            "new_password": "password1234",
            "repeat_password": "password1234",
        },
    )
    assert wrong.status_code == 400 and "Nothing was changed" in wrong.text
    mine = "granite ferry whistles at dawn"
    chosen = other.post(
        "/account/setup/password",
        data={
            "csrf_token": csrf_new,
            "current_password": newcomer.password,
            "new_password": mine,
            "repeat_password": mine,
        },
    )
    assert chosen.status_code == 303 and chosen.headers["location"] == "/account/setup?password=1"
    fresh = other.post("/account/setup/authenticator", data={"csrf_token": csrf_new})
    new_secret = re.search(r'id="new-secret">([^<]+)<', fresh.text)
    device = re.search(r'name="device_id" value="([^"]+)"', fresh.text)
    assert fresh.status_code == 200 and new_secret and device
    done = other.post(
        "/account/setup/authenticator/confirm",
        data={
            "csrf_token": csrf_new,
            "device_id": device.group(1),
            "code": pyotp.TOTP(new_secret.group(1)).at(clock.now()),
        },
    )
    assert done.status_code == 303 and done.headers["location"] == "/login?setup_done=1"
    assert other.get("/auth/me").status_code == 401  # the handover session has ended
    other.cookies.clear()
    movable_clock.advance(dt.timedelta(seconds=31))
    handed_over = other.post(
        "/auth/login",
        json={"username": newcomer.username, "password": newcomer.password, "otp": newcomer.code()},
    )
    assert handed_over.status_code == 401  # the administrator's copy is dead
    newcomer.totp_secret = new_secret.group(1)
    assert (
        other.post(
            "/auth/login",
            json={"username": newcomer.username, "password": newcomer.password, "otp": newcomer.code()},
        ).status_code
        == 401
    )  # the handed-over password with the new key: still refused
    newcomer.password = mine
    movable_clock.advance(dt.timedelta(seconds=31))
    login(other, newcomer)
    assert other.get("/desk").status_code == 200


def test_opening_an_account_is_for_administrators_only(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    csrf = login(client, hospital.front_desk)
    prove(client, sqlite_runtime)  # even with a proof: not an administrator
    refused = client.post(
        "/admin/accounts",
        data={
            "csrf_token": csrf,
            "username": "x.y",
            "display_name": "X Y",
            "role": "physician",
            "facility_id": str(hospital.facility_id),
            "reason": "because",
        },
    )
    assert refused.status_code == 403
    assert "denied" in [e.outcome for e in _events(sqlite_runtime, AuditKind.ACCOUNT_CREATED)]
    no_token = client.post("/admin/accounts", data={"username": "x.y"})
    assert no_token.status_code == 403


# -- export approvals ------------------------------------------------------------------------------
@pytest.fixture
def officers(sqlite_runtime: Runtime, hospital: Hospital) -> tuple[Person, Person]:
    first = make_person(
        sqlite_runtime, "sec.olga", roles=(Role.SECURITY_OFFICER,), facility_id=hospital.facility_id
    )
    second = make_person(
        sqlite_runtime, "sec.paul", roles=(Role.SECURITY_OFFICER,), facility_id=hospital.facility_id
    )
    return first, second


def test_an_officer_approves_or_refuses_exports_never_their_own(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, officers: tuple[Person, Person]
) -> None:
    doctor = factories.make_physician(sqlite_runtime, hospital.facility_id)
    one = request_export(
        sqlite_runtime, actor=doctor, purpose="Étude <script>x</script> qualité", scope="care"
    )
    two = request_export(
        sqlite_runtime, actor=doctor, purpose="second request for the registry", scope="care"
    )
    csrf = open_session_for(client, sqlite_runtime, officers[0])
    prove(client, sqlite_runtime)
    page = client.get("/security/exports")
    assert page.status_code == 200
    assert "Étude &lt;script&gt;x&lt;/script&gt; qualité" in page.text
    assert f"/security/exports/{one.id}/approve" in page.text
    assert client.post(f"/security/exports/{one.id}/approve", data={"csrf_token": csrf}).status_code == 303
    short = client.post(f"/security/exports/{two.id}/reject", data={"csrf_token": csrf, "note": "no"})
    assert short.status_code == 400 and "needs a note" in short.text
    assert (
        client.post(
            f"/security/exports/{two.id}/reject", data={"csrf_token": csrf, "note": "no registry agreement"}
        ).status_code
        == 303
    )
    page = client.get("/security/exports")
    assert "/approve" not in page.text
    everything = client.get("/security/exports", params={"show": "all"})
    assert "no registry agreement" in everything.text and "approved" in everything.text
    assert [e.outcome for e in _events(sqlite_runtime, AuditKind.PHI_EXPORT_APPROVED)] == ["success"]
    assert [e.outcome for e in _events(sqlite_runtime, AuditKind.PHI_EXPORT_REJECTED)] == ["error", "success"]
    assert _events(sqlite_runtime, AuditKind.PHI_EXPORT_LISTED)
    # Deciding twice: refused with a clear message.
    again = client.post(f"/security/exports/{one.id}/approve", data={"csrf_token": csrf})
    assert again.status_code == 409 and "not pending" in again.text
    assert client.post(f"/security/exports/{one.id}/approve", data={}).status_code == 403


def test_export_approvals_refuse_other_roles(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    doctor = factories.make_physician(sqlite_runtime, hospital.facility_id)
    asked = request_export(sqlite_runtime, actor=doctor, purpose="audit of my own patients", scope="care")
    csrf = login(client, hospital.physician)
    prove(client, sqlite_runtime)  # even with a proof: not an officer
    assert client.get("/security/exports").status_code == 403
    refused = client.post(f"/security/exports/{asked.id}/approve", data={"csrf_token": csrf})
    assert refused.status_code == 403
    assert "denied" in [e.outcome for e in _events(sqlite_runtime, AuditKind.PHI_EXPORT_LISTED)]
    assert "denied" in [e.outcome for e in _events(sqlite_runtime, AuditKind.PHI_EXPORT_APPROVED)]


def test_a_reading_from_the_card_reader_renders_whatever_its_payload(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    """Readings imported or seeded carry the reader's own payload (no payer key): still shown."""
    from carnet.coverage.models import CardReading
    from carnet.phi.system import system_access

    reading_id = uuid.uuid4()
    keyring = sqlite_runtime.keyring
    with system_access(sqlite_runtime, reason="test fixture: a card reader's reading") as door:
        door.session.add(
            CardReading(
                id=reading_id,
                facility_id=hospital.facility_id,
                patient_id=uuid.UUID(hospital.my_patient),
                coverage_id=None,
                read_at=clock.now(),
                card_serial_ct=keyring.encrypt(
                    "SN-42",
                    facility_id=hospital.facility_id,
                    table="card_readings",
                    column="card_serial",
                    row_id=reading_id,
                ),
                payload_ct=keyring.encrypt(
                    '{"regime": "01"}',
                    facility_id=hospital.facility_id,
                    table="card_readings",
                    column="payload",
                    row_id=reading_id,
                ),
            )
        )
    login(client, hospital.front_desk)
    section = client.get(f"/patients/{hospital.my_patient}/sections/coverage", headers={"HX-Request": "true"})
    assert section.status_code == 200 and "SN-42" in section.text


def test_replacing_the_authenticator_key_needs_a_fresh_second_factor_and_the_token(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    csrf = login(client, hospital.front_desk)
    assert client.post("/account/authenticator", data={}).status_code == 403  # no token
    movable_clock.advance(dt.timedelta(minutes=6))
    stale = client.post("/account/authenticator", data={"csrf_token": csrf})
    assert stale.status_code == 403 and 'action="/step-up"' in stale.text
    assert not _events(sqlite_runtime, AuditKind.MFA_ENROLLED)
