"""WebAuthn passkeys end to end in Debian's Chromium with the DevTools virtual authenticator."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.app import create_app
from carnet.audit.models import AuditEvent
from carnet.identity.models import WebAuthnCredential
from carnet.runtime import Runtime
from tests.identity.conftest import make_person

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Runs in the page: the same calls a login screen makes.
JS_POST = """async ([path, body, csrf]) => {
  const headers = {"Content-Type": "application/json"};
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const r = await fetch(path, {method: "POST", headers, body: JSON.stringify(body || {})});
  return {status: r.status, body: await r.json()};
}"""
JS_REGISTER = """async ([csrf]) => {
  const headers = {"Content-Type": "application/json", "X-CSRF-Token": csrf};
  const o = await (await fetch("/auth/webauthn/register-options", {method: "POST", headers})).json();
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(o.publicKey);
  const cred = await navigator.credentials.create({publicKey});
  const r = await fetch("/auth/webauthn/register", {method: "POST", headers,
    body: JSON.stringify({challengeId: o.challengeId, credential: cred.toJSON(), label: "virtual key"})});
  return {status: r.status, body: await r.json()};
}"""
JS_ASSERT = """async () => {
  const o = await (await fetch("/auth/webauthn/login-options", {method: "POST"})).json();
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(o.publicKey);
  const cred = await navigator.credentials.get({publicKey});
  return {challengeId: o.challengeId, webauthn: cred.toJSON()};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(sqlite_runtime: Runtime) -> Iterator[tuple[str, Runtime]]:
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
    yield origin, sqlite_runtime
    server.should_exit = True
    thread.join(timeout=10)


def test_passkey_registration_and_login_in_chromium(served: tuple[str, Runtime]) -> None:
    from playwright.sync_api import sync_playwright

    origin, runtime = served
    officer = make_person(runtime, "sec.officer", roles=(Role.SECURITY_OFFICER,))
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS
        )
        context.set_default_timeout(20_000)
        try:
            page = context.new_page()
            page.goto(origin + "/login")  # its CSP lets scripts fetch from self; a JSON answer allows nothing
            cdp = context.new_cdp_session(page)
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

            def post(path: str, body: dict[str, Any] | None = None, csrf: str | None = None) -> Any:
                return page.evaluate(JS_POST, [path, body, csrf])

            # 1. First login with password + TOTP: the session may only enrol a passkey.
            first = post(
                "/auth/login",
                {"username": "sec.officer", "password": officer.password, "otp": officer.code()},
            )
            assert first["status"] == 200 and first["body"]["enrollmentOnly"] is True
            assert page.evaluate("async () => (await fetch('/auth/sessions')).status") == 401

            # 2. Register the passkey; the enrolment session ends.
            registered = page.evaluate(JS_REGISTER, [first["body"]["csrfToken"]])
            assert registered["status"] == 201, registered
            assert registered["body"]["signInAgain"] is True
            assert page.evaluate("async () => (await fetch('/auth/me')).status") == 401

            # 3. Sign in with password + passkey: a full privileged session.
            assertion = page.evaluate(JS_ASSERT)
            second = post(
                "/auth/login",
                {"username": "sec.officer", "password": officer.password, **assertion},
            )
            assert second["status"] == 200, second
            assert second["body"]["enrollmentOnly"] is False
            assert second["body"]["roles"] == ["security_officer"]
            assert page.evaluate("async () => (await fetch('/auth/sessions')).status") == 200

            # 4. Step-up with the passkey, again in the browser.
            step = page.evaluate(JS_ASSERT)
            stepped = post("/auth/step-up", step, second["body"]["csrfToken"])
            assert stepped["status"] == 200, stepped

            # 5. The same assertion cannot be replayed (challenge consumed).
            replay = post(
                "/auth/login", {"username": "sec.officer", "password": officer.password, **assertion}
            )
            assert replay["status"] == 401

            # 6. TOTP no longer opens anything for this account.
            totp_again = post(
                "/auth/login",
                {
                    "username": "sec.officer",
                    "password": officer.password,
                    "otp": officer.code(offset_steps=1),
                },
            )
            assert totp_again["status"] == 401
        finally:
            context.close()

    with runtime.session_factory() as session:
        credential = session.scalars(select(WebAuthnCredential)).one()
        assert credential.account_id == officer.account_id and credential.sign_count >= 2
        kinds = [(e.kind, e.outcome) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert ("account:mfa:enrolled", "success") in kinds
    assert ("account:mfa:step-up", "success") in kinds
    assert kinds.count(("account:login:success", "success")) == 2
