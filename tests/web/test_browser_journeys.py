"""More journeys in Debian's Chromium: the front desk's calendar (book, a refused double booking,
move, cancel with a reason) and a health-card reading; billing payments; an administrator
opening an account that a second administrator completes; export approvals.

With CARNET_SCREENSHOTS=1 they also write docs/screenshots/15..19-*.png (the README tour).
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
import uvicorn

from carnet.access.exports import request_export
from carnet.access.roles import Role
from carnet.app import create_app
from carnet.kernel import clock, localtime
from carnet.phi.gate import Gate
from carnet.phi.schemas import AppointmentInput
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, Person, make_person
from tests.web.test_browser import _session_cookies, next_totp_window, shot, sign_in

pytestmark = pytest.mark.browser

PORTS = range(8770, 8780)  # this suite's servers stay in the range given to the web work


def _port(ports: range) -> int:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def serve(runtime: Runtime, ports: range) -> Iterator[str]:
    """The app on a free port of `ports`, in a thread, for one test: yields its origin."""
    port = _port(ports)
    here = f"http://localhost:{port}"
    runtime.settings = runtime.settings.model_copy(update={"origin": here})
    config = uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield here
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def origin(sqlite_runtime: Runtime, hospital: Hospital) -> Iterator[str]:
    yield from serve(sqlite_runtime, PORTS)


def _forged_post(page: Any, path: str, fields: dict[str, str]) -> int:
    """A POST the way another site's page would send it: the cookie rides along, no token."""
    return int(
        page.evaluate(
            """async ([path, body]) =>
                (await fetch(path, {method: 'POST', body: new URLSearchParams(body)})).status""",
            [path, fields],
        )
    )


def _no_dialogs(page: Any) -> list[str]:
    seen: list[str] = []

    def on_dialog(dialog: Any) -> None:  # an injected script would open one
        seen.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


