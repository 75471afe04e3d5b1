"""`carnet serve --workers N`: a listening socket per worker (carnet/operations/serving.py).

A tiny ASGI app that answers its worker's pid stands in for carnet's, so what is tested is the
serving: connections spread over the workers, a taken port refused before anything starts, a
dead worker replaced, a worker that cannot start stopping the whole, SIGTERM ending them all."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carnet.db.server_checks import server_warnings
from carnet.operations import serving
from carnet.runtime import Runtime
from tests.ops.helpers import CARNET, free_port, server_env

pytestmark = pytest.mark.skipif(not serving.balanced_available(), reason="SO_REUSEPORT is Linux's")


async def pid_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    if scope["path"] == "/busy":  # the worker's loop held, as a request's CPU-bound work holds it
        time.sleep(float(scope["query_string"] or 1))
    body = str(os.getpid()).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


def _start(
    port: int, *, app: str = "tests.ops.test_serving:pid_app", startup: float = 10.0
) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from carnet.operations.serving import serve_balanced; sys.exit(serve_balanced("
        f"{app!r}, host='127.0.0.1', port={port}, workers=2, startup_seconds={startup}, lifespan='off',"
        " log_level='warning'))"
    )
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def _pid_on_new_connection(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        return int(connection.getresponse().read())
    finally:
        connection.close()


def _wait_serving(port: int, process: subprocess.Popen[bytes], seconds: float = 30) -> set[int]:
    """The workers' pids, once both answer."""
    deadline = time.monotonic() + seconds
    seen: set[int] = set()
    while time.monotonic() < deadline and len(seen) < 2:
        assert process.poll() is None, f"the server exited {process.returncode}"
        try:
            seen.add(_pid_on_new_connection(port))
        except OSError:
            time.sleep(0.05)
    assert len(seen) == 2, seen
    return seen


@pytest.fixture
def served() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    process = _start(port, startup=1.0)
    try:
        yield port, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_a_burst_of_kept_connections_is_spread_over_the_workers(
    served: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, process = served
    _wait_serving(port, process)
    # One worker busy while 64 keep-alive connections open at once, as a load balancer's pool or
    # a load test opens them: with one shared socket the worker that is free accepts them all
    # (uvicorn --workers 2 here: 64 and 0); with a socket each, the busy one's share waits for it.
    busy = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    busy.request("GET", "/busy?1.5")
    time.sleep(0.3)
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(64)]
    for c in connections:
        c.connect()
        c.request("GET", "/")
    held: Counter[int] = Counter()
    for c in connections:
        held[int(c.getresponse().read())] += 1
    busy.getresponse().read()
    busy.close()
    for c in connections:  # the same connection stays with its worker
        c.request("GET", "/")
        assert int(c.getresponse().read()) in held
        c.close()
    assert len(held) == 2
    # Spread by a hash of the client's port: 64 draws, each worker below 12 has p < 1e-6.
    assert min(held.values()) >= 12, held


def test_a_taken_port_is_refused_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even one that would share
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            serving.serve_balanced("tests.ops.test_serving:pid_app", host="127.0.0.1", port=port, workers=2)


def test_a_dead_worker_is_replaced_and_sigterm_ends_them_all(
    served: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, process = served
    first = _wait_serving(port, process)
    time.sleep(1.2)  # past the start window: a death now is a crash, not a failed start
    killed = min(first)
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 30
    now: set[int] = set()
    while time.monotonic() < deadline and not (len(now) == 2 and killed not in now):
        with contextlib.suppress(OSError):  # the dead worker's socket, before its replacement listens
            now.add(_pid_on_new_connection(port))
        now.discard(killed)
        time.sleep(0.02)
    assert len(now) == 2 and killed not in now, now
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    for pid in now:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_that_cannot_start_stops_the_server_with_status_1() -> None:
    process = _start(free_port(), app="tests.ops.test_serving:no_such_app")
    try:
        assert process.wait(60) == 1
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_carnet_serve_with_workers_on_a_taken_port_exits_2(runtime: Runtime, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [CARNET, "serve", "--workers", "2", "--port", str(port)],
            env=server_env(runtime),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    # The server settings carnet relies on are named before it listens (on PostgreSQL; this
    # machine's server runs with autovacuum off), and they do not stop it from starting.
    expected = server_warnings(runtime.engine)
    for warning in expected:
        assert f"warning: {warning}" in done.stderr
    assert done.stderr.count("warning:") == len(expected)
