"""SMART App Launch: EHR launch from the chart and standalone launch, PKCE, the launch patient
as a compartment, granular categories, openid fhirUser and rotating refresh tokens."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import select

from carnet.access.models import RoleGrant
from carnet.access.roles import Role
from carnet.app import create_app
from carnet.audit.models import AuditEvent
from carnet.identity import oauth, service, totp
from carnet.kernel import clock
from carnet.phi.system import system_access
from carnet.records.models import Observation
from carnet.runtime import Runtime
from tests.factories import link_care, make_facility, make_lab_report, make_practitioner, register_patient
from tests.identity.conftest import PASSWORD, Person, login

ORIGIN = "http://localhost:8000"
AUD = ORIGIN + "/fhir"
REDIRECT = "http://localhost:9999/app/callback"
LAUNCH_URI = "http://localhost:9999/app/launch"
APP_SCOPES = (
    "launch launch/patient openid fhirUser offline_access online_access "
    "patient/*.rs patient/Observation.rs patient/Condition.rs user/Patient.rs"
)


@dataclass
class World:
    facility: uuid.UUID
    doctor: Person
    practitioner: uuid.UUID
    mine: str  # a patient in the doctor's care
    other: str  # another patient in the doctor's care (not the launch patient)
    stranger: str  # a patient the doctor has no reason to see
    lab: list[uuid.UUID]
    vital: uuid.UUID
    other_lab: list[uuid.UUID]


def _staff(
    runtime: Runtime, username: str, facility: uuid.UUID, role: Role, practitioner: uuid.UUID | None
) -> Person:
    secret = totp.new_secret()
    with runtime.session_factory.begin() as session:
        account_id = service.create_account(
            session,
            username=username,
            display_name=username.title(),
            kind="staff",
            password=PASSWORD,
            totp_secret=secret,
            practitioner_id=practitioner,
        )
        session.add(
            RoleGrant(
                account_id=account_id,
                role=role.value,
                facility_id=facility,
                status="active",
                requested_at=clock.now(),
                decided_at=clock.now(),
            )
        )
    return Person(account_id=account_id, username=username, password=PASSWORD, totp_secret=secret)


def _vital_sign(runtime: Runtime, patient_id: str, facility: uuid.UUID) -> uuid.UUID:
    now = clock.now()
    with system_access(runtime, reason="test fixture: vital sign") as door:
        row = Observation(
            facility_id=facility,
            patient_id=uuid.UUID(patient_id),
            category="vital-signs",
            code="8867-4",
            display="Heart rate",
            value_number=72.0,
            unit="/min",
            effective_at=now,
            status="final",
            version_id=1,
            created_at=now,
            updated_at=now,
        )
        door.session.add(row)
        door.session.flush()
        return row.id


@pytest.fixture
def world(sqlite_runtime: Runtime, movable_clock: clock.MovableClock) -> World:
    movable_clock.set(dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC))  # a weekday morning
    facility = make_facility(sqlite_runtime)
    practitioner = make_practitioner(sqlite_runtime, facility, "physician")
    doctor = _staff(sqlite_runtime, "dr.smart", facility, Role.PHYSICIAN, practitioner)
    mine = register_patient(sqlite_runtime, facility, family="Lefebvre", given="Anne")
    other = register_patient(sqlite_runtime, facility, family="Lefort", given="Paul")
    stranger = register_patient(sqlite_runtime, facility, family="Lemaire", given="Zoé")
    for p in (mine, other):
        link_care(sqlite_runtime, patient_id=p.id, practitioner_id=practitioner, facility_id=facility)
    _report, lab = make_lab_report(sqlite_runtime, patient_id=mine.id, facility_id=facility)
    _report2, other_lab = make_lab_report(sqlite_runtime, patient_id=other.id, facility_id=facility)
    vital = _vital_sign(sqlite_runtime, mine.id, facility)
    with sqlite_runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="chart-app",
            name="Chart app",
            jwks=None,
            allowed_scopes=APP_SCOPES,
            kind="app",
            redirect_uris=REDIRECT,
            launch_uri=LAUNCH_URI,
        )
    return World(facility, doctor, practitioner, mine.id, other.id, stranger.id, lab, vital, other_lab)


@pytest.fixture
def web(sqlite_runtime: Runtime, world: World) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_runtime), base_url=ORIGIN) as c:
        yield c


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _launch(web: TestClient, patient_id: str, client_id: str = "chart-app") -> str:
    answer = web.post(f"/patients/{patient_id}/apps/{client_id}/launch", follow_redirects=False)
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith(LAUNCH_URI + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["iss"] == [AUD]
    return str(query["launch"][0])


def _params(challenge: str, scope: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "chart-app",
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "state-abcdefgh",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "aud": AUD,
        **extra,
    }


def _approve(web: TestClient, params: dict[str, str], **form: str) -> dict[str, list[str]]:
    page = web.get("/oauth/authorize", params=params, follow_redirects=False)
    if page.status_code == 303:
        return parse_qs(urlsplit(page.headers["location"]).query)
    assert page.status_code == 200, page.text
    assert page.headers["x-frame-options"] == "DENY"
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    answer = web.post(
        "/oauth/authorize",
        data={**params, "csrf_token": csrf.group(1), "decision": "approve", **form},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"].startswith(REDIRECT + "?")
    return parse_qs(urlsplit(answer.headers["location"]).query)


def _token(web: TestClient, **form: str) -> tuple[int, dict[str, Any]]:
    data = {"grant_type": "authorization_code", "redirect_uri": REDIRECT, "client_id": "chart-app", **form}
    answer = web.post("/oauth/token", data=data, headers={"X-CSRF-Token": ""})
    return answer.status_code, answer.json()


def _ehr_launch(web: TestClient, world: World, scope: str, **extra: str) -> dict[str, Any]:
    login(web, world.doctor)
    launch = _launch(web, world.mine)
    verifier, challenge = _pkce()
    query = _approve(web, _params(challenge, scope, launch=launch, **extra))
    assert "code" in query, query
    status, body = _token(web, code=query["code"][0], code_verifier=verifier)
    assert status == 200, body
    return body


def _bearer(web: TestClient, token: str, path: str, **params: str) -> Any:
    web.cookies.clear()
    return web.get(path, params=params, headers={"Authorization": f"Bearer {token}"})


def test_ehr_launch_gives_a_token_confined_to_the_chart_patient(
    web: TestClient, world: World, sqlite_runtime: Runtime
) -> None:
    body = _ehr_launch(web, world, "launch openid fhirUser patient/*.rs offline_access", nonce="n-0123456789")
    assert body["patient"] == world.mine
    assert body["scope"] == "launch openid fhirUser patient/*.rs offline_access"
    assert body["refresh_token"] and body["expires_in"] == 300
    # The id_token: RS256 under the published key, fhirUser the doctor's Practitioner.
    keys = KeySet.import_key_set(web.get("/oauth/jwks").json())
    claims = jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["fhirUser"] == f"{AUD}/Practitioner/{world.practitioner}"
    assert claims["aud"] == "chart-app" and claims["iss"] == ORIGIN and claims["nonce"] == "n-0123456789"
    assert claims["sub"] == str(world.doctor.account_id)
    token = body["access_token"]
    found = _bearer(web, token, "/fhir/Observation", patient=world.mine)
    assert found.status_code == 200, found.text
    ids = {e["resource"]["id"] for e in found.json().get("entry", [])}
    assert {str(i) for i in world.lab} | {str(world.vital)} <= ids
    # Another patient the doctor may see in the web UI: not through this token.
    other = _bearer(web, token, "/fhir/Observation", patient=world.other)
    assert other.status_code in (403, 404) or not other.json().get("entry")
    assert _bearer(web, token, f"/fhir/Observation/{world.other_lab[0]}").status_code == 404
    assert _bearer(web, token, f"/fhir/Patient/{world.other}").status_code == 404
    assert _bearer(web, token, f"/fhir/Patient/{world.mine}").status_code == 200
    # Audited as the doctor, through the app; the refusals too.
    with sqlite_runtime.session_factory() as session:
        events = list(session.scalars(select(AuditEvent).where(AuditEvent.kind.like("phi:%"))))
    through_app = [e for e in events if e.client_id == "chart-app"]
    assert through_app and all(e.account_id == world.doctor.account_id for e in through_app)
    assert any(e.outcome == "denied" for e in through_app)
    assert any(e.outcome == "success" for e in through_app)
    with sqlite_runtime.session_factory() as session:
        launched = session.scalars(select(AuditEvent).where(AuditEvent.kind == "client:app:launched")).all()
    assert len(launched) == 1 and launched[0].account_id == world.doctor.account_id


def test_a_launch_is_single_use_expires_and_belongs_to_its_person(
    web: TestClient, world: World, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    login(web, world.doctor)
    launch = _launch(web, world.mine)
    _verifier, challenge = _pkce()
    first = _approve(web, _params(challenge, "launch patient/*.rs", launch=launch))
    assert "code" in first
    again = _approve(web, _params(challenge, "launch patient/*.rs", launch=launch))
    assert again["error"] == ["invalid_request"] and "code" not in again
    # Expired after 5 minutes.
    late = _launch(web, world.mine)
    movable_clock.advance(dt.timedelta(minutes=6))
    login(web, world.doctor)
    assert _approve(web, _params(challenge, "launch patient/*.rs", launch=late))["error"] == [
        "invalid_request"
    ]
    # Another person's session cannot use it.
    theirs = _launch(web, world.mine)
    colleague_practitioner = make_practitioner(sqlite_runtime, world.facility, "physician")
    colleague = _staff(sqlite_runtime, "dr.colleague", world.facility, Role.PHYSICIAN, colleague_practitioner)
    link_care(
        sqlite_runtime,
        patient_id=world.mine,
        practitioner_id=colleague_practitioner,
        facility_id=world.facility,
    )
    web.cookies.clear()
    login(web, colleague)
    assert _approve(web, _params(challenge, "launch patient/*.rs", launch=theirs))["error"] == [
        "invalid_request"
    ]


def test_the_code_is_bound_to_client_redirect_and_verifier(web: TestClient, world: World) -> None:
    login(web, world.doctor)
    launch = _launch(web, world.mine)
    verifier, challenge = _pkce()
    code = _approve(web, _params(challenge, "launch patient/*.rs", launch=launch))["code"][0]
    status, body = _token(web, code=code, code_verifier=verifier, client_id="someone-else")
    assert status == 401 and body["error"] == "invalid_client"
    status, body = _token(web, code=code, code_verifier=verifier, redirect_uri="http://localhost:9999/evil")
    assert status == 400 and body["error"] == "invalid_grant"
    status, body = _token(web, code=code, code_verifier=secrets.token_urlsafe(48))
    assert status == 400 and body["error"] == "invalid_grant"
    status, body = _token(web, code=code, code_verifier=verifier)
    assert status == 200 and body["patient"] == world.mine
    # Used once: a second exchange fails and revokes what the first gave.
    assert _token(web, code=code, code_verifier=verifier)[1]["error"] == "invalid_grant"
    assert _bearer(web, body["access_token"], f"/fhir/Patient/{world.mine}").status_code == 401


def test_pkce_s256_and_aud_are_required(web: TestClient, world: World) -> None:
    login(web, world.doctor)
    _verifier, challenge = _pkce()
    plain = _approve(web, _params(challenge, "user/Patient.rs", code_challenge_method="plain"))
    assert plain["error"] == ["invalid_request"]
    wrong_aud = _approve(web, _params(challenge, "user/Patient.rs", aud="https://elsewhere.example/fhir"))
    assert wrong_aud["error"] == ["invalid_request"]
    # An unregistered redirect URI is answered here, never redirected to.
    evil = web.get(
        "/oauth/authorize",
        params=_params(challenge, "user/Patient.rs", redirect_uri="https://evil.example/cb"),
    )
    assert evil.status_code == 400


def test_a_granular_token_sees_only_its_category(web: TestClient, world: World) -> None:
    body = _ehr_launch(web, world, "launch patient/Observation.rs?category=laboratory")
    token = body["access_token"]
    found = _bearer(web, token, "/fhir/Observation", patient=world.mine)
    assert found.status_code == 200, found.text
    entries = [e["resource"] for e in found.json().get("entry", [])]
    assert entries and all(r["category"][0]["coding"][0]["code"] == "laboratory" for r in entries)
    assert str(world.vital) not in {r["id"] for r in entries}
    asked = _bearer(web, token, "/fhir/Observation", patient=world.mine, category="vital-signs")
    assert not asked.json().get("entry")
    assert _bearer(web, token, f"/fhir/Observation/{world.vital}").status_code == 404
    assert _bearer(web, token, f"/fhir/Observation/{world.lab[0]}").status_code == 200
    assert _bearer(web, token, f"/fhir/Observation/{world.vital}/_history").status_code == 404
    # Not a Condition scope at all.
    assert _bearer(web, token, "/fhir/Condition", patient=world.mine).status_code in (403, 404)


def test_standalone_launch_picks_among_the_persons_own_patients(
    web: TestClient, world: World, sqlite_runtime: Runtime
) -> None:
    login(web, world.doctor)
    verifier, challenge = _pkce()
    params = _params(challenge, "launch/patient openid fhirUser patient/*.rs")
    picker = web.get("/oauth/authorize", params={**params, "family": "Lef"})
    assert picker.status_code == 200, picker.text
    assert world.mine in picker.text and world.other in picker.text
    assert world.stranger not in picker.text  # no relationship: not offered
    nobody = web.get("/oauth/authorize", params={**params, "family": "Lemaire"})
    assert world.stranger not in nobody.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', picker.text)
    assert csrf is not None
    # A patient outside the person's care, posted by hand: refused, no code.
    forced = web.post(
        "/oauth/authorize",
        data={**params, "csrf_token": csrf.group(1), "decision": "approve", "patient": world.stranger},
        follow_redirects=False,
    )
    assert forced.status_code == 404 and "code=" not in forced.headers.get("location", "")
    chosen = web.post(
        "/oauth/authorize",
        data={**params, "csrf_token": csrf.group(1), "decision": "approve", "patient": world.other},
        follow_redirects=False,
    )
    assert chosen.status_code == 303, chosen.text
    code = parse_qs(urlsplit(chosen.headers["location"]).query)["code"][0]
    status, body = _token(web, code=code, code_verifier=verifier)
    assert status == 200 and body["patient"] == world.other
    assert _bearer(web, body["access_token"], f"/fhir/Patient/{world.mine}").status_code == 404
    assert _bearer(web, body["access_token"], f"/fhir/Patient/{world.other}").status_code == 200


def test_patient_scopes_without_a_launch_patient_are_refused(web: TestClient, world: World) -> None:
    login(web, world.doctor)
    _verifier, challenge = _pkce()
    assert _approve(web, _params(challenge, "patient/*.rs"))["error"] == ["invalid_scope"]


def test_refresh_tokens_rotate_and_a_replay_revokes_the_family(web: TestClient, world: World) -> None:
    body = _ehr_launch(web, world, "launch patient/*.rs offline_access")
    first = body["refresh_token"]
    answer = web.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": first, "client_id": "chart-app"}
    )
    assert answer.status_code == 200, answer.text
    second = answer.json()
    assert second["patient"] == world.mine and second["refresh_token"] != first
    assert _bearer(web, second["access_token"], f"/fhir/Patient/{world.mine}").status_code == 200
    # The first refresh token again: it leaked; everything of this grant ends.
    replay = web.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": first, "client_id": "chart-app"}
    )
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert _bearer(web, second["access_token"], f"/fhir/Patient/{world.mine}").status_code == 401
    dead = web.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": second["refresh_token"],
            "client_id": "chart-app",
        },
    )
    assert dead.status_code == 400


def test_no_refresh_token_without_offline_or_online_access(web: TestClient, world: World) -> None:
    body = _ehr_launch(web, world, "launch patient/*.rs")
    assert "refresh_token" not in body and "id_token" not in body


def test_a_confidential_app_proves_its_key(web: TestClient, world: World, sqlite_runtime: Runtime) -> None:
    key = ECKey.generate_key("P-384", private=True)
    public = {"keys": [{**key.as_dict(private=False), "kid": "k1"}]}
    with sqlite_runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="conf-app",
            name="Confidential app",
            jwks=public,
            allowed_scopes="user/Patient.rs",
            kind="app",
            redirect_uris=REDIRECT,
        )
    login(web, world.doctor)
    verifier, challenge = _pkce()
    params = {**_params(challenge, "user/Patient.rs"), "client_id": "conf-app"}
    code = _approve(web, params)["code"][0]
    base = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    bare = web.post("/oauth/token", data={**base, "client_id": "conf-app"})
    assert bare.status_code == 401 and bare.json()["error"] == "invalid_client"
    now = int(time.time())
    assertion = jwt.encode(
        {"alg": "ES384", "kid": "k1"},
        {
            "iss": "conf-app",
            "sub": "conf-app",
            "aud": ORIGIN + "/oauth/token",
            "exp": now + 120,
            "jti": secrets.token_hex(16),
        },
        key,
        algorithms=["ES384"],
    )
    proven = web.post(
        "/oauth/token",
        data={
            **base,
            "client_id": "conf-app",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )
    assert proven.status_code == 200, proven.text


def test_launching_from_a_chart_needs_a_person_who_may_open_it(
    web: TestClient, world: World, sqlite_runtime: Runtime
) -> None:
    login(web, world.doctor)
    refused = web.post(f"/patients/{world.stranger}/apps/chart-app/launch", follow_redirects=False)
    assert refused.status_code == 404
    unknown = web.post(f"/patients/{world.mine}/apps/nope-app/launch", follow_redirects=False)
    assert unknown.status_code == 400
    with sqlite_runtime.session_factory() as session:
        denied = session.scalars(
            select(AuditEvent).where(
                AuditEvent.outcome == "denied", AuditEvent.account_id == world.doctor.account_id
            )
        ).all()
    assert denied  # the refused chart read is audited
    # The chart offers the app to launch.
    chart = web.get(f"/patients/{world.mine}")
    assert 'data-app="chart-app"' in chart.text


def test_a_session_alone_cannot_register_an_app(
    web: TestClient, world: World, sqlite_runtime: Runtime
) -> None:
    login(web, world.doctor)
    answer = web.post(
        "/oauth/clients",
        json={
            "clientId": "sneaky-app",
            "name": "Sneaky",
            "scope": "user/*.rs",
            "kind": "app",
            "redirectUris": "https://evil.example/cb",
        },
    )
    assert answer.status_code == 403
    with sqlite_runtime.session_factory() as session:
        from carnet.identity.models import ApiClient

        assert session.scalar(select(ApiClient).where(ApiClient.client_id == "sneaky-app")) is None


def test_discovery_lists_what_is_supported(web: TestClient) -> None:
    found = web.get("/fhir/.well-known/smart-configuration").json()
    assert set(found["capabilities"]) >= {
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-asymmetric",
        "context-ehr-patient",
        "context-standalone-patient",
        "permission-v1",
        "permission-v2",
        "permission-patient",
        "permission-user",
        "sso-openid-connect",
    }
    assert "client-confidential-symmetric" not in found["capabilities"]
    assert found["code_challenge_methods_supported"] == ["S256"]
    assert web.get("/oauth/jwks").json()["keys"][0]["alg"] == "RS256"


def test_cors_answers_registered_app_origins_only(web: TestClient, world: World) -> None:
    app_origin = "http://localhost:9999"
    preflight = web.options(
        "/fhir/Observation",
        headers={
            "Origin": app_origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == app_origin
    assert "access-control-allow-credentials" not in preflight.headers
    assert "x-csrf-token" not in preflight.headers["access-control-allow-headers"].lower()
    token = web.post("/oauth/token", data={"grant_type": "nope"}, headers={"Origin": app_origin})
    assert token.headers["access-control-allow-origin"] == app_origin
    # Another site, or sign-in and the web pages: no CORS at all.
    evil = web.options(
        "/fhir/Observation",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in evil.headers
    login_page = web.post("/auth/login", json={}, headers={"Origin": app_origin})
    assert "access-control-allow-origin" not in login_page.headers
    chart = web.get(f"/patients/{world.mine}", headers={"Origin": app_origin})
    assert "access-control-allow-origin" not in chart.headers


def test_a_granular_condition_scope(
    web: TestClient, world: World, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    from carnet.access.actor import Actor, ActorKind
    from carnet.phi.gate import Gate
    from carnet.phi.schemas import ConditionInput

    doctor = Actor(
        kind=ActorKind.STAFF,
        username=world.doctor.username,
        roles=frozenset({Role.PHYSICIAN}),
        account_id=world.doctor.account_id,
        facility_id=world.facility,
        practitioner_id=world.practitioner,
        second_factor_at=clock.now(),
    )
    problem = Gate(sqlite_runtime, doctor).record_condition(
        data=ConditionInput(
            patient_id=world.mine, code="I10", display="Hypertension", clinical_status="active"
        )
    )
    listed = _ehr_launch(web, world, "launch patient/Condition.rs?category=problem-list-item")["access_token"]
    found = _bearer(web, listed, "/fhir/Condition", patient=world.mine).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [problem.id]
    web.cookies.clear()
    movable_clock.advance(dt.timedelta(seconds=31))  # a TOTP code signs in once
    other = _ehr_launch(web, world, "launch patient/Condition.rs?category=encounter-diagnosis")[
        "access_token"
    ]
    assert not _bearer(web, other, "/fhir/Condition", patient=world.mine).json().get("entry")
    assert _bearer(web, other, f"/fhir/Condition/{problem.id}").status_code == 404


def test_the_consent_page_speaks_french(web: TestClient, world: World) -> None:
    login(web, world.doctor)
    launch = _launch(web, world.mine)
    _verifier, challenge = _pkce()
    page = web.get(
        "/oauth/authorize",
        params=_params(challenge, "launch patient/Observation.rs offline_access", launch=launch),
        headers={"Accept-Language": "fr-FR"},
    )
    assert page.status_code == 200
    assert "Laisser Chart app agir en votre nom" in page.text and "Autoriser" in page.text
    assert "de ce patient seulement" in page.text and "Lefebvre" in page.text
    # Its form may send the browser to the app's origin, and nowhere else.
    assert "form-action 'self' http://localhost:9999;" in page.headers["content-security-policy"]
