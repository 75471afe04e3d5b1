"""The FHIR API served by uvicorn on a free loopback port, driven by fhirpy (a real client).

Staff sessions are opened the way /auth/login opens them (carnet.identity.sessions), for
accounts made by tests/factories.py; the client sends the session cookie and the CSRF header.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from fhirpy import SyncFHIRClient
from sqlalchemy import select

from carnet.access.actor import Actor
from carnet.app import create_app
from carnet.audit.models import AuditEvent
from carnet.identity import sessions
from carnet.runtime import Runtime


@dataclass
class Server:
    url: str
    runtime: Runtime

    def client_for(self, actor: Actor) -> SyncFHIRClient:
        assert actor.account_id is not None
        with self.runtime.session_factory.begin() as session:
            issued = sessions.open_session(
                session,
                account_id=actor.account_id,
                privileged=actor.is_privileged,
                second_factor_method="totp",
                address="127.0.0.1",
                user_agent="fhirpy tests",
            )
        headers = {"Cookie": f"carnet_session={issued.token}", "X-CSRF-Token": issued.csrf_token}
        # Each person at their own computer: many accounts from one machine in minutes is a
        # campaign to detection (session timing, issue 15).
        headers["User-Agent"] = f"fhirpy tests ({actor.username})"
        return SyncFHIRClient(f"{self.url}/fhir", extra_headers=headers)

    def bearer_client(self, token: str) -> SyncFHIRClient:
        return SyncFHIRClient(f"{self.url}/fhir", authorization=f"Bearer {token}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve(runtime: Runtime) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(runtime), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def fhir_server(sqlite_runtime: Runtime) -> Iterator[Server]:
    for url in serve(sqlite_runtime):
        yield Server(url=url, runtime=sqlite_runtime)


@pytest.fixture
def fhir_server_both(runtime: Runtime) -> Iterator[Server]:
    """The same, on SQLite and on PostgreSQL (storage-critical tests)."""
    for url in serve(runtime):
        yield Server(url=url, runtime=runtime)


def audit_rows(runtime: Runtime, account_id: uuid.UUID | None) -> list[tuple[str, str, str | None]]:
    """(kind, outcome, resource_type) of an account's audit events, oldest first."""
    with runtime.session_factory() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.account_id == account_id).order_by(AuditEvent.seq)
        ).all()
        return [(r.kind, r.outcome, r.resource_type) for r in rows]
