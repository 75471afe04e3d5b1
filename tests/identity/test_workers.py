"""Revocation reaches every worker at once: a second worker is a real separate process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from carnet.app import create_app
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.identity.conftest import login, make_person


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def second_worker(runtime: Runtime) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ)
    env.update(
        CARNET_ENV="test",
        CARNET_DATABASE_URL=runtime.settings.resolved_database_url,
        CARNET_VAR_DIR=str(runtime.settings.var_dir),
        CARNET_ORIGIN=runtime.settings.origin,
    )
    env.pop("CARNET_REDIS_URL", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "carnet.app:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # a loaded 2-core machine starts slowly
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "worker died")
        else:
            raise RuntimeError("the second worker did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_revoking_sessions_cuts_them_in_a_second_worker_process(
    runtime: Runtime, second_worker: str, movable_clock: clock.MovableClock
) -> None:
    person = make_person(runtime, "two.workers")
    with TestClient(create_app(runtime), base_url="http://localhost:8000") as first:
        login(first, person)
        cookie = {"carnet_session": first.cookies["carnet_session"]}
        assert httpx.get(second_worker + "/auth/me", cookies=cookie).json()["username"] == "two.workers"
        assert first.post("/auth/sessions/revoke-all").json() == {"revoked": 1}
    refused = httpx.get(second_worker + "/auth/me", cookies=cookie)
    assert refused.status_code == 401
