"""The step-up dialog in Debian's Chromium with a virtual authenticator: a passkey assertion made
in the session lets an access-widening action through; the same assertion answered from another
session, replayed, or a proof older than 5 minutes does nothing."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.web.conftest import Hospital, Person, make_person
from tests.web.test_browser import _session_cookies, next_totp_window, sign_in
from tests.web.test_browser_journeys import serve

pytestmark = pytest.mark.browser

PORTS = range(8850, 8860)  # not the ranges of test_browser_journeys (8770-) or test_browser_records (8790-)


@pytest.fixture
def origin(sqlite_runtime: Runtime, hospital: Hospital) -> Iterator[str]:
    # Each xdist worker its own half of the range: two workers never probe the same port at once.
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 2
    yield from serve(sqlite_runtime, range(PORTS.start + 5 * worker, PORTS.start + 5 * worker + 5))


def _authenticator(browser: Any, page: Any) -> None:
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


def _passkey_admin(browser: Any, origin: str, admin: Person, movable_clock: clock.MovableClock) -> Any:
    """An administrator who enrols a passkey, then signs in with it (as in production)."""
    page = browser.new_page()
    page.goto(origin + "/login")
    _authenticator(browser, page)
    sign_in(page, origin, admin)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(re.compile(r"/account\?enrol=1"))
    page.get_by_role("button", name="Register a passkey").click()
    page.wait_for_url(re.compile(r"/login\?enrolled=1"))
    next_totp_window(movable_clock)
    sign_in(page, origin, admin, otp=False)
    page.get_by_role("button", name="Sign in with a passkey").click()
    page.wait_for_url(re.compile(r"/admin"))
    return page


def _csrf(page: Any) -> str:
    return str(next(c["value"] for c in page.context.cookies() if c["name"] == "carnet_csrf"))


def _assertion_over_own_challenge(page: Any) -> dict[str, Any]:
    """The page asks for a challenge of ITS session and signs it, without sending the answer."""
    result: dict[str, Any] = page.evaluate(
        """async (csrf) => {
            const o = await (await fetch('/auth/step-up/options', {method: 'POST',
                headers: {'X-CSRF-Token': csrf, 'Content-Type': 'application/json'}})).json();
            const cred = await navigator.credentials.get(
                {publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(o.publicKey)});
            return {challengeId: o.challengeId, webauthn: cred.toJSON()};
        }""",
        _csrf(page),
    )
    return result


def _post_json(page: Any, path: str, body: dict[str, Any]) -> int:
    return int(
        page.evaluate(
            """async ([path, body, csrf]) => (await fetch(path, {method: 'POST',
                headers: {'X-CSRF-Token': csrf, 'Content-Type': 'application/json'},
                body: JSON.stringify(body)})).status""",
            [path, body, _csrf(page)],
        )
    )


def _post_form(page: Any, path: str, fields: dict[str, str]) -> int:
    return int(
        page.evaluate(
            """async ([path, body]) => (await fetch(path, {method: 'POST',
                body: new URLSearchParams(body), redirect: 'manual'})).status""",
            [path, fields | {"csrf_token": _csrf(page)}],
        )
    )


def _accounts(runtime: Runtime) -> int:
    with runtime.session_factory() as session:
        return int(session.scalar(sa.select(sa.func.count()).select_from(Account)) or 0)


def test_a_passkey_assertion_in_this_session_opens_the_account_and_nothing_else_does(
    origin: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    admin = make_person(sqlite_runtime, "admin.one", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    page = _passkey_admin(browser, origin, admin, movable_clock)
    form = page.locator('form[action="/admin/accounts"]')

    # The form asks for the passkey first (the dialog), then is sent: the account opens.
    form.locator("input[name=username]").fill("desk.lea")
    form.locator("input[name=display_name]").fill("Léa Accueil")
    form.locator("select[name=role]").select_option("front_desk")
    form.locator("select[name=facility_id]").select_option(str(hospital.facility_id))
    form.locator("input[name=reason]").fill("new admissions clerk")
    page.get_by_role("button", name="Open the account").click()
    page.locator("#new-password").wait_for()
    assert page.locator("#new-totp").inner_text()

    # A proof is good for 5 minutes in its session: later, the same session is refused.
    before = _accounts(sqlite_runtime)
    movable_clock.advance(dt.timedelta(minutes=5, seconds=1))
    page.goto(origin + "/admin")
    fields = {"username": "desk.late", "display_name": "Late", "role": "front_desk"}
    fields |= {"facility_id": str(hospital.facility_id), "reason": "too late"}
    assert _post_form(page, "/admin/accounts", fields) == 403
    assert _accounts(sqlite_runtime) == before

    # A new assertion in this session goes through, once per challenge.
    fresh = _assertion_over_own_challenge(page)
    assert _post_json(page, "/auth/step-up/proof", fresh) == 200
    assert _post_json(page, "/auth/step-up/proof", fresh) == 401  # the same answer again
    assert _post_form(page, "/admin/accounts", fields | {"username": "desk.now"}) == 200
    assert _accounts(sqlite_runtime) == before + 1
    assert _refusal_reasons(sqlite_runtime) == ["proof older than 5 minutes", "challenge already answered"]


def test_an_assertion_carried_to_another_session_proves_nothing(
    origin: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    admin = make_person(sqlite_runtime, "admin.two", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    page = _passkey_admin(browser, origin, admin, movable_clock)
    # A real assertion over this session's challenge, carried to another session of the same
    # person (the attacker's stolen cookie): refused there, and no proof is made for it.
    assertion = _assertion_over_own_challenge(page)
    other = _session_cookies(sqlite_runtime, admin, origin)
    cookies = {c["name"]: c["value"] for c in other}
    with httpx.Client(base_url=origin, cookies=cookies) as attacker:
        headers = {"X-CSRF-Token": cookies["carnet_csrf"]}
        assert attacker.post("/auth/step-up/proof", json=assertion, headers=headers).status_code == 401
        fields = {"username": "desk.stolen", "display_name": "Stolen", "role": "front_desk"}
        fields |= {
            "facility_id": str(hospital.facility_id),
            "reason": "minted",
            "csrf_token": cookies["carnet_csrf"],
        }
        before = _accounts(sqlite_runtime)
        assert attacker.post("/admin/accounts", data=fields).status_code == 403
        assert _accounts(sqlite_runtime) == before
    # The session it was made for may still use it, once; a replay is refused.
    assert _post_json(page, "/auth/step-up/proof", assertion) == 200
    assert _post_json(page, "/auth/step-up/proof", assertion) == 401
    assert _refusal_reasons(sqlite_runtime) == [
        "challenge issued to another session",
        "no proof in this session",
        "challenge already answered",
    ]


def _refusal_reasons(runtime: Runtime) -> list[str | None]:
    with runtime.session_factory() as session:
        return list(
            session.scalars(
                sa.select(AuditEvent.policy_reason)
                .where(AuditEvent.kind == AuditKind.STEP_UP_REFUSED.value)
                .order_by(AuditEvent.seq)
            ).all()
        )


def test_the_refusal_page_explains_in_french(
    origin: str, browser: Any, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    admin = make_person(sqlite_runtime, "admin.one", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    browser.add_cookies(_session_cookies(sqlite_runtime, admin, origin))
    browser.add_cookies([{"name": "carnet_lang", "value": "fr", "url": origin}])
    page = browser.new_page()
    page.goto(origin + "/admin")
    # Without scripts' help (as a forged form would be sent): the answer says what is missing.
    page.evaluate(
        """() => { const f = document.querySelector('form[action="/admin/accounts"]');
                   f.removeAttribute('data-step-up'); HTMLFormElement.prototype.submit.call(f); }"""
    )
    page.get_by_text("Une session seule ne suffit pas.").wait_for()


def test_in_a_demo_the_dialog_takes_a_code_once(
    origin: str,
    browser: Any,
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
) -> None:
    from carnet.settings import Environment

    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"env": Environment.DEMO})
    admin = make_person(sqlite_runtime, "admin.demo", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    page = browser.new_page()
    sign_in(page, origin, admin)  # a demo lets a privileged account use its code
    # The login's own code (the clock runs on: computed again later it may be the next window's)
    used = page.get_by_label("Code from your authenticator app").input_value()
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(re.compile(r"/admin"))
    form = page.locator('form[action="/admin/accounts"]')
    form.locator("input[name=username]").fill("desk.demo")
    form.locator("input[name=display_name]").fill("Demo Clerk")
    form.locator("select[name=role]").select_option("front_desk")
    form.locator("select[name=facility_id]").select_option(str(hospital.facility_id))
    form.locator("input[name=reason]").fill("trying the demo")
    before = _accounts(sqlite_runtime)
    page.get_by_role("button", name="Open the account").click()
    dialog = page.locator("#step-up-dialog")
    # `used`, the login's code: accepted once, so refused here
    dialog.get_by_label("Demo only: code from your authenticator app").fill(used)
    dialog.get_by_role("button", name="Confirm with the code").click()
    dialog.get_by_text("Not confirmed: the action was not done.").wait_for()
    assert _accounts(sqlite_runtime) == before
    next_totp_window(movable_clock)
    dialog.get_by_label("Demo only: code from your authenticator app").fill(admin.code())
    dialog.get_by_role("button", name="Confirm with the code").click()
    page.locator("#new-password").wait_for()
    assert _accounts(sqlite_runtime) == before + 1
