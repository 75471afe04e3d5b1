"""SMART Backend Services: client_credentials with private_key_jwt, scoped short-lived tokens."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey, RSAKey
from sqlalchemy import select

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.app import create_app
from carnet.audit.models import AuditEvent
from carnet.identity import oauth
from carnet.kernel import clock
from carnet.kernel.errors import Forbidden, InvalidInput
from carnet.runtime import Runtime
from carnet.settings import Environment
from tests.identity.conftest import login, make_person

TOKEN_URL = "http://localhost:8000/oauth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _register(
    runtime: Runtime,
    key: Any,
    *,
    client_id: str = "lab-system",
    scopes: str = "system/Patient.read system/Observation.rs",
) -> None:
    with runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id=client_id,
            name="Laboratory",
            jwks={"keys": [key.as_dict(private=False)]},
            allowed_scopes=scopes,
        )


def _token_form(
    key: Any, *, client_id: str = "lab-system", scope: str = "system/Patient.read", alg: str = "ES384"
) -> dict[str, str]:
    assertion = private_key_jwt_sign(key, client_id, TOKEN_URL, alg=alg, expires_in=300)
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion.decode() if isinstance(assertion, bytes) else assertion,
    }


@pytest.fixture
def es_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": "lab-1"})


def test_client_credentials_with_private_key_jwt(
    client: TestClient, sqlite_runtime: Runtime, es_key: ECKey
) -> None:
    _register(sqlite_runtime, es_key)
    form = _token_form(es_key)
    response = client.post("/oauth/token", data=form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (
        body["token_type"] == "Bearer"
        and body["expires_in"] == 300
        and body["scope"] == "system/Patient.read"
    )
    assert response.headers["cache-control"] == "no-store"
    me = client.get("/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}).json()
    assert (
        me["kind"] == "client" and me["clientId"] == "lab-system" and me["scopes"] == ["system/Patient.read"]
    )
    # The same assertion is single use.
    replay = client.post("/oauth/token", data=form)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    with sqlite_runtime.session_factory() as session:
        kinds = [(e.kind, e.outcome) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert kinds == [("client:token:issued", "success"), ("client:token:issued", "denied")]


def test_rs384_keys_work_too(client: TestClient, sqlite_runtime: Runtime) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    _register(sqlite_runtime, key, client_id="billing-export")
    assert (
        client.post(
            "/oauth/token", data=_token_form(key, client_id="billing-export", alg="RS384")
        ).status_code
        == 200
    )


def test_a_wrong_key_an_unknown_client_and_a_secret_jwks_are_refused(
    client: TestClient, sqlite_runtime: Runtime, es_key: ECKey
) -> None:
    _register(sqlite_runtime, es_key)
    other = ECKey.generate_key("P-384", parameters={"kid": "lab-1"})
    assert client.post("/oauth/token", data=_token_form(other)).json()["error"] == "invalid_client"
    assert client.post("/oauth/token", data=_token_form(es_key, client_id="nobody")).status_code == 401
    with pytest.raises(InvalidInput), sqlite_runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="leaky",
            name="x",
            jwks={"keys": [other.as_dict(private=True)]},
            allowed_scopes="system/*.read",
        )


def test_scopes_beyond_the_registration_are_refused(
    client: TestClient, sqlite_runtime: Runtime, es_key: ECKey
) -> None:
    _register(sqlite_runtime, es_key)
    response = client.post(
        "/oauth/token", data=_token_form(es_key, scope="system/Patient.read system/*.write")
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"
    no_scope = client.post("/oauth/token", data=_token_form(es_key, scope=""))
    assert no_scope.json()["error"] == "invalid_scope"
    wrong_grant = dict(_token_form(es_key), grant_type="password")
    assert client.post("/oauth/token", data=wrong_grant).json()["error"] == "unsupported_grant_type"


def test_tokens_expire_after_5_minutes_and_can_be_revoked(
    client: TestClient, sqlite_runtime: Runtime, es_key: ECKey, movable_clock: clock.MovableClock
) -> None:
    _register(sqlite_runtime, es_key)
    token = client.post("/oauth/token", data=_token_form(es_key)).json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    movable_clock.advance(dt.timedelta(minutes=4, seconds=50))
    assert client.get("/auth/me", headers=bearer).status_code == 200
    movable_clock.advance(dt.timedelta(seconds=11))
    assert client.get("/auth/me", headers=bearer).status_code == 401

    second = client.post("/oauth/token", data=_token_form(es_key)).json()["access_token"]
    bearer = {"Authorization": f"Bearer {second}"}
    assert client.post("/oauth/revoke", data={"token": second}, headers=bearer).status_code == 200
    assert client.get("/auth/me", headers=bearer).status_code == 401

    third = client.post("/oauth/token", data=_token_form(es_key)).json()["access_token"]
    system = Actor(kind=ActorKind.SYSTEM, username="system:containment", roles=frozenset())
    with sqlite_runtime.session_factory.begin() as session:
        assert (
            oauth.revoke_client_tokens(
                session, client_id="lab-system", reason="contained", actor=system, audit=sqlite_runtime.audit
            )
            == 1
        )
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {third}"}).status_code == 401


def test_a_token_has_no_security_history_or_sessions(
    client: TestClient, sqlite_runtime: Runtime, es_key: ECKey
) -> None:
    _register(sqlite_runtime, es_key)
    token = client.post("/oauth/token", data=_token_form(es_key)).json()["access_token"]
    assert (
        client.get("/auth/security-history", headers={"Authorization": f"Bearer {token}"}).status_code == 403
    )


def _actor(scopes: str | None) -> Actor:
    return Actor(
        kind=ActorKind.CLIENT,
        username="c",
        roles=frozenset({Role.API_CLIENT}),
        scopes=frozenset(scopes.split()) if scopes is not None else None,
    )


@pytest.mark.parametrize(
    ("scopes", "resource", "action", "allowed"),
    [
        ("system/Patient.read", "Patient", "read", True),
        ("system/Patient.read", "Patient", "search", True),
        ("system/Patient.read", "Patient", "update", False),
        ("system/Patient.read", "Observation", "read", False),
        ("system/*.read", "Observation", "search", True),
        ("system/Observation.rs", "Observation", "search", True),
        ("system/Observation.rs", "Observation", "create", False),
        ("system/Appointment.cu", "Appointment", "update", True),
        ("system/*.*", "Encounter", "delete", True),
        ("system/Patient.write", "Patient", "read", False),
    ],
)
def test_require_scope(scopes: str, resource: str, action: str, allowed: bool) -> None:
    if allowed:
        oauth.require_scope(_actor(scopes), resource_type=resource, action=action)
    else:
        with pytest.raises(Forbidden):
            oauth.require_scope(_actor(scopes), resource_type=resource, action=action)


def test_browser_sessions_are_decided_by_roles_not_scopes() -> None:
    oauth.require_scope(_actor(None), resource_type="Patient", action="read")


def test_only_a_system_administrator_registers_clients(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock, es_key: ECKey
) -> None:
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"env": Environment.DEMO})
    physician = make_person(sqlite_runtime, "doc")
    admin = make_person(sqlite_runtime, "root", roles=(Role.SYSTEM_ADMINISTRATOR,))
    body = {
        "clientId": "lab-system",
        "name": "Lab",
        "jwks": {"keys": [es_key.as_dict(private=False)]},
        "scope": "system/Patient.read",
    }
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as c:
        login(c, physician)
        assert c.post("/oauth/clients", json=body).status_code == 403
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as c:
        login(c, admin)
        # A session alone registers nothing: a fresh proof first (a code, in a demo; one per action).
        assert c.post("/oauth/clients", json=body).status_code == 401
        movable_clock.advance(dt.timedelta(seconds=31))  # the login's code is used: the next one
        proof = c.post("/auth/step-up/proof", json={"otp": admin.code()})
        assert proof.status_code == 200, proof.text
        created = c.post("/oauth/clients", json=body)
        assert created.status_code == 201, created.text
        assert c.post("/oauth/clients", json=body | {"clientId": "lab-two"}).status_code == 401
        assert created.json()["tokenUrl"] == TOKEN_URL
    with sqlite_runtime.session_factory() as session:
        registered = session.scalars(
            select(AuditEvent).where(AuditEvent.kind == "client:client:registered")
        ).one()
        assert registered.username == "root"
