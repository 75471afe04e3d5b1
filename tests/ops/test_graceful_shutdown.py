"""SIGTERM under load: requests in flight finish, none is cut mid-transaction (issue 19).

Counted from both sides: every read that got an answer is audited, and no audited read lacks
an answer (a transaction cut after its commit but before its answer would show as one more
audit event than answers). The clean shutdown then signs the audit tail."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from carnet.runtime import Runtime, build_runtime
from carnet.settings import Settings
from tests.audit.test_crash_tail import audit_verify
from tests.ops.helpers import ServerProcess, physician_with_patient, server_env

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_runtime(postgres_database: str, settings: Settings) -> Iterator[Runtime]:
    from tests.conftest import _empty_postgres

    runtime = build_runtime(settings.model_copy(update={"database_url": postgres_database}))
    yield runtime
    runtime.close()
    _empty_postgres(runtime.engine)
    runtime.engine.dispose()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_lets_in_flight_requests_finish(
    pg_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    reader = physician_with_patient(pg_runtime)
    env = server_env(pg_runtime, CARNET_AUDIT_CHECKPOINT_SECONDS="3600")
    # workers=2: `carnet serve --workers 2`, a listening socket per worker (carnet.operations.serving)
    server = ServerProcess(env, tmp_path / "serve.log", workers=workers)
    answered = 0
    server_errors: list[str] = []
    refused = 0
    reset_before_answer = 0
    lock = threading.Lock()
    signalled = threading.Event()
    try:
        server.wait_ready()
        with pg_runtime.engine.connect() as conn:
            before = conn.execute(
                sa.text("SELECT count(*) FROM audit_events WHERE kind = 'phi:resource:read'")
            ).scalar_one()

        def load() -> None:
            nonlocal answered, refused, reset_before_answer
            # A new connection per request: the server can refuse new ones, never cut one mid-way.
            while True:
                try:
                    response = httpx.get(
                        f"{server.url}/fhir/Patient/{reader.patient_id}", headers=reader.headers, timeout=30
                    )
                except httpx.ConnectError:
                    with lock:
                        refused += 1
                    return  # the listener is closed: the server is draining
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    # Accepted by the kernel's backlog as the listener closed, reset before any byte
                    # was read: to the client the same as a refusal. Whether the server had started
                    # it is what the audit count below settles (a committed read without an answer
                    # would be one audit event too many).
                    with lock:
                        reset_before_answer += 1
                    return
                except httpx.HTTPError as error:
                    with lock:
                        server_errors.append(type(error).__name__)
                    return
                with lock:
                    if response.status_code == 200:
                        answered += 1
                    else:
                        server_errors.append(f"{response.status_code} {response.text[:200]}")
                    if answered >= 40 and not signalled.is_set():
                        signalled.set()
                        server.signal(signal.SIGTERM)

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        # One uvicorn server ends by its signal; the supervisor of several returns 0 once all did.
        assert server.wait(60) == (-signal.SIGTERM if workers == 1 else 0)
    finally:
        server.stop()
    log = (tmp_path / "serve.log").read_text()
    assert log.count("Application shutdown complete") == workers
    assert server_errors == [], server_errors
    assert refused + reset_before_answer == len(threads), (refused, reset_before_answer)
    assert answered >= 40
    with pg_runtime.engine.connect() as conn:
        audited = conn.execute(
            sa.text("SELECT count(*) FROM audit_events WHERE kind = 'phi:resource:read'")
        ).scalar_one()
    assert audited - before == answered  # nothing half-done: each answer audited, no audit without an answer
    code, out = audit_verify(env, monkeypatch, "--strict")
    assert code == 0, out  # the shutdown signed the tail
