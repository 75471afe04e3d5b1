"""Beds in Debian's Chromium: a physician admits a patient to a free bed from the chart (the
banner then says ward, room and bed), transfers her to another bed; the nurse's bed board shows
who lies where and the bed left free; after the discharge both beds are free. The strict CSP
holds and no dialog opens."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from carnet.access.roles import Role
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, Person, make_person
from tests.web.test_browser import SHOTS, next_totp_window, sign_in
from tests.web.test_browser_journeys import _no_dialogs, serve

pytestmark = pytest.mark.browser

PORTS = range(8930, 8940)  # not the ranges of the other browser suites
MORNING = dt.datetime(2026, 12, 8, 8, 30, tzinfo=dt.UTC)  # Tuesday 09:30 in Paris


@pytest.fixture
def origin(sqlite_runtime: Runtime, hospital: Hospital) -> Iterator[str]:
    yield from serve(sqlite_runtime, PORTS)


def _as(page: Any, origin: str, person: Person, clock_: clock.MovableClock) -> None:
    # A quarter of an hour between people (two accounts at once on one machine look like a campaign).
    clock_.advance(dt.timedelta(minutes=16))
    next_totp_window(clock_)
    sign_in(page, origin, person)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(re.compile(r"/day$"))


def _bed_row(page: Any, bed: str) -> Any:
    return page.locator("table.bed-board tr").filter(has=page.get_by_role("rowheader", name=bed, exact=True))


def test_admit_transfer_discharge_and_the_bed_board(
    origin: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    movable_clock.set(MORNING)
    runtime = sqlite_runtime
    ward = factories.make_location(runtime, hospital.facility_id)
    factories.make_beds(
        runtime, hospital.facility_id, ward, {"Chambre 12": ["Lit A", "Lit B"], "Chambre 14": ["Lit A"]}
    )
    nurse_id = factories.make_practitioner(runtime, hospital.facility_id, "nurse")
    nurse = make_person(
        runtime, "nurse.ines", roles=(Role.NURSE,), facility_id=hospital.facility_id, practitioner_id=nurse_id
    )
    factories.assign_ward(
        runtime, practitioner_id=nurse_id, location_id=ward, facility_id=hospital.facility_id
    )
    chart = f"{origin}/patients/{hospital.my_patient}"

    page = browser.new_page()
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    dialogs = _no_dialogs(page)
    violations: list[str] = []
    page.on(
        "console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None
    )

    # The physician admits her to Chambre 12, Lit A (the form offers the ward's free beds).
    _as(page, origin, hospital.physician, movable_clock)
    page.goto(chart)
    page.locator("summary", has_text="Admit the patient").click()
    page.get_by_label("Kind of stay").select_option("inpatient")
    page.get_by_label("Free bed").select_option(label="Chambre 12 · Lit A")
    page.get_by_role("button", name="Admit", exact=True).click()
    page.locator(".banner").get_by_text(re.compile("Chambre 12 · Lit A")).wait_for()

    # Then moves her to Lit B: the bed before is kept in the stay's history.
    page.locator("#stays summary", has_text="Transfer").click()
    page.get_by_label("To the free bed").select_option(label="Chambre 12 · Lit B")
    page.get_by_role("button", name="Transfer", exact=True).click()
    page.locator(".banner").get_by_text(re.compile("Chambre 12 · Lit B")).wait_for()
    page.locator("#stays summary", has_text="Beds before").click()
    page.locator("#stays details.bed-history li", has_text="Chambre 12 · Lit A").wait_for()
    page.get_by_role("button", name="Sign out").click()

    # The nurse's board: her ward room by room; Lit B hers, Lit A free again.
    _as(page, origin, nurse, movable_clock)
    page.get_by_role("link", name="Ward board", exact=True).click()
    page.get_by_role("heading", name=re.compile("^Ward board")).wait_for()
    _bed_row(page, "Lit B").locator(f'a[href="/patients/{hospital.my_patient}"]').wait_for()
    assert _bed_row(page, "Lit A").first.get_by_text("Free").count() == 1
    assert page.get_by_text("Durand").count() == 0  # not in her ward
    if os.environ.get("CARNET_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "33-bed-board-phone.png"), full_page=True)
    page.get_by_role("button", name="Sign out").click()

    # Discharged: every bed of the ward is free on the board.
    _as(page, origin, hospital.physician, movable_clock)
    page.goto(chart)
    page.locator("#stays summary", has_text="Discharge").click()
    page.get_by_role("button", name="Discharge", exact=True).click()
    page.locator("#stays td", has_text="ended").first.wait_for()
    page.get_by_role("button", name="Sign out").click()
    _as(page, origin, nurse, movable_clock)
    page.goto(origin + "/ward")
    assert page.locator("table.bed-board td.bed-free-cell").count() == 3
    assert not violations and not dialogs
