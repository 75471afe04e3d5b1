"""A real `carnet serve` process for operations tests, and a physician who can read a patient."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from carnet.identity import sessions
from carnet.runtime import Runtime
from tests.factories import link_care, make_facility, make_physician, register_patient

USER_AGENT = "carnet ops tests"
CARNET = str(Path(sys.executable).parent / "carnet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_env(runtime: Runtime, **extra: str) -> dict[str, str]:
    """The environment `carnet serve` needs to run on the test's database, keys and checkpoints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}
    env |= {
        "CARNET_ENV": "test",
        "CARNET_VAR_DIR": str(runtime.settings.var_dir),
        "CARNET_DATABASE_URL": runtime.settings.resolved_database_url,
        "CARNET_EXPORT_SWEEP_SECONDS": "0",
    }
    return env | extra


class ServerProcess:
    """`carnet serve` in a process group of its own, so a signal reaches exactly it."""

    def __init__(self, env: dict[str, str], log: Path, *, port: int | None = None, workers: int = 1) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [CARNET, "serve", "--port", str(self.port), "--workers", str(workers)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"carnet serve exited {self.process.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"carnet serve did not start: {self.log.read_text()[-2000:]}")

    def signal(self, sig: signal.Signals) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def wait(self, seconds: float = 30) -> int:
        return self.process.wait(timeout=seconds)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(timeout=10)


@dataclass
class Reader:
    """A physician's live session (cookie and CSRF header) and a patient in their care."""

    patient_id: str
    headers: dict[str, str]
    family: str
    given: str


def physician_with_patient(
    runtime: Runtime, *, family: str = "Zéphyrin", given: str = "Orlane", ins: str | None = None
) -> Reader:
    facility = make_facility(runtime)
    physician = make_physician(runtime, facility)
    assert physician.practitioner_id is not None and physician.account_id is not None
    patient = register_patient(runtime, facility, family=family, given=given, ins=ins)
    link_care(runtime, patient_id=patient.id, practitioner_id=physician.practitioner_id, facility_id=facility)
    with runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=physician.account_id,
            privileged=physician.is_privileged,
            second_factor_method="totp",
            address="127.0.0.1",
            user_agent=USER_AGENT,
        )
    headers = {
        "Cookie": f"carnet_session={issued.token}",
        "X-CSRF-Token": issued.csrf_token,
        "User-Agent": USER_AGENT,
        "Accept": "application/fhir+json",
    }
    return Reader(patient_id=str(patient.id), headers=headers, family=family, given=given)


def new_id() -> str:
    return uuid.uuid4().hex[:8]
