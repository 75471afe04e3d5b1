"""Authorization code + PKCE: a person lets a user-facing app act for them, within scopes."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.app import create_app
from carnet.audit.models import AuditEvent
from carnet.identity import oauth
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput
from carnet.runtime import Runtime
from carnet.settings import Environment
from tests.identity.conftest import login, make_person

REDIRECT = "https://app.example.org/callback"
AUD = "http://localhost:8000/fhir"


def _register_app(
    runtime: Runtime, scopes: str = "user/Patient.rs user/Appointment.read patient/*.read"
) -> None:
    with runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="ward-app",
            name="Ward board",
            jwks=None,
            allowed_scopes=scopes,
            kind="app",
            redirect_uris=REDIRECT,
        )


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _authorize(
    client: TestClient, challenge: str, scope: str = "user/Patient.rs", decision: str = "approve"
) -> dict[str, list[str]]:
    params = {
        "response_type": "code",
        "client_id": "ward-app",
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "state-123456",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "aud": AUD,
    }
    page = client.get("/oauth/authorize", params=params)
    assert page.status_code == 200, page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "Ward board" in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    answer = client.post(
        "/oauth/authorize",
        data={**params, "csrf_token": csrf.group(1), "decision": decision},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return parse_qs(urlsplit(location).query)


def _redeem(client: TestClient, code: str, verifier: str) -> dict[str, object]:
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": "ward-app",
            "code_verifier": verifier,
        },
    )
    body: dict[str, object] = response.json()
    body["_status"] = response.status_code
    return body


def test_a_nurse_authorizes_an_app_which_acts_for_her_within_its_scopes(
    client: TestClient, sqlite_runtime: Runtime
) -> None:
    _register_app(sqlite_runtime)
    nurse = make_person(sqlite_runtime, "nurse.app", roles=(Role.NURSE,))
    login(client, nurse)
    verifier, challenge = _pkce()
    query = _authorize(client, challenge)
    assert query["state"] == ["state-123456"]
    code = query["code"][0]
    # A wrong verifier is refused (PKCE), and the code is then still single use.
    assert _redeem(client, code, secrets.token_urlsafe(48))["error"] == "invalid_grant"
    token = _redeem(client, code, verifier)
    assert token["_status"] == 200 and token["scope"] == "user/Patient.rs" and token["expires_in"] == 300
    client.cookies.clear()
    me = client.get("/auth/me", headers={"Authorization": f"Bearer {token['access_token']}"}).json()
    assert me["username"] == "nurse.app" and me["roles"] == ["nurse"] and me["scopes"] == ["user/Patient.rs"]
    assert me["clientId"] == "ward-app"
    # Redeeming the same code again fails and revokes the token it gave.
    assert _redeem(client, code, verifier)["error"] == "invalid_grant"
    assert (
        client.get("/auth/me", headers={"Authorization": f"Bearer {token['access_token']}"}).status_code
        == 401
    )
    with sqlite_runtime.session_factory() as session:
        kinds = [(e.kind, e.outcome) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert ("client:app:authorized", "success") in kinds
    assert ("client:token:issued", "success") in kinds and ("client:token:issued", "denied") in kinds


def test_declining_sends_access_denied_and_no_code(client: TestClient, sqlite_runtime: Runtime) -> None:
    _register_app(sqlite_runtime)
    login(client, make_person(sqlite_runtime, "decliner"))
    query = _authorize(client, _pkce()[1], decision="deny")
    assert query["error"] == ["access_denied"] and "code" not in query


def test_without_a_session_the_person_is_sent_to_sign_in(client: TestClient, sqlite_runtime: Runtime) -> None:
    _register_app(sqlite_runtime)
    response = client.get(
        "/oauth/authorize",
        params={
            "response_type": "code",
            "client_id": "ward-app",
            "redirect_uri": REDIRECT,
            "scope": "user/Patient.rs",
            "state": "state-123456",
            "code_challenge": _pkce()[1],
            "code_challenge_method": "S256",
            "aud": AUD,
        },
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"].startswith(
        "/login?next=/oauth/authorize%3F"
    )


def test_bad_requests(client: TestClient, sqlite_runtime: Runtime) -> None:
    _register_app(sqlite_runtime)
    login(client, make_person(sqlite_runtime, "checker"))
    base = {
        "response_type": "code",
        "client_id": "ward-app",
        "redirect_uri": REDIRECT,
        "scope": "user/Patient.rs",
        "state": "state-123456",
        "code_challenge": _pkce()[1],
        "code_challenge_method": "S256",
        "aud": AUD,
    }
    # An unregistered redirect URI is never redirected to.
    evil = client.get(
        "/oauth/authorize", params={**base, "redirect_uri": "https://evil.example/cb"}, follow_redirects=False
    )
    assert evil.status_code == 400
    no_pkce = client.get(
        "/oauth/authorize", params={**base, "code_challenge_method": "plain"}, follow_redirects=False
    )
    assert parse_qs(urlsplit(no_pkce.headers["location"]).query)["error"] == ["invalid_request"]
    too_much = client.get(
        "/oauth/authorize", params={**base, "scope": "user/*.write"}, follow_redirects=False
    )
    assert parse_qs(urlsplit(too_much.headers["location"]).query)["error"] == ["invalid_scope"]
    # patient/ scopes need a launch patient: without a launch or launch/patient, refused.
    assert _authorize(client, _pkce()[1], scope="patient/*.read")["error"] == ["invalid_scope"]


def test_the_consent_form_needs_the_session_csrf_token(client: TestClient, sqlite_runtime: Runtime) -> None:
    _register_app(sqlite_runtime)
    login(client, make_person(sqlite_runtime, "victim"))
    del client.headers["X-CSRF-Token"]  # another site's form: the cookie rides along, not the token
    forged = client.post(
        "/oauth/authorize",
        data={
            "response_type": "code",
            "client_id": "ward-app",
            "redirect_uri": REDIRECT,
            "scope": "user/Patient.rs",
            "state": "state-123456",
            "code_challenge": _pkce()[1],
            "code_challenge_method": "S256",
            "aud": AUD,
            "decision": "approve",
            "csrf_token": "guessed",
        },
        follow_redirects=False,
    )
    assert forged.status_code == 403


def test_privileged_accounts_cannot_authorize_apps(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"env": Environment.DEMO})
    _register_app(sqlite_runtime)
    admin = make_person(sqlite_runtime, "admin.app", roles=(Role.SYSTEM_ADMINISTRATOR,))
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as c:
        login(c, admin)
        page = c.get(
            "/oauth/authorize",
            params={
                "response_type": "code",
                "client_id": "ward-app",
                "redirect_uri": REDIRECT,
                "scope": "user/Patient.rs",
                "state": "state-123456",
                "code_challenge": _pkce()[1],
                "code_challenge_method": "S256",
                "aud": AUD,
            },
        )
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None
        refused = c.post(
            "/oauth/authorize",
            data={
                "response_type": "code",
                "client_id": "ward-app",
                "redirect_uri": REDIRECT,
                "scope": "user/Patient.rs",
                "state": "state-123456",
                "code_challenge": _pkce()[1],
                "code_challenge_method": "S256",
                "aud": AUD,
                "decision": "approve",
                "csrf_token": csrf.group(1),
            },
            follow_redirects=False,
        )
        assert refused.status_code == 403


def test_app_registration_rules(sqlite_runtime: Runtime) -> None:
    with pytest.raises(InvalidInput), sqlite_runtime.session_factory.begin() as session:
        oauth.register_client(
            session, client_id="no-redirect", name="x", jwks=None, allowed_scopes="user/*.read", kind="app"
        )
    with pytest.raises(InvalidInput), sqlite_runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="http-app",
            name="x",
            jwks=None,
            allowed_scopes="user/*.read",
            kind="app",
            redirect_uris="http://app.example.org/cb",
        )
    with pytest.raises(InvalidInput), sqlite_runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="system-app",
            name="x",
            jwks=None,
            allowed_scopes="system/*.read",
            kind="app",
            redirect_uris=REDIRECT,
        )


def test_smart_discovery_names_what_the_server_does(client: TestClient) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        answer = client.get(path)
        assert answer.status_code == 200, answer.text
        found = answer.json()
        assert found["token_endpoint"].endswith("/oauth/token")
        assert found["code_challenge_methods_supported"] == ["S256"]
        assert "private_key_jwt" in found["token_endpoint_auth_methods_supported"]
        assert {"launch-ehr", "launch-standalone", "sso-openid-connect"} <= set(found["capabilities"])
        # Not offered, so not declared: no shared client secrets.
        assert "client-confidential-symmetric" not in found["capabilities"]
        assert "client_secret_basic" not in found["token_endpoint_auth_methods_supported"]
