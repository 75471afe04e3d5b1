"""A physician's results in Debian's Chromium: the section links of the patient banner lead to
the results, loaded after the page through the gate; the potassium trend is an SVG drawn by the
server (the strict CSP holds: no violation reported), the out-of-range values flagged.

With CARNET_SCREENSHOTS=1 it also writes docs/screenshots/29-lab-trend.png (the README tour).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from typing import Any

import pytest

from carnet.kernel import clock
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital
from tests.web.test_browser import SHOTS, sign_in
from tests.web.test_browser_journeys import _no_dialogs, serve

pytestmark = pytest.mark.browser

PORTS = range(8880, 8890)  # not the ranges of the other browser suites (8770-, 8790-, 8850-)


@pytest.fixture
def origin(sqlite_runtime: Runtime, hospital: Hospital) -> Iterator[str]:
    yield from serve(sqlite_runtime, PORTS)


def test_physician_reads_the_lab_trend(
    origin: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    movable_clock.advance(dt.timedelta(days=-9))
    for potassium, creatinine in ((4.1, 85.0), (4.8, 104.0), (5.6, 131.0), (6.2, 158.0)):
        factories.make_lab_report(
            sqlite_runtime,
            patient_id=hospital.my_patient,
            facility_id=hospital.facility_id,
            conclusion="Kaliémie en hausse, à recontrôler.",
            results=(
                ("2823-3", "Potassium", potassium, "mmol/L"),
                ("2160-0", "Créatinine", creatinine, "µmol/L"),
                ("2951-2", "Sodium", 139.0, "mmol/L"),
            ),
        )
        movable_clock.advance(dt.timedelta(days=2))
    movable_clock.advance(dt.timedelta(days=1))

    page = browser.new_page()
    dialogs = _no_dialogs(page)
    violations: list[str] = []
    page.on(
        "console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None
    )
    sign_in(page, origin, hospital.physician)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/day")
    page.goto(f"{origin}/patients/{hospital.my_patient}")
    page.get_by_role("navigation", name="Chart sections").get_by_role("link", name="Results").click()
    section = page.locator("section#results")
    section.locator("svg polyline").first.wait_for()
    labs = section.locator("table#labs")
    potassium = labs.get_by_role("row").filter(has_text="Potassium")
    assert potassium.get_by_role("cell", name="6.2", exact=True).count() == 1
    assert potassium.locator(".flag-high").inner_text() == "high"
    assert potassium.locator("svg circle").count() == 4
    assert potassium.locator("svg circle.out").count() == 2  # 5.6 and 6.2 above 3.5–5
    sodium = labs.get_by_role("row").filter(has_text="Sodium")
    assert sodium.locator(".flag-normal").count() == 1
    assert section.get_by_text("Kaliémie en hausse, à recontrôler.").count() == 4
    if os.environ.get("CARNET_SCREENSHOTS"):
        # What the physician sees after the link: the banner kept on top, the results below it.
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.get_by_role("navigation", name="Chart sections").get_by_role("link", name="Results").click()
        page.screenshot(path=str(SHOTS / "29-lab-trend.png"))
    assert not violations and not dialogs
