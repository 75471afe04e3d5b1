"""`carnet clients ...` and `carnet sessions revoke`: audited, and bad input exits 2 cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey
from sqlalchemy import select
from typer.testing import CliRunner

from carnet.audit.models import AuditEvent
from carnet.cli import app
from carnet.identity.models import ApiClient
from carnet.org.models import Facility
from carnet.runtime import Runtime
from carnet.settings import reset_settings_cache
from tests.factories import make_facility
from tests.identity.conftest import login, make_person


def run_cli(runtime: Runtime, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("CARNET_ENV", "test")
    monkeypatch.setenv("CARNET_VAR_DIR", str(runtime.settings.var_dir))
    monkeypatch.setenv("CARNET_DATABASE_URL", runtime.settings.resolved_database_url)
    monkeypatch.setenv("CARNET_ORIGIN", runtime.settings.origin)
    reset_settings_cache()
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        reset_settings_cache()
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_register_list_and_revoke(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = ECKey.generate_key("P-384", parameters={"kid": "k"})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    facility = make_facility(sqlite_runtime)
    code, out = run_cli(
        sqlite_runtime, monkeypatch, "clients", "register", "--client-id", "lab-system", "--name", "Lab",
        "--scope", "system/Observation.rs", "--jwks", str(jwks), "--reason", "results feed from the lab",
        "--facility", str(facility),
    )  # fmt: skip
    assert code == 0, out
    assert "http://localhost:8000/oauth/token" in out
    code, out = run_cli(sqlite_runtime, monkeypatch, "clients", "list")
    assert code == 0 and "lab-system" in out and "system/Observation.rs" in out
    code, out = run_cli(
        sqlite_runtime, monkeypatch, "clients", "revoke-tokens", "lab-system", "--reason", "key leaked"
    )
    assert code == 0 and "0 token(s)" in out
    with sqlite_runtime.session_factory() as session:
        kinds = [(e.kind, e.username) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert kinds == [("client:client:registered", "system:cli"), ("client:token:revoked", "system:cli")]
    with sqlite_runtime.session_factory() as session:
        assert session.scalars(select(ApiClient.facility_id)).one() == facility


@pytest.mark.parametrize(
    "args",
    [
        ["--client-id", "x", "--name", "n", "--scope", "system/Patient.read"],  # short id, no keys
        ["--client-id", "lab-ok", "--name", "n", "--scope", "everything"],  # not a SMART scope
        ["--client-id", "lab-ok", "--name", "n", "--scope", "system/Patient.read", "--jwks", "/nonexistent"],
        ["--client-id", "app-ok", "--name", "n", "--scope", "user/*.read", "--kind", "app"],  # no redirect
        [  # a launch URL that is not https (or http://localhost)
            "--client-id",
            "app-ok",
            "--name",
            "n",
            "--scope",
            "launch patient/*.rs",
            "--kind",
            "app",
            "--redirect-uri",
            "https://a.example/cb",
            "--launch-uri",
            "http://a.example/launch",
        ],
        [  # a granular scope that writes
            "--client-id",
            "app-ok",
            "--name",
            "n",
            "--scope",
            "patient/Observation.c?category=laboratory",
            "--kind",
            "app",
            "--redirect-uri",
            "https://a.example/cb",
        ],
        ["--client-id", "lab-ok", "--name", "n", "--scope", "system/Patient.read", "--facility", "000000000"],
    ],
)
def test_bad_input_exits_2_and_changes_nothing(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    code, out = run_cli(sqlite_runtime, monkeypatch, "clients", "register", *args, "--reason", "lab feed")
    assert code == 2, out
    assert "error:" in out and "Traceback" not in out
    with sqlite_runtime.session_factory() as session:
        assert session.scalars(select(ApiClient)).all() == []


def test_register_a_smart_app_with_its_launch_url(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = run_cli(
        sqlite_runtime, monkeypatch, "clients", "register", "--kind", "app", "--client-id", "growth-chart",
        "--name", "Growth chart", "--redirect-uri", "https://apps.example.org/growth/callback",
        "--launch-uri", "https://apps.example.org/growth/launch",
        "--scope", "launch launch/patient openid fhirUser patient/Observation.rs?category=vital-signs",
        "--reason", "paediatrics growth charts",
    )  # fmt: skip
    assert code == 0, out
    with sqlite_runtime.session_factory() as session:
        row = session.scalars(select(ApiClient)).one()
    assert row.kind == "app" and row.launch_uri == "https://apps.example.org/growth/launch" and row.jwks == ""


def test_registering_needs_a_stated_reason(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [ECKey.generate_key("P-256").as_dict(private=False)]}))
    args = ["clients", "register", "--client-id", "lab-ok", "--name", "n", "--scope", "system/Patient.read"]
    args += ["--jwks", str(jwks), "--facility", str(make_facility(sqlite_runtime))]
    assert run_cli(sqlite_runtime, monkeypatch, *args)[0] == 2  # no --reason
    code, out = run_cli(sqlite_runtime, monkeypatch, *args, "--reason", " x ")
    assert code == 2 and "reason" in out
    with sqlite_runtime.session_factory() as session:
        assert session.scalars(select(ApiClient)).all() == []
        assert session.scalars(select(AuditEvent)).all() == []
    assert run_cli(sqlite_runtime, monkeypatch, *args, "--reason", "lab feed, contract 12")[0] == 0
    with sqlite_runtime.session_factory() as session:
        event = session.scalars(select(AuditEvent)).one()
    assert json.loads(event.detail)["reason"] == "lab feed, contract 12"


def test_sessions_revoke_cuts_an_open_session(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch, client: TestClient
) -> None:
    login(client, make_person(sqlite_runtime, "compromised"))
    assert client.get("/auth/me").status_code == 200
    code, out = run_cli(
        sqlite_runtime, monkeypatch, "sessions", "revoke", "compromised", "--reason", "phished"
    )
    assert code == 0 and "1 session(s)" in out
    assert client.get("/auth/me").status_code == 401
    assert run_cli(sqlite_runtime, monkeypatch, "sessions", "revoke", "nobody", "--reason", "test")[0] == 2
    assert run_cli(sqlite_runtime, monkeypatch, "sessions", "revoke", "compromised", "--reason", "x")[0] == 2


def test_the_installed_command_registers_a_client_in_a_fresh_process(
    sqlite_runtime: Runtime, tmp_path: Path
) -> None:
    """The shell command as the README shows it, in its own process (where only the models the
    command imports are loaded: it once failed on the facilities table)."""
    import os
    import subprocess
    import sys

    facility = make_facility(sqlite_runtime)
    with sqlite_runtime.session_factory() as session:
        finess = session.scalar(select(Facility.finess).where(Facility.id == facility))
    jwks = tmp_path / "lab-public-keys.json"
    jwks.write_text(json.dumps({"keys": [ECKey.generate_key("P-384").as_dict(private=False)]}))
    env = dict(
        os.environ,
        CARNET_ENV="test",
        CARNET_VAR_DIR=str(sqlite_runtime.settings.var_dir),
        CARNET_DATABASE_URL=sqlite_runtime.settings.resolved_database_url,
        CARNET_ORIGIN=sqlite_runtime.settings.origin,
    )
    carnet = str(Path(sys.executable).parent / "carnet")  # the installed entry point
    command = [carnet, "clients", "register", "--client-id", "lab-system"]
    command += ["--name", "Laboratory", "--facility", str(finess), "--scope", "system/Observation.c"]
    command += ["--jwks", str(jwks), "--reason", "results feed from the lab, contract 2026-12"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "client lab-system registered" in done.stdout
    with sqlite_runtime.session_factory() as session:
        assert session.scalars(select(ApiClient.facility_id)).one() == facility
