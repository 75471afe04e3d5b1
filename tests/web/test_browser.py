"""Journeys in Debian's Chromium (Playwright): a clinician's day with break-the-glass, an officer
enrolling a passkey and signing in with it, the front desk and the patient portal.

With CARNET_SCREENSHOTS=1 the journeys also write docs/screenshots/*.png (the README tour).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.app import create_app
from carnet.kernel import clock, localtime
from carnet.phi.gate import Gate
from carnet.phi.schemas import AllergyInput, AppointmentInput
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, Person, make_person

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(sqlite_runtime: Runtime, hospital: Hospital) -> Iterator[str]:
    port = _free_port()
    origin = f"http://localhost:{port}"
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"origin": origin})
    server = uvicorn.Server(
        uvicorn.Config(create_app(sqlite_runtime), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield origin
    server.should_exit = True
    thread.join(timeout=10)


def shot(page: Any, name: str) -> None:
    if os.environ.get("CARNET_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, origin: str, person: Person, *, otp: bool = True) -> None:
    page.goto(origin + "/login")
    page.get_by_label("Username").fill(person.username)
    page.get_by_label("Password").fill(person.password)
    if otp:
        page.get_by_label("Code from your authenticator app").fill(person.code())


def next_totp_window(movable_clock: clock.MovableClock) -> None:
    movable_clock.advance(dt.timedelta(seconds=31))  # a TOTP code is accepted once


def staff_actor(person: Person, role: Role) -> Actor:
    return Actor(
        kind=ActorKind.STAFF,
        username=person.username,
        roles=frozenset({role}),
        account_id=person.account_id,
        facility_id=person.facility_id,
        practitioner_id=person.practitioner_id,
        second_factor_at=clock.now(),
    )


def test_clinician_day_chart_and_break_the_glass(
    served: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    origin = served
    doctor = staff_actor(hospital.physician, Role.PHYSICIAN)
    gate = Gate(sqlite_runtime, doctor)
    gate.record_allergy(
        data=AllergyInput(
            patient_id=hospital.my_patient,
            substance_code="7980",
            substance_display="Penicillin G",
            criticality="high",
        )
    )
    now = clock.now()
    # Today's list is the Paris day (carnet.kernel.localtime): book within it, in half an hour
    # unless that ends past midnight in Paris, else earlier today (CI ran at 23:45 UTC: 00:45 in
    # Paris, and "50 minutes ago" was the day before).
    day_start, day_end = localtime.day_bounds(localtime.local_day(now))
    start = now + dt.timedelta(minutes=30)
    if start + dt.timedelta(minutes=20) > day_end:
        start = max(day_start, now - dt.timedelta(minutes=50))
    gate.book_appointment(
        data=AppointmentInput(
            patient_id=hospital.my_patient,
            practitioner_id=str(hospital.physician.practitioner_id),
            start_at=start,
            end_at=start + dt.timedelta(minutes=20),
            reason="Follow-up <b>chest pain</b>",
        )
    )
    page = browser.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:  # an injected script would open one
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)

    sign_in(page, origin, hospital.physician)
    shot(page, "01-login")
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/day")
    page.get_by_role("heading", name=re.compile("My day")).wait_for()
    # Markup in a patient's name is text, never code.
    page.get_by_role("link", name=re.compile("<script>alert")).wait_for()
    assert page.get_by_text("Follow-up <b>chest pain</b>").count() == 1
    shot(page, "02-my-day")

    # Search explains its rule; a vague search is refused with the rule.
    page.get_by_role("link", name="Find a patient").click()
    page.get_by_text("Search never browses.").wait_for()
    page.get_by_label("Birth date").fill("1980-02-29")
    page.get_by_role("button", name="Search").click()
    page.get_by_text("a patient search needs an identifier").wait_for()
    page.get_by_label("Birth date").fill("")
    page.get_by_label("Identifier (INS)").fill("180022912345678")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=re.compile("<script>alert")).wait_for()
    shot(page, "03-search")
    page.get_by_role("link", name=re.compile("<script>alert")).click()

    # The chart: a note, its amendment and version history; a prescription stopped by an allergy.
    page.get_by_role("heading", name="Identity").wait_for()
    page.locator("section#allergies").get_by_text("Penicillin G").wait_for()
    # The banner names the allergy too, whatever section is on screen.
    page.get_by_role("region", name="Patient").get_by_text("Penicillin G").wait_for()
    page.get_by_text("Write a note").click()
    page.get_by_label("Title").fill("Admission")
    page.get_by_label("Text", exact=True).fill("Chest pain since this morning.")
    page.get_by_role("button", name="Save the note").click()
    page.get_by_role("paragraph").filter(has_text="Chest pain since this morning.").wait_for()
    page.get_by_text("Amend", exact=True).click()
    page.get_by_label("New text").fill("Chest pain since this morning; ECG normal.")
    page.get_by_label("Reason for the amendment").fill("ECG result")
    page.get_by_role("button", name="Save the amendment").click()
    page.get_by_text("Version history (2)").click()
    page.get_by_text("amended because: ECG result").wait_for()
    page.locator("summary", has_text="Prescribe").click()
    # Search as you type: the catalogue is the field's list; the allergy is recorded as text
    # ("Penicillin G", not an ATC code) and still stops amoxicillin, naming the class.
    page.get_by_label("Medication", exact=True).fill("amoxicillin (Clamoxyl) — J01CA04")
    assert page.locator("#drug-catalogue option[value='amoxicillin (Clamoxyl) — J01CA04']").count() == 1
    page.get_by_label("Dosage").fill("1 capsule three times a day")
    page.get_by_role("button", name="Prescribe").click()
    page.get_by_text("Allergy warning").wait_for()
    page.get_by_text("belongs to the class penicillins (J01C)").wait_for()
    shot(page, "04-chart-allergy-warning")
    page.get_by_label("Reason to prescribe despite the warnings").fill("Tolerated in 2023, allergist agrees")
    page.get_by_role("button", name="Prescribe").click()
    page.get_by_text("prescribed despite a warning").wait_for()

    # A POST without the CSRF token is refused, whatever the cookie says.
    status = page.evaluate(
        """async (path) => (await fetch(path, {method: 'POST', body: new URLSearchParams(
            {kind: '11506-3', title: 'forged', text: 'forged'})})).status""",
        f"/patients/{hospital.my_patient}/notes",
    )
    assert status == 403

    # Out of care: looks missing; break the glass with a reason and a fresh code.
    page.goto(origin + f"/patients/{hospital.their_patient}")
    page.get_by_role("heading", name="Not found, or not open to you").wait_for()
    page.get_by_role("link", name="Break the glass for this patient").click()
    page.get_by_label("Reason").select_option("emergency")
    page.get_by_label("Explain (10 to 1000 characters)").fill("Unconscious in the ER, usual doctor away")
    next_totp_window(movable_clock)
    page.get_by_label("Code from your authenticator app (confirms it is you)").fill(hospital.physician.code())
    shot(page, "05-break-the-glass")
    page.get_by_role("button", name="Open this chart for one hour").click()
    page.get_by_role("heading", name=re.compile("Durand")).wait_for()
    page.get_by_role("status").filter(has_text="Emergency access (break-the-glass) is active").wait_for()
    shot(page, "06-chart-break-the-glass")

    # The account page, then sign out: the old page now explains the session ended.
    page.get_by_role("link", name="My account").click()
    page.get_by_role("heading", name="Open sessions").wait_for()
    shot(page, "07-account")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/login"))
    page.goto(origin + "/day")
    page.wait_for_url(re.compile(r"/login\?next=/day"))
    assert not dialogs


def test_officer_enrols_a_passkey_signs_in_with_it_and_reviews(
    served: str, browser: Any, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    origin = served
    officer = make_person(
        sqlite_runtime, "sec.olga", roles=(Role.SECURITY_OFFICER,), facility_id=hospital.facility_id
    )
    intruder = factories.make_physician(sqlite_runtime, hospital.facility_id)
    Gate(sqlite_runtime, intruder).break_glass(
        patient_id=hospital.my_patient,
        reason="consultation",
        justification="Asked by a colleague in the hall",
    )
    page = browser.new_page()
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
    # First sign-in with a code: the session may only register a passkey.
    sign_in(page, origin, officer)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(re.compile(r"/account\?enrol=1"))
    page.get_by_text("Your role needs a passkey.").wait_for()
    page.get_by_role("button", name="Register a passkey").click()
    page.wait_for_url(re.compile(r"/login\?enrolled=1"))
    page.get_by_text("Your passkey is registered.").wait_for()

    # Then password + passkey (the virtual authenticator answers).
    sign_in(page, origin, officer, otp=False)
    page.get_by_role("button", name="Sign in with a passkey").click()
    page.wait_for_url(origin + "/security")
    page.get_by_text("Asked by a colleague in the hall").wait_for()
    shot(page, "08-security-console")
    page.get_by_label("Review note").fill("Checked with the ward: consult was real")
    page.get_by_role("button", name="Record the review").click()
    page.get_by_text("Nothing to review.").wait_for()
    page.get_by_role("link", name="Check the audit chain now").click()
    page.get_by_role("heading", name="Audit chain").wait_for()
    shot(page, "09-audit-chain")
    # A clinician page is not an officer's: refused, explained, audited.
    page.goto(origin + "/day")
    page.get_by_role("heading", name="This action is not allowed").wait_for()
    shot(page, "10-refused")

    # Administration: a second administrator approves the grant the first one asked for.
    first = make_person(sqlite_runtime, "admin.one", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    second = make_person(sqlite_runtime, "admin.two", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    make_person(sqlite_runtime, "nurse.new", roles=(), facility_id=hospital.facility_id)
    admin_page = browser.new_page()
    browser.clear_cookies()
    browser.add_cookies(_session_cookies(sqlite_runtime, first, origin, proven=True))
    admin_page.goto(origin + "/admin")
    ask = admin_page.locator('form[action="/admin/grants"]')
    ask.locator("select[name=account_id]").select_option(label="nurse.new")
    ask.locator("select[name=role]").select_option("nurse")
    ask.locator("select[name=facility_id]").select_option(str(hospital.facility_id))
    ask.locator("input[name=reason]").fill("Hired on ward 3")
    admin_page.get_by_role("button", name="Ask", exact=True).click()
    admin_page.get_by_role("cell", name="Hired on ward 3").wait_for()
    browser.clear_cookies()
    browser.add_cookies(_session_cookies(sqlite_runtime, second, origin, proven=True))
    admin_page.goto(origin + "/admin")
    shot(admin_page, "14-administration")
    admin_page.get_by_role("button", name="Approve").click()
    admin_page.get_by_role("cell", name="None.").wait_for()


def _session_cookies(
    runtime: Runtime, person: Person, origin: str, *, proven: bool = False
) -> list[dict[str, Any]]:
    """A privileged session as a passkey login leaves it (the ceremony is tested above); with
    `proven`, also a step-up proof as a passkey step-up leaves it (test_stepup_browser.py)."""
    from carnet.identity import sessions
    from tests.proofs import prove_session

    with runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=person.account_id,
            privileged=True,
            second_factor_method="webauthn",
            address="127.0.0.1",
            user_agent="playwright",
        )
    if proven:
        prove_session(runtime, issued.session_id)
    return [
        {"name": "carnet_session", "value": issued.token, "url": origin},
        {"name": "carnet_csrf", "value": issued.csrf_token, "url": origin},
    ]


def test_front_desk_registers_and_books_then_the_patient_sees_it(
    served: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    origin = served
    page = browser.new_page()
    sign_in(page, origin, hospital.front_desk)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/desk")
    page.get_by_label("Family name").fill("Lefèvre")
    page.get_by_label("Given name").fill("Anaïs")
    page.get_by_label("Birth date").fill("1991-07-14")
    page.get_by_label("Identifier (INS)").fill("180022912345678")  # Zoé's INS: a duplicate
    shot(page, "11-front-desk")
    page.get_by_role("button", name="Register").click()
    page.get_by_role("alert").filter(has_text="already registered").wait_for()
    page.get_by_label("Identifier (INS)").fill("291077512345612")
    page.get_by_role("button", name="Register").click()
    page.get_by_role("heading", name=re.compile("Lefèvre")).wait_for()

    # Book an appointment for Zoé with her physician; she sees it in her portal.
    page.goto(origin + f"/patients/{hospital.my_patient}")
    page.get_by_text("Book an appointment").click()
    start = (clock.now() + dt.timedelta(days=3)).replace(hour=10, minute=0, second=0, microsecond=0)
    page.get_by_label("Start", exact=True).fill(start.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_label("Reason", exact=True).fill("Annual check-up")
    page.get_by_role("button", name="Book").click()
    # The desk sees when and with whom, not why (minimum necessary): the reason is clinical.
    page.get_by_role("cell", name="booked").wait_for()
    assert "Annual check-up" not in page.inner_text("main")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/login"))

    next_totp_window(movable_clock)
    sign_in(page, origin, hospital.patient_person)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/portal")
    page.get_by_role("cell", name="Annual check-up").wait_for()
    page.get_by_role("cell", name="opened your record").first.wait_for()
    shot(page, "12-patient-portal")
    # In French, from the switch.
    page.get_by_role("link", name="FR").click()
    page.get_by_role("heading", name="Mon dossier", exact=True).wait_for()
    shot(page, "13-portail-fr")
