"""The SMART Python client (`fhirclient`, a library nobody here wrote) drives a standalone
launch: it discovers the endpoints in the CapabilityStatement, sends PKCE S256 and
launch/patient, the person picks one of their own patients, and the client reads that
patient's Observations with its patient-scoped token, and nobody else's."""

from __future__ import annotations

import datetime as dt
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import uvicorn
from fhirclient import client as smart_client
from fhirclient.models.observation import Observation

from carnet.access.roles import Role
from carnet.app import create_app
from carnet.identity import oauth
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests import factories
from tests.identity.conftest import Person
from tests.identity.test_smart_launch import _staff

REDIRECT = "http://localhost:9998/py-app/callback"


@pytest.fixture
def live(sqlite_runtime: Runtime, movable_clock: clock.MovableClock) -> Iterator[str]:
    movable_clock.set(dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    origin = f"http://localhost:{port}"  # plain-http cookies only for localhost
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
    yield origin
    server.should_exit = True
    thread.join(timeout=10)


def _sign_in(origin: str, person: Person) -> requests.Session:
    browser = requests.Session()
    answer = browser.post(
        origin + "/auth/login",
        json={"username": person.username, "password": person.password, "otp": person.code()},
    )
    assert answer.status_code == 200, answer.text
    return browser


def test_fhirclient_standalone_launch_reads_the_chosen_patients_observations(
    live: str, sqlite_runtime: Runtime
) -> None:
    facility = factories.make_facility(sqlite_runtime)
    practitioner = factories.make_practitioner(sqlite_runtime, facility, "physician")
    doctor = _staff(sqlite_runtime, "dr.python", facility, Role.PHYSICIAN, practitioner)
    chosen = factories.register_patient(sqlite_runtime, facility, family="Garnier", given="Lou")
    other = factories.register_patient(sqlite_runtime, facility, family="Garnier", given="Max")
    for patient in (chosen, other):
        factories.link_care(
            sqlite_runtime, patient_id=patient.id, practitioner_id=practitioner, facility_id=facility
        )
    _r, lab = factories.make_lab_report(sqlite_runtime, patient_id=chosen.id, facility_id=facility)
    factories.make_lab_report(sqlite_runtime, patient_id=other.id, facility_id=facility)
    with sqlite_runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="py-app",
            name="Python app",
            jwks=None,
            allowed_scopes="launch/patient openid fhirUser patient/*.read",
            kind="app",
            redirect_uris=REDIRECT,
        )

    smart = smart_client.FHIRClient(
        settings={
            "app_id": "py-app",
            "api_base": live + "/fhir",
            "redirect_uri": REDIRECT,
            "scope": "openid fhirUser patient/*.read",  # the client adds launch/patient itself
        }
    )
    authorize = smart.authorize_url
    assert authorize.startswith(live + "/oauth/authorize?")
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and "launch/patient" in query["scope"][0]

    # The person signs in and picks the patient among their own (a name search).
    browser = _sign_in(live, doctor)
    picker = browser.get(authorize + "&family=Garnier")
    assert picker.status_code == 200, picker.text
    assert chosen.id in picker.text and other.id in picker.text, re.sub(r"\s+", " ", picker.text)[-2500:]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', picker.text)
    assert csrf is not None
    form = {k: v[0] for k, v in query.items()}
    approved = browser.post(
        live + "/oauth/authorize",
        data={**form, "csrf_token": csrf.group(1), "decision": "approve", "patient": chosen.id},
        allow_redirects=False,
    )
    assert approved.status_code == 303, approved.text
    callback = approved.headers["location"]
    assert callback.startswith(REDIRECT + "?")

    smart.handle_callback(callback)
    assert smart.ready and smart.patient_id == chosen.id
    assert smart.patient is not None and smart.patient.id == chosen.id
    found = Observation.where({"patient": chosen.id}).perform_resources(smart.server)
    assert {o.id for o in found} == {str(i) for i in lab}
    assert all(o.subject.reference == f"Patient/{chosen.id}" for o in found)
    # The other patient of the same doctor is not within this token.
    with pytest.raises(Exception):
        Observation.where({"patient": other.id}).perform_resources(smart.server)
    assert uuid.UUID(smart.patient_id)
