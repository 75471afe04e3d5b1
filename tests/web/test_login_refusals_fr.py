"""Chromium: a refused sign-in on the French page is explained in French (the API answers in
English; the page says it in its own words, by kind of refusal)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from carnet.access.roles import Role
from carnet.detection.interfaces import Channel
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.detection.helpers import expose, new_patients
from tests.web.conftest import Hospital
from tests.web.test_browser import staff_actor
from tests.web.test_browser_journeys import serve

pytestmark = pytest.mark.browser

PORTS = range(8880, 8890)  # not the ranges of the other browser suites


@pytest.fixture
def served(sqlite_runtime: Runtime, hospital: Hospital) -> Iterator[str]:
    yield from serve(sqlite_runtime, PORTS)


def _try(page: Any, origin: str, username: str, password: str, code: str) -> str:
    page.goto(origin + "/lang/fr?next=/login")
    page.get_by_label("Identifiant").fill(username)
    page.get_by_label("Mot de passe").fill(password)
    page.get_by_label("Code de votre application d'authentification").fill(code)
    page.get_by_role("button", name="Se connecter", exact=True).click()
    status = page.locator("#login-status")
    status.filter(has_not_text="Vérification").wait_for()
    return str(status.inner_text())


def test_refused_sign_ins_are_explained_in_french(
    served: str, browser: Any, hospital: Hospital, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    page = browser.new_page()
    wrong = _try(page, served, hospital.physician.username, "not the password", "000000")
    assert wrong and "failed" not in wrong.lower() and "not" not in wrong.split()
    # Contained by detection: the French page says so in French, not the API's English.
    with pytest.raises(Exception, match="suspended"):
        expose(
            sqlite_runtime,
            staff_actor(hospital.physician, Role.PHYSICIAN),
            new_patients(400),
            channel=Channel.CHART,
        )
    contained = _try(
        page, served, hospital.physician.username, hospital.physician.password, hospital.physician.code()
    )
    assert "suspendu" in contained and "suspended" not in contained, contained
    page.close()
