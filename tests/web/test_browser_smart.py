"""A SMART app in Debian's Chromium: launched from the chart (EHR launch), it runs PKCE S256
in the page, exchanges the code and reads the current patient's Observations with its
patient-scoped token, from its own origin (CORS for registered apps only)."""

from __future__ import annotations

import http.server
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from carnet.audit.models import AuditEvent
from carnet.identity import oauth
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests import factories
from tests.web.conftest import Hospital
from tests.web.test_browser import served, shot, sign_in  # noqa: F401  (the served fixture)

pytestmark = pytest.mark.browser

# The app: two pages, as a SMART app's launch and redirect pages are (fhirclient.js does the
# same steps). Its script runs on its own origin; carnet's pages never run it.
LAUNCH_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Tiny SMART app</title></head>
<body><p id="status">launching</p><script>
(async () => {
  const q = new URLSearchParams(location.search);
  const iss = q.get("iss"), launch = q.get("launch");
  const conf = await (await fetch(iss + "/.well-known/smart-configuration")).json();
  const bytes = crypto.getRandomValues(new Uint8Array(48));
  const b64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
    .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  const verifier = b64(bytes);
  const challenge = b64(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const state = b64(crypto.getRandomValues(new Uint8Array(16)));
  sessionStorage.setItem("smart", JSON.stringify({iss, verifier, state, token: conf.token_endpoint}));
  const params = new URLSearchParams({
    response_type: "code", client_id: "tiny-app", redirect_uri: location.origin + "/callback",
    scope: "launch openid fhirUser patient/Observation.rs", state, aud: iss, launch,
    code_challenge: challenge, code_challenge_method: "S256"});
  location.assign(conf.authorization_endpoint + "?" + params);
})().catch((e) => { document.getElementById("status").textContent = "error " + e; });
</script></body></html>"""

CALLBACK_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Tiny SMART app</title></head>
<body><p id="status">exchanging</p><ul id="observations"></ul><script>
(async () => {
  const saved = JSON.parse(sessionStorage.getItem("smart"));
  const q = new URLSearchParams(location.search);
  if (q.get("state") !== saved.state) throw new Error("state mismatch");
  const answer = await fetch(saved.token, {method: "POST",
    headers: {"Content-Type": "application/x-www-form-urlencoded"},
    body: new URLSearchParams({grant_type: "authorization_code", code: q.get("code"),
      redirect_uri: location.origin + "/callback", client_id: "tiny-app", code_verifier: saved.verifier})});
  const token = await answer.json();
  if (!answer.ok) throw new Error(token.error);
  const auth = {headers: {Authorization: "Bearer " + token.access_token, Accept: "application/fhir+json"}};
  const bundle = await (await fetch(saved.iss + "/Observation?patient=" + token.patient, auth)).json();
  const list = document.getElementById("observations");
  for (const entry of bundle.entry || []) {
    const li = document.createElement("li");
    li.textContent = entry.resource.code.coding[0].code + " " + entry.resource.subject.reference;
    list.appendChild(li);
  }
  const count = (bundle.entry || []).length;
  document.getElementById("status").textContent =
    "done patient=" + token.patient + " count=" + count + " id_token=" + Boolean(token.id_token);
})().catch((e) => { document.getElementById("status").textContent = "error " + e; });
</script></body></html>"""


class _AppHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        body = {"/launch": LAUNCH_PAGE, "/callback": CALLBACK_PAGE}.get(path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return  # the query carries a code: not logged


@pytest.fixture
def tiny_app_server() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _AppHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def tiny_app(tiny_app_server: str, sqlite_runtime: Runtime, hospital: Hospital) -> str:
    with sqlite_runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="tiny-app",
            name="Tiny app",
            jwks=None,
            allowed_scopes="launch openid fhirUser patient/Observation.rs",
            kind="app",
            redirect_uris=f"{tiny_app_server}/callback",
            launch_uri=f"{tiny_app_server}/launch",
        )
    return tiny_app_server


def test_a_smart_app_launched_from_the_chart_reads_the_current_patients_observations(
    tiny_app: str,
    served: str,  # noqa: F811 (the fixture imported above)
    hospital: Hospital,
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
    browser: Any,
) -> None:
    origin = served
    _report, mine = factories.make_lab_report(
        sqlite_runtime, patient_id=hospital.my_patient, facility_id=hospital.facility_id
    )
    factories.link_care(
        sqlite_runtime,
        patient_id=hospital.their_patient,
        practitioner_id=hospital.physician.practitioner_id or uuid.uuid4(),
        facility_id=hospital.facility_id,
    )
    factories.make_lab_report(
        sqlite_runtime, patient_id=hospital.their_patient, facility_id=hospital.facility_id
    )
    page = browser.new_page()
    sign_in(page, origin, hospital.physician)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(origin + "/day")
    page.goto(f"{origin}/patients/{hospital.my_patient}")
    page.get_by_text("Launch an application").click()
    page.get_by_role("button", name="Launch Tiny app").click()
    # The consent page names the app and the patient of the chart.
    page.wait_for_url(re.compile(re.escape(origin) + r"/oauth/authorize\?.*"))
    page.get_by_role("heading", name=re.compile("Let Tiny app act for you")).wait_for()
    assert page.locator("#app-patient").count() == 1
    shot(page, "30-smart-consent")
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(re.compile(re.escape(tiny_app) + r"/callback\?.*"))
    status = page.locator("#status")
    ended = "['done', 'error'].some((w) => document.getElementById('status').textContent.startsWith(w))"
    page.wait_for_function(ended)
    text = status.text_content() or ""
    assert text.startswith("done"), text
    assert f"patient={hospital.my_patient}" in text and "id_token=true" in text
    shown = page.locator("#observations li").all_text_contents()
    assert len(shown) == len(mine) and all(f"Patient/{hospital.my_patient}" in s for s in shown)
    with sqlite_runtime.session_factory() as session:
        reads = session.scalars(
            select(AuditEvent).where(AuditEvent.client_id == "tiny-app", AuditEvent.kind.like("phi:%"))
        ).all()
    assert reads and all(e.account_id == hospital.physician.account_id for e in reads)
