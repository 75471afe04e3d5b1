"""Sign-in at the address `make demo` prints (127.0.0.1) and at localhost, while a cross-site
post stays refused; the login page's hint follows the mode; /favicon.ico is served."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from carnet.app import create_app
from carnet.identity.views import accepted_origins
from carnet.kernel import clock
from carnet.runtime import Runtime
from carnet.settings import Environment
from tests.web.conftest import Hospital, Person
from tests.web.test_browser import next_totp_window
from tests.web.test_browser_journeys import _port, serve


@pytest.mark.parametrize(
    ("configured", "origin", "accepted"),
    [
        ("http://localhost:8000", "http://localhost:8000", True),
        ("http://localhost:8000", "http://127.0.0.1:8000", True),  # what `make demo` prints
        ("http://localhost:8000", "http://[::1]:8000", True),
        ("http://127.0.0.1:8000", "http://localhost:8000", True),
        ("http://localhost:8000", "http://127.0.0.1:9000", False),  # another local program
        ("http://localhost:8000", "https://localhost:8000", False),
        ("http://localhost:8000", "http://evil.example", False),
        ("http://localhost:8000", "http://localhost.evil.example:8000", False),
        ("https://epr.example.org", "https://epr.example.org", True),
        ("https://epr.example.org", "http://127.0.0.1:8000", False),  # production: its own host only
        ("https://epr.example.org", "http://epr.example.org", False),
    ],
)
def test_accepted_origins(configured: str, origin: str, accepted: bool) -> None:
    assert (origin in accepted_origins(configured)) is accepted


def _login(client: TestClient, person: Person, origin: str, **headers: str) -> Any:
    return client.post(
        "/auth/login",
        json={"username": person.username, "password": person.password, "otp": person.code()},
        headers={"Origin": origin, **headers},
    )


def test_login_from_127_0_0_1_is_accepted_and_cross_site_refused(
    sqlite_runtime: Runtime, hospital: Hospital, movable_clock: clock.MovableClock
) -> None:
    person = hospital.physician
    with TestClient(create_app(sqlite_runtime), base_url="http://127.0.0.1:8000") as client:
        for forged in ("http://evil.example", "http://127.0.0.1:9999", "null"):
            refused = _login(client, person, forged)
            assert refused.status_code == 403 and "cross-site login refused" in refused.text
            assert "carnet_session" not in client.cookies
        refused = _login(client, person, "http://127.0.0.1:8000", **{"Sec-Fetch-Site": "cross-site"})
        assert refused.status_code == 403
        assert _login(client, person, "http://127.0.0.1:8000").status_code == 200
        assert client.get("/auth/me").json()["username"] == person.username


def test_favicon_is_served(client: TestClient) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/x-icon"
    assert response.content[:4] == b"\x00\x00\x01\x00"  # an ICO header


def test_login_hint_follows_the_mode(sqlite_runtime: Runtime, hospital: Hospital) -> None:
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as client:
        page = client.get("/login").text
    assert "administrators sign in with a passkey instead" in page
    assert "administrators included, signs in with the code" not in page
    assert 'name="username" autocomplete="username webauthn" required maxlength="150" autofocus' in page
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"env": Environment.DEMO})
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as client:
        page = client.get("/login").text
    assert "administrators included, signs in with the code" in page
    assert "sign in with a passkey instead" not in page


@pytest.fixture
def served(sqlite_runtime: Runtime, hospital: Hospital) -> Iterator[str]:
    yield from serve(sqlite_runtime, range(8830, 8840))


@pytest.fixture
def attacker_site() -> Iterator[str]:
    """Another site on this machine whose page posts to carnet's login (login CSRF)."""
    port = _port(range(8840, 8850))
    page = b"""<!doctype html><html><body><p id="done">waiting</p><script>
const body = JSON.stringify({username: "attacker", password: "x".repeat(16), otp: "123456"});
fetch(location.hash.slice(1) + "/auth/login", {method: "POST", mode: "no-cors", credentials: "include",
  headers: {"Content-Type": "text/plain"}, body: body})
  .finally(() => { document.getElementById("done").textContent = "sent"; });
</script></body></html>"""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.mark.browser
def test_sign_in_in_chromium_at_both_hosts(
    served: str,
    attacker_site: str,
    hospital: Hospital,
    browser: Any,
    movable_clock: clock.MovableClock,
) -> None:
    port = served.rsplit(":", 1)[1]
    person = hospital.physician
    for host in ("127.0.0.1", "localhost"):
        origin = f"http://{host}:{port}"
        page = browser.new_page()
        page.goto(origin + "/login")
        # The cursor is in the first field: typing goes to the username.
        assert page.evaluate("document.activeElement.id") == "username"
        page.keyboard.type(person.username)
        page.get_by_label("Password").fill(person.password)
        page.get_by_label("Code from your authenticator app").fill(person.code())
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_url(lambda url, here=origin: url.startswith(here) and "/login" not in url)
        assert page.get_by_text("cross-site login refused").count() == 0
        me = page.request.get(origin + "/auth/me")
        assert me.json()["username"] == person.username
        assert page.request.get(origin + "/favicon.ico").status == 200
        page.close()
        next_totp_window(movable_clock)
    # A page of another site posts to the login: carnet refuses it and no session is planted.
    browser.clear_cookies()
    page = browser.new_page()
    page.goto(f"{attacker_site}/#http://127.0.0.1:{port}")
    page.wait_for_function("document.getElementById('done').textContent === 'sent'")
    assert not [c for c in browser.cookies() if c["name"].endswith("carnet_session")]
    assert page.request.get(f"http://127.0.0.1:{port}/auth/me").status == 401
    page.close()
