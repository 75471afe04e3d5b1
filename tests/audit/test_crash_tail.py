"""A server killed with SIGKILL in a write burst leaves an unsigned audit tail; the next start
signs it before serving, so `carnet audit verify --strict` passes and deleting those newest
events is found (issue 15: the window in which a truncated tail passed verify)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from carnet.cli import app
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Settings, reset_settings_cache
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


def audit_verify(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    for name, value in env.items():
        if name.startswith("CARNET_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("CARNET_NATS_URL", raising=False)
    reset_settings_cache()
    try:
        result = CliRunner().invoke(app, ["audit", "verify", *args])
    finally:
        reset_settings_cache()
    return result.exit_code, result.output


def head(runtime: Runtime) -> int:
    """How many events the chain holds (the global seq has gaps where a transaction rolled back)."""
    with runtime.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar() or 0)


def test_sigkill_in_a_write_burst_then_restart_leaves_no_unsigned_tail(
    pg_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = physician_with_patient(pg_runtime)
    assert pg_runtime.checkpointer is not None
    pg_runtime.checkpointer.checkpoint()  # the fixtures' events are pinned: the tail is the burst's
    # No periodic checkpoint during the test: only start-up and shutdown sign.
    env = server_env(
        pg_runtime, CARNET_AUDIT_CHECKPOINT_SECONDS="3600", CARNET_AUDIT_CHECKPOINT_EVERY="100000"
    )
    server = ServerProcess(env, tmp_path / "serve.log")
    try:
        server.wait_ready()
        before = head(pg_runtime)
        answered = 0
        stop = threading.Event()
        lock = threading.Lock()

        def burst() -> None:
            nonlocal answered
            with httpx.Client(base_url=server.url, headers=reader.headers, timeout=10) as client:
                while not stop.is_set():
                    try:
                        response = client.get(f"/fhir/Patient/{reader.patient_id}")
                    except httpx.HTTPError:
                        return  # the server is gone
                    assert response.status_code == 200, response.text
                    with lock:
                        answered += 1
                        if answered >= 60:
                            server.signal(signal.SIGKILL)  # mid-burst: other threads are in flight
                            stop.set()

        threads = [threading.Thread(target=burst) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert server.wait() == -signal.SIGKILL
    finally:
        server.stop()
    killed_at = head(pg_runtime)
    assert killed_at - before >= 60  # every answered read was audited

    code, out = audit_verify(env, monkeypatch)
    assert code == 0, out
    assert f"unsigned tail: {killed_at - before} event(s)" in out, out
    code, out = audit_verify(env, monkeypatch, "--strict")
    assert code == 1 and "STRICT" in out, out

    restarted = ServerProcess(env, tmp_path / "serve-again.log")
    try:
        restarted.wait_ready()  # start-up signed the tail before answering anyone
        code, out = audit_verify(env, monkeypatch, "--strict")
        assert code == 0, out
        assert "unsigned tail" not in out
        with httpx.Client(base_url=restarted.url, headers=reader.headers) as client:
            assert client.get(f"/fhir/Patient/{reader.patient_id}").status_code == 200
    finally:
        restarted.stop()  # a clean shutdown pins what this run wrote
    # uvicorn shuts down cleanly, then re-raises SIGTERM so its parent sees why it ended.
    assert restarted.process.returncode == -signal.SIGTERM
    assert "Application shutdown complete" in (tmp_path / "serve-again.log").read_text()
    code, out = audit_verify(env, monkeypatch, "--strict")
    assert code == 0, out

    # The attack of issue 15: delete the newest events and move every lane's head back. Found now.
    with pg_runtime.engine.begin() as conn:
        last = int(conn.execute(sa.text("SELECT max(seq) FROM audit_events")).scalar_one())
        conn.execute(sa.text("DELETE FROM audit_event_patients WHERE seq > :s"), {"s": last - 3})
        conn.execute(sa.text("DELETE FROM audit_events WHERE seq > :s"), {"s": last - 3})
        conn.execute(
            sa.text(
                "UPDATE audit_chain_head AS h"
                " SET seq = coalesce(e.seq, 0), hash = coalesce(e.hash, repeat('0', 64))"
                " FROM audit_chain_head AS l LEFT JOIN LATERAL (SELECT seq, hash FROM audit_events"
                " WHERE lane = l.id ORDER BY seq DESC LIMIT 1) AS e ON true WHERE h.id = l.id"
            )
        )
    code, out = audit_verify(env, monkeypatch)
    assert code == 1 and "[truncated]" in out, out
