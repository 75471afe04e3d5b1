"""The `carnet` command as people run it: a process, its exit status, its output."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyotp
import pytest

from carnet.cli import origin_for_port

CARNET = str(Path(sys.executable).with_name("carnet"))


def _env(var: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}
    env.update({"CARNET_VAR_DIR": str(var), "CARNET_ENV": "test", **extra})
    return env


def _run(var: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CARNET, *args], env=_env(var, **extra), capture_output=True, text=True, timeout=300, check=False
    )


def _installed(tmp_path: Path) -> Path:
    var = tmp_path / "var"
    assert _run(var, "keys", "init").returncode == 0
    upgraded = _run(var, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    return var


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("seed", "--bogus"),
        ("seed", "--patients", "-5"),
        ("seed", "--patients", "many"),
        ("seed", "--facilities", "0"),
        ("users", "list", "--nope"),
        ("demo", "--patients", "-1"),
        ("demo", "--clock", "25:99"),  # the demo's wall clock is HH:MM
    ],
)
def test_bad_input_is_a_clear_message_and_status_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _run(tmp_path / "var", *args)
    assert result.returncode == 2
    _no_traceback(result)
    assert "Error" in result.stderr or "error" in result.stderr


def test_an_unreachable_database_is_a_clear_message(tmp_path: Path) -> None:
    var = tmp_path / "var"
    assert _run(var, "keys", "init").returncode == 0
    url = "postgresql+psycopg://nobody:secret-password@127.0.0.1:1/nowhere"
    for args in (("seed", "--patients", "5"), ("users", "list")):
        result = _run(var, *args, CARNET_DATABASE_URL=url)
        assert result.returncode == 2
        _no_traceback(result)
        assert "cannot reach the database" in result.stderr
        assert "secret-password" not in result.stderr + result.stdout


def test_seed_is_refused_in_production(tmp_path: Path) -> None:
    var = _installed(tmp_path)
    result = _run(var, "seed", "--patients", "5", CARNET_ENV="production")
    assert result.returncode == 2
    _no_traceback(result)
    assert "CARNET_ENV" in result.stderr
    assert not (var / "seed-credentials.json").exists()


def test_credentials_to_a_directory_are_refused_before_seeding(tmp_path: Path) -> None:
    var = _installed(tmp_path)
    result = _run(var, "seed", "--patients", "5", "--credentials-out", str(tmp_path))
    assert result.returncode == 2
    _no_traceback(result)
    assert "is a directory" in result.stderr
    # Nothing was seeded: a second, correct run succeeds.
    assert _run(var, "seed", "--patients", "5", "--credentials-out", str(tmp_path / "c.json")).returncode == 0


@pytest.mark.slow
def test_two_seed_runs_write_the_same_credentials_and_users_lists_them(tmp_path: Path) -> None:
    outputs = []
    for name in ("one", "two"):
        var = _installed(tmp_path / name)
        creds = tmp_path / f"{name}.json"
        result = _run(var, "seed", "--seed", "7", "--patients", "500", "--credentials-out", str(creds))
        assert result.returncode == 0, result.stderr
        assert str(creds) in result.stdout
        assert creds.stat().st_mode & 0o777 == 0o600
        outputs.append(creds.read_text())
    assert outputs[0] == outputs[1]
    entries = json.loads(outputs[0])
    assert all(set(e) == {"username", "password", "totp_secret", "roles", "facility"} for e in entries)
    # The credentials never reach the terminal.
    assert entries[0]["password"] not in result.stdout + result.stderr

    listed = _run(var, "users", "list", COLUMNS="200")
    assert listed.returncode == 0, listed.stderr
    staff = [e for e in entries if e["roles"] != ["patient"]]
    for entry in staff[:5]:
        assert entry["username"] in listed.stdout
    assert not any(e["password"] in listed.stdout or e["totp_secret"] in listed.stdout for e in entries)
    assert "patient-" not in listed.stdout  # portal accounts only with --patients
    with sqlite3.connect(var / "carnet.db") as db:
        listed_events = db.execute(
            "SELECT actor_kind, detail FROM audit_events WHERE kind = 'admin:account:listed'"
        ).fetchall()
    assert len(listed_events) == 1 and listed_events[0][0] == "system"  # the listing is audited
    with_patients = _run(var, "users", "list", "--patients", COLUMNS="200")
    assert "patient-" in with_patients.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_demo_seeds_writes_credentials_and_serves(tmp_path: Path) -> None:
    var = tmp_path / "var"
    port = _free_port()
    env = _env(var)
    del env["CARNET_ENV"]  # demo sets it itself
    process = subprocess.Popen(
        [CARNET, "demo", "--patients", "60", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        answer = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert answer is not None and answer.status_code == 200, "demo did not serve"
        assert answer.json()["resourceType"] == "CapabilityStatement"
        # The home page answers (a sign-in page for a visitor without a session).
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5, follow_redirects=True).status_code == 200
        credentials = var / "demo-credentials.json"
        entries = json.loads(credentials.read_text())
        assert {"system_administrator", "security_officer", "physician"} <= {e["roles"][0] for e in entries}
        # Signing in works at the address it serves (another port than the default origin's),
        # as the login page posts it; another origin stays refused.
        doctor = next(e for e in entries if "physician" in e["roles"])
        body = {
            "username": doctor["username"],
            "password": doctor["password"],
            "otp": pyotp.TOTP(doctor["totp_secret"]).now(),
        }
        here = f"http://127.0.0.1:{port}"
        foreign = httpx.post(here + "/auth/login", json=body, headers={"Origin": "http://127.0.0.1:8000"})
        assert foreign.status_code == 403, foreign.text
        signed = httpx.post(here + "/auth/login", json=body, headers={"Origin": here}, timeout=10)
        assert signed.status_code == 200, signed.text
    finally:
        process.terminate()
        out, errors = process.communicate(timeout=30)
    assert str(var / "demo-credentials.json") in out
    assert entries[0]["password"] not in out + errors
    assert "Traceback" not in errors


@pytest.mark.parametrize("args", [("seed",), ("demo",), ("users",), ("users", "list")])
def test_help_on_every_command(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _run(tmp_path / "var", *args, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


@pytest.mark.parametrize(
    ("configured", "port", "explicit", "served_at"),
    [
        ("http://localhost:8000", 9000, False, "http://localhost:9000"),
        ("http://127.0.0.1:8000", 9000, False, "http://127.0.0.1:9000"),
        ("http://localhost:8000", None, False, None),  # no --port: the origin as configured
        ("http://localhost:8000", 8000, False, None),
        ("http://localhost:8000", 9000, True, None),  # CARNET_ORIGIN set on purpose wins
        ("https://carnet.example.org", 9000, False, None),  # behind a proxy: never guessed
        ("http://10.0.0.5:8000", 9000, False, None),
    ],
)
def test_serve_moves_a_default_loopback_origin_to_its_port(
    configured: str, port: int | None, explicit: bool, served_at: str | None
) -> None:
    assert origin_for_port(configured, port, explicit=explicit) == served_at
