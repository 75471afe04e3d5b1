"""Journeys in Debian's Chromium through today's chart forms: the front desk merges a duplicate
(compare, then confirm), a physician refers a patient to a colleague then ends it, billing issues
an invoice and cancels another.

With CARNET_SCREENSHOTS=1 they also write docs/screenshots/22..24-*.png (the README tour).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from carnet.access.roles import Role
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital, make_person
from tests.web.test_browser import next_totp_window, shot, sign_in
from tests.web.test_browser_journeys import _forged_post, _no_dialogs, serve

pytestmark = pytest.mark.browser

PORTS = range(8790, 8800)  # not the range of test_browser_journeys.py (8770-8779)


@pytest.fixture
def origin(sqlite_runtime: Runtime, hospital: Hospital) -> Iterator[str]:
    yield from serve(sqlite_runtime, PORTS)


def _open(page: Any, url: str) -> int:
    response = page.goto(url)
    assert response is not None
    return int(response.status)


def test_front_desk_compares_and_merges_a_duplicate(
    origin: str, browser: Any, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    # Zoé registered a second time without her INS, her name typed with markup in it.
    duplicate = factories.register_patient(
        sqlite_runtime,
        hospital.facility_id,
        family="<b>Zoe</b>",
        given="Eclair",
        birth_date=dt.date(1980, 2, 29),
    ).id
    kept = hospital.my_patient
    page = browser.new_page()
    dialogs = _no_dialogs(page)
    sign_in(page, origin, hospital.front_desk)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/desk")
    page.goto(f"{origin}/patients/{kept}")
    page.get_by_role("heading", name="Identity").wait_for()
    page.locator("summary", has_text="Merge a duplicate into this record").click()
    page.get_by_label("Record number of the duplicate").fill(duplicate)
    page.get_by_label("Reason for the merge").fill("Même personne, nom saisi sans accent")
    page.get_by_role("button", name="Compare the two records").click()

    # Both records side by side; markup in either name is text.
    page.get_by_role("heading", name="Merge two records").wait_for()
    names = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="Name"))
    cells = names.get_by_role("cell")
    assert cells.nth(0).inner_text() == "<b>Zoe</b>, Eclair"
    assert cells.nth(1).inner_text() == '<script>alert(1)</script>, Zoé "l\'Éclair"'
    assert page.locator("main b").count() == 0 and page.locator("main script").count() == 0
    ins = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="Identifier (INS)"))
    assert [c.strip() for c in ins.get_by_role("cell").all_inner_texts()] == ["", "180022912345678"]
    assert page.get_by_label("Reason for the merge").input_value() == "Même personne, nom saisi sans accent"
    shot(page, "22-merge-compare")

    # Without the page's token, nothing is merged, whatever the cookie says.
    forged = {
        "duplicate_id": duplicate,
        "duplicate_version": "1",
        "expected_version": "1",
        "reason": "forged",
    }
    assert _forged_post(page, f"/patients/{kept}/merge/confirm", forged) == 403
    other = browser.new_page()  # the duplicate, in another tab: still its own record
    assert _open(other, f"{origin}/patients/{duplicate}") == 200
    other.get_by_role("heading", name="Identity").wait_for()
    assert other.get_by_text("This record was merged into another record").count() == 0
    other.close()

    page.get_by_role("button", name="Merge the duplicate into the record kept").click()
    page.wait_for_url(f"{origin}/patients/{kept}")
    # The record kept lists the duplicate it replaces; the duplicate points to the record kept.
    page.get_by_text("Duplicate records merged into this one:").wait_for()
    page.get_by_role("link", name=duplicate).click()
    page.wait_for_url(f"{origin}/patients/{duplicate}")
    page.get_by_role("status").filter(has_text="This record was merged into another record").wait_for()
    assert page.get_by_role("heading", level=1).inner_text().strip() == "<b>Zoe</b>, Eclair"
    assert page.locator("summary", has_text="Merge a duplicate").count() == 0  # not on a merged record
    page.get_by_role("link", name="Open the record kept").click()
    page.wait_for_url(f"{origin}/patients/{kept}")
    page.get_by_role("heading", level=1, name="<script>alert(1)</script>").wait_for()
    assert not dialogs


def test_physician_refers_to_a_colleague_then_ends_it(
    origin: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    colleague = hospital.other_physician
    chart = f"{origin}/patients/{hospital.my_patient}"
    page = browser.new_page()
    dialogs = _no_dialogs(page)

    # Before any referral the colleague's sign-in does not open Zoé's chart.
    sign_in(page, origin, colleague)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/day")
    assert _open(page, chart) == 404
    page.get_by_role("heading", name="Not found, or not open to you").wait_for()
    colleague_cookies = browser.cookies()

    browser.clear_cookies()
    next_totp_window(movable_clock)
    sign_in(page, origin, hospital.physician)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/day")
    page.goto(chart)
    section = page.locator("section#care_team")
    section.get_by_role("heading", name="Care team and referrals").wait_for()
    section.locator("summary", has_text="Refer to a colleague").click()
    section.locator("select[name=practitioner_id]").select_option(str(colleague.practitioner_id))
    section.locator("select[name=kind]").select_option("referral")
    section.get_by_label("Why the colleague sees the patient").fill("Avis <b>cardiologique</b>")
    until = (clock.now() + dt.timedelta(days=30)).date()
    section.get_by_label("Until", exact=True).fill(until.isoformat())
    section.get_by_role("button", name="Refer", exact=True).click()
    page.wait_for_url(chart + "#care_team")
    section = page.locator("section#care_team")
    row = section.get_by_role("row").filter(has=page.get_by_role("cell", name="Avis <b>cardiologique</b>"))
    row.wait_for()  # the markup in the reason is text
    assert section.locator("td b").count() == 0
    assert row.get_by_role("cell", name="Referral", exact=True).count() == 1
    assert row.get_by_role("cell", name="in charge", exact=True).count() == 1
    ends = row.get_by_role("cell").nth(4).inner_text()  # the end of the day chosen
    assert f"{until.day}" in ends and f"{until:%y}" in ends and "23:59" in ends
    row.scroll_into_view_if_needed()
    shot(page, "23-referral")
    # Without the page's token, no referral is ended.
    end_action = row.locator("form").get_attribute("action")
    assert end_action is not None and end_action.endswith("/end")
    assert _forged_post(page, end_action, {"expected_version": "1"}) == 403
    referrer_cookies = browser.cookies()

    # The referral gives the colleague the chart.
    browser.clear_cookies()
    browser.add_cookies(colleague_cookies)
    assert _open(page, chart) == 200
    page.get_by_role("heading", name="Identity").wait_for()
    page.locator("section#care_team").get_by_role("cell", name="Avis <b>cardiologique</b>").wait_for()

    # The referrer ends it: kept in the list, no longer active.
    browser.clear_cookies()
    browser.add_cookies(referrer_cookies)
    page.goto(chart)
    row = page.locator("section#care_team").get_by_role("row").filter(has_text="cardiologique")
    row.get_by_role("button", name="End now").click()
    page.wait_for_url(chart + "#care_team")
    row = page.locator("section#care_team").get_by_role("row").filter(has_text="cardiologique")
    row.get_by_role("cell", name="ended", exact=True).wait_for()
    assert row.get_by_role("button", name="End now").count() == 0

    # The colleague's next open of the chart is refused.
    browser.clear_cookies()
    browser.add_cookies(colleague_cookies)
    assert _open(page, chart) == 404
    page.get_by_role("heading", name="Not found, or not open to you").wait_for()
    assert "alert(1)" not in page.inner_text("main")
    assert not dialogs


def test_billing_issues_an_invoice_then_cancels_another(
    origin: str, browser: Any, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    clerk = make_person(sqlite_runtime, "bill.ines", roles=(Role.BILLING,), facility_id=hospital.facility_id)
    factories.make_invoice(
        sqlite_runtime, patient_id=hospital.my_patient, facility_id=hospital.facility_id, total_cents=2500
    )
    chart = f"{origin}/patients/{hospital.my_patient}"
    page = browser.new_page()
    dialogs = _no_dialogs(page)
    sign_in(page, origin, clerk)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/billing")
    page.goto(chart)
    page.get_by_role("heading", level=1, name="<script>alert(1)</script>").wait_for()
    invoices = page.locator("section#invoices")
    invoices.get_by_role("cell", name="€25.00").first.wait_for()
    invoices.locator("summary", has_text="Issue an invoice").click()
    invoices.get_by_label("Act code 1").fill("CS")
    invoices.get_by_label("Act 1", exact=True).fill("Consultation <b>cardiologie</b>")
    invoices.get_by_label("Price (EUR) 1").fill("30")
    invoices.get_by_label("Act code 2").fill("DEQP003")
    invoices.get_by_label("Act 2", exact=True).fill("ECG")
    invoices.get_by_label("Price (EUR) 2").fill("14,26")
    shot(page, "24-invoice-issue")
    # Without the page's token, no invoice.
    forged = {"patient_id": hospital.my_patient, "code": "CS", "description": "C", "amount": "1"}
    assert _forged_post(page, "/billing/invoices", forged) == 403
    invoices.get_by_role("button", name="Issue the invoice").click()
    page.wait_for_url(chart + "#invoices")
    invoices = page.locator("section#invoices")
    issued = invoices.get_by_role("row").filter(has=page.get_by_role("cell", name="€44.26"))
    issued.get_by_role("cell", name="issued, unpaid", exact=True).wait_for()
    assert invoices.locator("tbody > tr").filter(has=page.get_by_role("cell", name="€")).count() == 2

    # Cancel the earlier unpaid invoice, with a reason (markup stays text).
    earlier = invoices.get_by_role("row").filter(has=page.get_by_role("cell", name="€25.00"))
    earlier.get_by_label("Reason").fill("Acte <i>en double</i>")
    earlier.get_by_role("button", name="Cancel this invoice").click()
    page.wait_for_url(chart + "#invoices")
    earlier = page.locator("section#invoices").get_by_role("row").filter(has_text="€25.00")
    earlier.get_by_role("cell", name="cancelled", exact=True).wait_for()
    earlier.get_by_text("Cancelled: Acte <i>en double</i>").wait_for()
    assert earlier.locator("i").count() == 0
    assert earlier.get_by_role("button", name="Cancel this invoice").count() == 0
    # The new invoice is untouched and still cancellable (nothing paid on it).
    issued = page.locator("section#invoices").get_by_role("row").filter(has_text="€44.26")
    issued.get_by_role("cell", name="issued, unpaid", exact=True).wait_for()
    # A physician has the patient in care but is no billing clerk: refused, explained.
    browser.clear_cookies()
    sign_in(page, origin, hospital.physician)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/day")
    page.goto(origin + "/billing")
    page.get_by_role("heading", name="This action is not allowed").wait_for()
    assert not dialogs