def test_front_desk_calendar_and_health_card(
    origin: str, browser: Any, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    page = browser.new_page()
    dialogs = _no_dialogs(page)
    sign_in(page, origin, hospital.front_desk)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/desk")
    page.get_by_role("link", name="Calendar", exact=True).click()
    page.get_by_role("heading", name=re.compile("^Calendar")).wait_for()
    day = clock.now().date() + dt.timedelta(days=2)
    practitioner = str(hospital.physician.practitioner_id)
    # A colleague booked another patient that afternoon: the calendar shows only the slot.
    colleague = factories.make_account(
        sqlite_runtime, roles=[Role.FRONT_DESK], facility_id=hospital.facility_id
    )
    afternoon = localtime.at(day, dt.time(15))  # the pages show the Paris wall clock
    Gate(sqlite_runtime, colleague).book_appointment(
        data=AppointmentInput(
            patient_id=hospital.their_patient,
            practitioner_id=practitioner,
            start_at=afternoon,
            end_at=afternoon + dt.timedelta(minutes=20),
        )
    )
    page.goto(f"{origin}/desk/schedule?practitioner={practitioner}&day={day.isoformat()}&view=week")
    page.get_by_role("cell", name="15:00–15:20").wait_for()
    assert page.locator("text=Durand").count() == 0

    # Find Zoé by her INS, then book her at 10:00.
    page.get_by_label("Patient identifier (INS)").fill("180022912345678")
    page.get_by_role("button", name="Book for this patient").click()
    page.locator("strong.patient-name", has_text="<script>alert(1)</script>").wait_for()
    page.get_by_label("Start", exact=True).fill(f"{day.isoformat()}T10:00")
    page.get_by_role("button", name="Book", exact=True).click()
    page.get_by_role("status").filter(has_text="The appointment is booked.").wait_for()
    # The calendar shows the slot, not who it is for; "Who is this?" names that one patient.
    slot = page.get_by_role("row").filter(has=page.get_by_role("cell", name="10:00–10:20"))
    slot.get_by_text("Booked", exact=True).wait_for()
    assert page.locator("table").filter(has_text="alert(1)").count() == 0
    slot.get_by_role("button", name=re.compile("^Who is this")).click()
    slot.locator("strong.patient-name", has_text="<script>alert(1)</script>").wait_for()  # text
    assert slot.get_by_role("button", name=re.compile("^Who is this")).count() == 0

    # Paul at 10:10 with the same practitioner: refused on the form, nothing booked.
    page.goto(f"{origin}/desk/schedule?practitioner={practitioner}&day={day.isoformat()}&view=week")
    page.get_by_label("Patient identifier (INS)").fill("170011234567890")
    page.get_by_role("button", name="Book for this patient").click()
    page.get_by_label("Start", exact=True).fill(f"{day.isoformat()}T10:10")
    page.get_by_role("button", name="Book", exact=True).click()
    page.get_by_role("alert").filter(has_text="already booked at that time").wait_for()
    assert page.locator("text=Durand").count() == 1  # only in the booking line, not the calendar
    shot(page, "15-calendar-double-booking")

    # Move Zoé's slot to 11:30, then cancel with a reason.
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="10:00–10:20"))
    row.locator("summary", has_text="Move or cancel").click()
    move = row.locator("form[action$='/move']")
    move.get_by_label("New start").fill(f"{day.isoformat()}T11:30")
    move.get_by_role("button", name="Move").click()
    page.get_by_role("status").filter(has_text="The appointment is moved.").wait_for()
    page.get_by_role("cell", name="11:30–11:50").wait_for()
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="11:30–11:50"))
    row.get_by_role("button", name=re.compile("^Who is this")).click()
    row.locator("strong.patient-name").wait_for()
    shot(page, "16-calendar-week")
    row.locator("summary", has_text="Move or cancel").click()
    row.get_by_label("Reason for cancelling").fill("Patient called: ill")
    row.get_by_role("button", name="Cancel the appointment").click()
    page.get_by_role("status").filter(has_text="The appointment is cancelled.").wait_for()
    assert page.get_by_role("cell", name="11:30–11:50").count() == 0

    # Without the page's token, no booking, whatever the cookie says.
    forged = _forged_post(
        page,
        "/desk/schedule/book",
        {"patient_id": hospital.my_patient, "practitioner_id": practitioner, "start_at": f"{day}T15:00"},
    )
    assert forged == 403

    # A health-card reading from Zoé's page: the coverage history shows it.
    page.goto(f"{origin}/patients/{hospital.my_patient}")
    page.get_by_role("heading", name="Coverage history").wait_for()
    page.locator("summary", has_text="Record a health-card reading").click()
    page.get_by_label("Card serial number").fill("VIT0042")
    page.get_by_label("Payer").fill("CPAM de Paris")
    page.get_by_label("Member number").fill("280022912345678")
    page.get_by_label("Rights from").fill("2026-01-01")
    page.get_by_role("button", name="Record the reading").click()
    page.get_by_role("cell", name="CPAM de Paris").wait_for()
    page.locator("ul.card-readings li", has_text="VIT0042").wait_for()
    shot(page, "17-health-card-reading")
    # The front desk is not billing: its payments page refuses, explained.
    page.goto(origin + "/billing")
    page.get_by_role("heading", name="This action is not allowed").wait_for()
    assert not dialogs


