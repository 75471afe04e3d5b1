"""Chromium: the class-based allergy warning and the prescription's life (hold, renew, stop) in
French, the patient's access log one row per access, a phone-sized chart and the printed page.

With CARNET_SCREENSHOTS=1 they also write docs/screenshots/25..28-*.png (the README tour).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import pytest

from carnet.access.roles import Role
from carnet.kernel import clock
from carnet.phi.gate import Gate
from carnet.phi.schemas import AllergyInput
from carnet.runtime import Runtime
from tests.web.conftest import Hospital
from tests.web.test_browser import next_totp_window, shot, staff_actor
from tests.web.test_browser_journeys import serve

pytestmark = pytest.mark.browser

PORTS = range(8850, 8860)  # not the ranges of the other browser suites


@pytest.fixture
def served(sqlite_runtime: Runtime, hospital: Hospital) -> Iterator[str]:
    yield from serve(sqlite_runtime, PORTS)


def _sign_in_fr(page: Any, origin: str, username: str, password: str, code: str) -> None:
    page.goto(origin + "/lang/fr?next=/login")
    page.get_by_label("Identifiant").fill(username)
    page.get_by_label("Mot de passe").fill(password)
    page.get_by_label("Code de votre application d'authentification").fill(code)
    page.get_by_role("button", name="Se connecter", exact=True).click()
    page.wait_for_url(lambda url: "/login" not in url)


def test_prescribing_safely_in_french_and_the_patients_access_log(
    served: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    origin = served.replace("localhost", "127.0.0.1")  # the address `make demo` prints
    doctor = Gate(sqlite_runtime, staff_actor(hospital.physician, Role.PHYSICIAN))
    doctor.record_allergy(
        data=AllergyInput(
            patient_id=hospital.my_patient,
            substance_code="J01C",
            substance_display="Pénicillines",
            criticality="high",
        )
    )
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    p = hospital.physician
    _sign_in_fr(page, origin, p.username, p.password, p.code())
    chart = f"{origin}/patients/{hospital.my_patient}"
    page.goto(chart)
    # Exactly "Prescrire": the lab-order form's summary ("Prescrire un examen...") may load first.
    page.locator("summary", has_text=re.compile(r"^\s*Prescrire\s*$")).click()
    # Search as you type: the browser offers the catalogue's French names; a cephalosporin.
    page.get_by_label("Médicament", exact=True).fill("ceftriaxone (Rocéphine) — J01DD04")
    page.get_by_label("Posologie").fill("1 g par jour IV pendant 5 jours")
    page.get_by_role("button", name="Prescrire", exact=True).click()
    warning = page.get_by_role("alert").filter(has_text="Rien n'a été prescrit.")
    warning.wait_for()
    assert "Pénicillines (J01C)" in warning.inner_text()
    assert "cycle bêtalactame" in warning.inner_text() and "source" in warning.inner_text()
    page.locator("#prescriptions").scroll_into_view_if_needed()
    shot(page, "25-allergy-class-warning-fr")
    page.get_by_label("Motif de prescription malgré les alertes").fill(
        "Réaction cutanée mineure en 2010, avis allergologue"
    )
    page.get_by_role("button", name="Prescrire", exact=True).click()
    page.get_by_text("prescrit malgré une alerte").wait_for()
    # Hold it, renew it, stop it: each at the version shown, each with its reason.
    row = page.locator("#prescriptions tbody tr").filter(has_text="Ceftriaxone")
    row.locator("summary", has_text="Suspendre").click()
    row.get_by_label("Motif de la suspension").fill("En attente de l'antibiogramme")
    row.get_by_role("button", name="Suspendre cette prescription").click()
    page.locator("#prescriptions tbody tr").filter(has_text="En attente de l'antibiogramme").wait_for()
    row = page.locator("#prescriptions tbody tr").filter(has_text="Ceftriaxone")
    assert "suspendue" in row.inner_text()
    # Renewing is prescribing again: the same checks, the same need for a reason.
    row.get_by_role("button", name="Renouveler").click()
    page.get_by_role("alert").filter(has_text="Pénicillines (J01C)").wait_for()
    row = page.locator("#prescriptions tbody tr").filter(has_text="Ceftriaxone")
    row.get_by_label("Motif du renouvellement malgré les alertes").fill("Même motif, antibiogramme attendu")
    row.get_by_role("button", name="Renouveler").click()
    page.wait_for_url(lambda url: url.endswith("#prescriptions"))
    rows = page.locator("#prescriptions tbody tr").filter(has_text="Ceftriaxone")
    rows.nth(1).wait_for()  # the section loads after the page (htmx)
    assert rows.count() == 2
    assert "terminée" in page.locator("#prescriptions").inner_text()
    shot(page, "26-prescriptions-hold-renew-fr")

    # A phone on the ward: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(chart)
    page.get_by_role("heading", name="Identité").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    shot(page, "27-chart-phone-fr")
    # Printed: no navigation or forms on paper.
    page.emulate_media(media="print")
    assert page.locator("header.top").is_hidden() and page.locator("form").first.is_hidden()
    page.emulate_media(media="screen")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.get_by_role("button", name="Se déconnecter").click()
    page.wait_for_url(lambda url: "/login" in url)

    # The patient reads who opened the record: one row per access, their own views as theirs.
    next_totp_window(movable_clock)
    z = hospital.patient_person
    _sign_in_fr(page, origin, z.username, z.password, z.code())
    page.goto(origin + "/portal/access-log")
    log = page.locator("#access tbody")
    doctor_rows = log.locator("tr").filter(has_text=p.username.title())
    assert doctor_rows.count() >= 1 and "Médecin" in doctor_rows.first.inner_text()
    assert log.locator("tr.own").filter(has_text="Vous").count() >= 1
    shot(page, "28-access-log-fr")
    assert dialogs == []
    movable_clock.advance(dt.timedelta(seconds=1))
