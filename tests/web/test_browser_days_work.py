"""The day's work in Debian's Chromium, in French: the front desk opens today's arrivals and
checks a patient in; a nurse opens the ward board of her ward. The strict CSP holds (no
violation reported) and names stay text.

With CARNET_SCREENSHOTS=1 it also writes docs/screenshots/31-arrivals.png (the README tour) and
32-ward-board.png.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from carnet.access.roles import Role
from carnet.kernel import clock, localtime
from carnet.phi.gate import Gate
from carnet.phi.schemas import AppointmentInput
from carnet.runtime import Runtime
from carnet.scheduling.models import Appointment
from tests import factories
from tests.web.conftest import Hospital, make_person
from tests.web.test_browser import SHOTS, next_totp_window
from tests.web.test_browser_journeys import _no_dialogs, serve

pytestmark = pytest.mark.browser

PORTS = range(8900, 8910)  # not the ranges of the other browser suites (8770-, 8790-, 8850-, 8880-)
MORNING = dt.datetime(2026, 12, 8, 8, 30, tzinfo=dt.UTC)  # Tuesday 09:30 in Paris


@pytest.fixture
def origin(sqlite_runtime: Runtime, hospital: Hospital) -> Iterator[str]:
    yield from serve(sqlite_runtime, PORTS)


def _sign_in_french(page: Any, origin: str, username: str, password: str, code: str) -> None:
    page.goto(origin + "/lang/fr?next=/login")
    page.get_by_label("Identifiant").fill(username)
    page.get_by_label("Mot de passe").fill(password)
    page.get_by_label(re.compile("application d'authentification")).fill(code)
    page.get_by_role("button", name="Se connecter", exact=True).click()


def test_front_desk_checks_in_and_nurse_reads_the_ward_board_in_french(
    origin: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    movable_clock.set(MORNING)
    today = localtime.local_day(clock.now())
    clerk = factories.make_account(sqlite_runtime, roles=[Role.FRONT_DESK], facility_id=hospital.facility_id)
    ten = localtime.at(today, dt.time(10, 0))
    booked = Gate(sqlite_runtime, clerk).book_appointment(
        data=AppointmentInput(
            patient_id=hospital.my_patient,
            practitioner_id=str(hospital.physician.practitioner_id),
            start_at=ten,
            end_at=ten + dt.timedelta(minutes=20),
            reason="douleur thoracique",
        )
    )
    ward = factories.make_location(sqlite_runtime, hospital.facility_id)
    nurse_id = factories.make_practitioner(sqlite_runtime, hospital.facility_id, "nurse")
    nurse = make_person(
        sqlite_runtime,
        "nurse.ines",
        roles=(Role.NURSE,),
        facility_id=hospital.facility_id,
        practitioner_id=nurse_id,
    )
    factories.assign_ward(
        sqlite_runtime, practitioner_id=nurse_id, location_id=ward, facility_id=hospital.facility_id
    )
    inpatient = factories.register_patient(
        sqlite_runtime, hospital.facility_id, family="Lefebvre", given="Odile"
    )
    factories.admit(
        sqlite_runtime,
        patient_id=inpatient.id,
        facility_id=hospital.facility_id,
        location_id=ward,
        attending_id=hospital.physician.practitioner_id,
    )

    page = browser.new_page()
    dialogs = _no_dialogs(page)
    violations: list[str] = []
    page.on(
        "console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None
    )
    desk = hospital.front_desk
    _sign_in_french(page, origin, desk.username, desk.password, desk.code())
    page.wait_for_url(origin + "/desk")
    page.get_by_role("link", name="Arrivées", exact=True).click()
    page.get_by_role("heading", name=re.compile("^Arrivées")).wait_for()
    row = page.get_by_role("row").filter(has_text="10:00–10:20")
    row.locator(".patient-name", has_text="<script>alert(1)</script>").wait_for()  # a name, as text
    assert row.get_by_role("cell", name="réservé").count() == 1
    assert page.get_by_text("douleur").count() == 0  # never why
    if os.environ.get("CARNET_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "31-arrivals.png"), full_page=True)
    row.get_by_role("button", name=re.compile("^Enregistrer l'arrivée")).click()
    page.get_by_role("status").filter(has_text="L'arrivée du patient est enregistrée.").wait_for()
    row = page.get_by_role("row").filter(has_text="10:00–10:20")
    assert row.get_by_role("cell", name="arrivé").count() == 1
    assert row.get_by_role("button").count() == 0
    with sqlite_runtime.session_factory() as session:
        checked = session.get(Appointment, uuid.UUID(booked.id))
        assert checked is not None and checked.status == "arrived"
    page.get_by_role("button", name="Se déconnecter").click()

    # The nurse, a quarter of an hour later (four accounts on one machine would be a campaign).
    movable_clock.advance(dt.timedelta(minutes=16))
    next_totp_window(movable_clock)
    _sign_in_french(page, origin, nurse.username, nurse.password, nurse.code())
    page.wait_for_url(origin + "/day")
    page.get_by_role("link", name="Tableau du service", exact=True).click()
    page.get_by_role("heading", name=re.compile("^Tableau du service")).wait_for()
    board = page.get_by_role("row").filter(has_text="Lefebvre, Odile")
    board.get_by_role("cell", name="56 ans").wait_for()  # her age (born 17 May 1970)
    assert page.get_by_text("Durand").count() == 0  # not in her ward
    if os.environ.get("CARNET_SCREENSHOTS"):
        page.screenshot(path=str(SHOTS / "32-ward-board.png"), full_page=True)
    board.get_by_role("link", name="Lefebvre, Odile").click()
    page.wait_for_url(re.compile(f"/patients/{inpatient.id}$"))
    assert not violations and not dialogs
