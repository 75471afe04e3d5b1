from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from carnet.access.roles import PRIVILEGED_ROLES, Role
from carnet.app import create_app
from carnet.identity.models import WebAuthnCredential
from carnet.kernel import clock
from carnet.runtime import Runtime
from carnet.settings import Environment
from tests.identity.conftest import login, make_person


@pytest.mark.parametrize("role", sorted(PRIVILEGED_ROLES))
def test_privileged_roles_cannot_finish_login_with_totp(
    client: TestClient, sqlite_runtime: Runtime, role: Role
) -> None:
    admin = make_person(sqlite_runtime, f"priv-{role.value}", roles=(role,))
    data = login(client, admin)
    # Before any passkey exists, TOTP only opens a session that can enrol one.
    assert data["enrollmentOnly"] is True
    assert client.get("/auth/me").status_code == 200
    refused = client.get("/auth/sessions")
    assert refused.status_code == 401
    assert "passkey" in refused.json()["issue"][0]["diagnostics"]
    assert client.get("/auth/security-history").status_code == 401


def test_once_a_passkey_exists_totp_is_refused(client: TestClient, sqlite_runtime: Runtime) -> None:
    officer = make_person(sqlite_runtime, "officer", roles=(Role.SECURITY_OFFICER,))
    with sqlite_runtime.session_factory.begin() as session:
        session.add(
            WebAuthnCredential(
                account_id=officer.account_id,
                credential_id="AAAA",
                public_key=b"k",
                sign_count=0,
                label="key",
                created_at=clock.now(),
            )
        )
    response = client.post(
        "/auth/login", json={"username": "officer", "password": officer.password, "otp": officer.code()}
    )
    assert response.status_code == 401
    assert "passkey" in response.json()["issue"][0]["diagnostics"]
    assert "carnet_session" not in client.cookies


def test_demo_mode_lets_seeded_privileged_accounts_use_totp(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"env": Environment.DEMO})
    admin = make_person(sqlite_runtime, "demo.admin", roles=(Role.SYSTEM_ADMINISTRATOR,))
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as c:
        assert login(c, admin)["enrollmentOnly"] is False
        assert c.get("/auth/sessions").status_code == 200


def test_production_never_lets_privileged_accounts_use_totp(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"env": Environment.PRODUCTION})
    admin = make_person(sqlite_runtime, "prod.admin", roles=(Role.SYSTEM_ADMINISTRATOR,))
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as c:
        assert login(c, admin)["enrollmentOnly"] is True
        assert c.get("/auth/sessions").status_code == 401
