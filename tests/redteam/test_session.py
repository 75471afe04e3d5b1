"""`carnet redteam session`: a live session of a seeded account, in demo/test mode only."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from carnet.access.roles import Role
from carnet.app import create_app
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.cli import app
from carnet.identity.models import Account, AuthSession
from carnet.runtime import Runtime
from carnet.settings import reset_settings_cache
from tests import factories as f


def _env(monkeypatch: pytest.MonkeyPatch, runtime: Runtime, env: str | None) -> None:
    if env is None:
        monkeypatch.delenv("CARNET_ENV", raising=False)
    else:
        monkeypatch.setenv("CARNET_ENV", env)
    monkeypatch.setenv("CARNET_DATABASE_URL", runtime.settings.resolved_database_url)
    monkeypatch.setenv("CARNET_VAR_DIR", str(runtime.settings.var_dir))
    reset_settings_cache()


def _username(runtime: Runtime, account_id: object) -> str:
    with runtime.session_factory() as session:
        return str(session.scalar(sa.select(Account.username).where(Account.id == account_id)))


def test_the_printed_headers_carry_a_live_session(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    facility = f.make_facility(sqlite_runtime)
    doctor = f.make_physician(sqlite_runtime, facility)
    username = _username(sqlite_runtime, doctor.account_id)
    _env(monkeypatch, sqlite_runtime, "test")
    try:
        result = CliRunner().invoke(app, ["redteam", "session", "--username", username])
    finally:
        reset_settings_cache()
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["roles"] == ["physician"] and set(printed["headers"]) == {"Cookie", "X-CSRF-Token"}
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as client:
        me = client.get("/auth/me", headers=printed["headers"])
    assert me.status_code == 200, me.text
    assert me.json()["username"] == username
    with sqlite_runtime.session_factory() as session:
        minted = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.kind == AuditKind.REDTEAM_SESSION.value)
        ).all()
    assert [e.username for e in minted] == [username]


@pytest.mark.parametrize("env", [None, "production"])
def test_production_refuses(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch, env: str | None
) -> None:
    facility = f.make_facility(sqlite_runtime)
    admin = f.make_account(sqlite_runtime, roles=[Role.SYSTEM_ADMINISTRATOR], facility_id=facility)
    _env(monkeypatch, sqlite_runtime, env)
    try:
        result = CliRunner().invoke(
            app, ["redteam", "session", "--username", _username(sqlite_runtime, admin.account_id)]
        )
    finally:
        reset_settings_cache()
    assert result.exit_code == 2
    assert "only when CARNET_ENV is demo or test" in result.output and "Cookie" not in result.output
    with sqlite_runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AuthSession)) == 0


def test_unknown_or_suspended_accounts_are_refused(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    facility = f.make_facility(sqlite_runtime)
    suspended = f.make_account(sqlite_runtime, roles=[Role.NURSE], facility_id=facility, status="suspended")
    _env(monkeypatch, sqlite_runtime, "demo")
    runner = CliRunner()
    try:
        unknown = runner.invoke(app, ["redteam", "session", "--username", "nobody"])
        refused = runner.invoke(
            app, ["redteam", "session", "--username", _username(sqlite_runtime, suspended.account_id)]
        )
    finally:
        reset_settings_cache()
    assert unknown.exit_code == 2 and "no staff account" in unknown.output
    assert refused.exit_code == 2 and "suspended" in refused.output