def test_billing_records_a_payment(
    origin: str, browser: Any, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    clerk = make_person(sqlite_runtime, "bill.ines", roles=(Role.BILLING,), facility_id=hospital.facility_id)
    factories.make_invoice(
        sqlite_runtime, patient_id=hospital.my_patient, facility_id=hospital.facility_id, total_cents=8000
    )
    page = browser.new_page()
    dialogs = _no_dialogs(page)
    sign_in(page, origin, clerk)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/billing")
    page.goto(f"{origin}/patients/{hospital.my_patient}")
    page.get_by_role("heading", name="Invoices").wait_for()
    page.get_by_label("Amount").fill("100")
    page.get_by_role("button", name="Record the payment").click()
    page.get_by_role("alert").filter(has_text="more than the 80.00 EUR still due").wait_for()
    page.get_by_label("Amount").fill("30,00")
    page.get_by_label("Method").select_option("cash")
    page.get_by_role("button", name="Record the payment").click()
    page.locator("ul.payments li", has_text="30.00 (cash)").wait_for()
    page.get_by_role("cell", name="€50.00", exact=True).wait_for()
    shot(page, "18-billing-payment")
    page.get_by_role("button", name="Record the payment").click()  # the 50.00 still due
    page.get_by_role("cell", name="paid").wait_for()
    assert page.get_by_role("button", name="Record the payment").count() == 0
    # Billing keeps no calendar: refused, explained.
    page.goto(origin + "/desk/schedule")
    page.get_by_role("heading", name="This action is not allowed").wait_for()
    assert not dialogs


def test_administrator_opens_an_account_a_second_one_completes_it(
    origin: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    first = make_person(sqlite_runtime, "admin.one", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    second = make_person(sqlite_runtime, "admin.two", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    page = browser.new_page()
    browser.add_cookies(_session_cookies(sqlite_runtime, first, origin, proven=True))
    page.goto(origin + "/admin")
    form = page.locator('form[action="/admin/accounts"]')
    form.get_by_label("Username", exact=True).fill("desk.lea")
    form.get_by_label("Name", exact=True).fill("Léa <em>Martin</em>")
    form.get_by_label("Role").select_option("front_desk")
    form.get_by_label("Facility").select_option(str(hospital.facility_id))
    form.get_by_label("Reason").fill("Admissions clerk from December")
    form.get_by_role("button", name="Open the account").click()
    page.get_by_role("heading", name="Account opened").wait_for()
    password = page.locator("#new-password").inner_text()
    secret = page.locator("#new-totp").inner_text()
    shot(page, "19-account-opened")
    page.get_by_role("link", name="Back to administration").click()
    page.get_by_role("cell", name="Admissions clerk from December").wait_for()
    page.get_by_role("cell", name="Léa <em>Martin</em>").wait_for()  # markup is text
    # The one who asked cannot approve.
    page.get_by_role("button", name="Approve").click()
    page.get_by_text("a role grant needs a second administrator").wait_for()
    browser.clear_cookies()
    browser.add_cookies(_session_cookies(sqlite_runtime, second, origin, proven=True))
    page.goto(origin + "/admin")
    page.get_by_role("button", name="Approve").click()
    page.get_by_role("cell", name="None.").wait_for()
    # The new clerk signs in with what was handed over and reaches the front desk.
    browser.clear_cookies()
    next_totp_window(movable_clock)
    newcomer = Person(second.account_id, "desk.lea", password, secret, None, hospital.facility_id)
    sign_in(page, origin, newcomer)
    page.get_by_role("button", name="Sign in", exact=True).click()
    # Nothing but the setup until the clerk has replaced what the administrator saw.
    page.wait_for_url(origin + "/account/setup")
    page.get_by_role("heading", name="Finish setting up your account").wait_for()
    shot(page, "21-account-setup")
    page.goto(origin + "/desk")
    page.get_by_role("heading", name="Finish setting up your account").wait_for()
    assert page.get_by_role("link", name="Set up my account").count() == 1
    page.get_by_role("link", name="Set up my account").click()
    forged = {"current_password": password, "new_password": "granite ferry whistles", "repeat_password": "x"}
    assert _forged_post(page, "/account/setup/password", forged) == 403  # no page token: refused
    # A breached password is refused, with the reason; then the clerk's own.
    page.get_by_label("Password you were handed").fill(password)
    page.get_by_label("New password", exact=True).fill("password1234")
    page.get_by_label("New password again").fill("password1234")
    page.get_by_role("button", name="Use this password").click()
    page.get_by_role("alert").filter(has_text="breached").wait_for()
    own = "granite ferry whistles at dawn"
    page.get_by_label("Password you were handed").fill(password)
    page.get_by_label("New password", exact=True).fill(own)
    page.get_by_label("New password again").fill(own)
    page.get_by_role("button", name="Use this password").click()
    page.get_by_role("status").filter(has_text="the one you were handed no longer works").wait_for()
    page.get_by_role("button", name="Show me a new authenticator key").click()
    fresh = page.locator("#new-secret").inner_text()
    page.get_by_label("Code from the new key").fill(pyotp.TOTP(fresh).at(clock.now()))
    page.get_by_role("button", name="Use this key from now on").click()
    page.wait_for_url(origin + "/login?setup_done=1")
    page.get_by_text("Your account is ready").wait_for()
    # The administrator's copy opens nothing; the clerk's own credentials do.
    next_totp_window(movable_clock)
    sign_in(page, origin, newcomer)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_text("the username, password or code is not right").wait_for()
    next_totp_window(movable_clock)
    sign_in(page, origin, Person(newcomer.account_id, "desk.lea", own, fresh, None, hospital.facility_id))
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/desk")
    # A front-desk account cannot open accounts: refused.
    assert page.get_by_role("link", name="Administration").count() == 0
    page.goto(origin + "/admin")
    page.get_by_role("heading", name="This action is not allowed").wait_for()


def test_officer_approves_and_refuses_exports(
    origin: str, browser: Any, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    officer = make_person(
        sqlite_runtime, "sec.olga", roles=(Role.SECURITY_OFFICER,), facility_id=hospital.facility_id
    )
    doctor = factories.make_physician(sqlite_runtime, hospital.facility_id)
    request_export(sqlite_runtime, actor=doctor, purpose="Quality audit <b>diabetes</b> 2026", scope="care")
    request_export(sqlite_runtime, actor=doctor, purpose="Send my whole list to a start-up", scope="facility")
    page = browser.new_page()
    dialogs = _no_dialogs(page)
    browser.add_cookies(_session_cookies(sqlite_runtime, officer, origin, proven=True))
    page.goto(origin + "/security")
    page.get_by_role("link", name="Export approvals").click()
    page.get_by_role("cell", name="Quality audit <b>diabetes</b> 2026").wait_for()
    shot(page, "20-export-approvals")
    audit = page.get_by_role("row").filter(has_text="Quality audit")
    audit.get_by_role("button", name="Approve").click()
    page.get_by_role("status").filter(has_text="The export is approved.").wait_for()
    startup = page.get_by_role("row").filter(has_text="start-up")
    startup.get_by_label("Why not").fill("No legal basis for sharing")
    startup.get_by_role("button", name="Refuse").click()
    page.get_by_role("status").filter(has_text="The export is refused.").wait_for()
    page.get_by_role("cell", name="None.").wait_for()
    page.get_by_label("Show").select_option("all")
    page.get_by_role("button", name="Filter").click()
    page.get_by_text("No legal basis for sharing").wait_for()
    assert _forged_post(page, "/security/exports/00000000-0000-4000-8000-000000000000/approve", {}) == 403
    # A physician is no officer: refused, explained.
    browser.clear_cookies()
    sign_in(page, origin, hospital.physician)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/day")
    page.goto(origin + "/security/exports")
    page.get_by_role("heading", name="This action is not allowed").wait_for()
    assert not dialogs


def test_an_officer_opened_by_an_administrator_sets_up_with_a_passkey(
    origin: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    from carnet.access.accounts import create_staff_account
    from carnet.access.grants import approve_role_grant
    from tests.web.test_browser import staff_actor

    one = make_person(sqlite_runtime, "admin.one", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    two = make_person(sqlite_runtime, "admin.two", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    opened = create_staff_account(
        sqlite_runtime,
        actor=staff_actor(one, Role.SYSTEM_ADMINISTRATOR),
        username="sec.new",
        display_name="New Officer",
        role=Role.SECURITY_OFFICER,
        facility_id=None,
        reason="security office from December",
    )
    approve_role_grant(
        sqlite_runtime, actor=staff_actor(two, Role.SYSTEM_ADMINISTRATOR), grant_id=opened.grant.id
    )
    handed = Person(one.account_id, "sec.new", opened.initial_password, opened.totp_secret, None, None)
    page = browser.new_page()
    dialogs = _no_dialogs(page)
    page.goto(origin + "/login")
    cdp = browser.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )
    sign_in(page, origin, handed)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/account/setup")
    # A privileged role: a passkey, never a new authenticator key.
    assert page.get_by_role("button", name="Show me a new authenticator key").count() == 0
    page.get_by_text("Your role signs in with a passkey").wait_for()
    page.goto(origin + "/security")
    page.get_by_role("heading", name="Finish setting up your account").wait_for()
    page.goto(origin + "/account/setup")
    page.get_by_role("button", name="Register a passkey").click()
    page.get_by_role("heading", name=re.compile("2. Your own second factor — done")).wait_for()
    own = "cobalt heron sketches the harbour"
    page.get_by_label("Password you were handed").fill(handed.password)
    page.get_by_label("New password", exact=True).fill(own)
    page.get_by_label("New password again").fill(own)
    page.get_by_role("button", name="Use this password").click()
    page.wait_for_url(origin + "/login?setup_done=1")
    # The handed-over password with the passkey: refused. The officer's own: the console.
    sign_in(page, origin, handed, otp=False)
    page.get_by_role("button", name="Sign in with a passkey").click()
    page.get_by_text("the username, password or code is not right").wait_for()
    page.get_by_label("Password").fill(own)
    page.get_by_role("button", name="Sign in with a passkey").click()
    page.wait_for_url(origin + "/security")
    assert not dialogs
