"""Several uvicorn worker processes, each accepting on a listening socket of its own.

`uvicorn --workers N` binds one socket in the parent and hands it to every worker: a burst of
new connections (a load balancer or a reverse proxy opening its keep-alive pool, a benchmark's
64 clients) is mostly taken by whichever worker wakes first, and uvicorn accepts in a loop until
the queue is empty. Measured here with 64 clients and 2 workers: 48 and 16 connections, then 43
and 21, so the clients held by the busier worker waited about three times as long as the others
for the same CPU (benchmarks/fhir_load.py; docs/BENCHMARKS.md, "Connections balanced"). Each
keep-alive connection stays with the worker that accepted it, so the imbalance lasts.

With SO_REUSEPORT (Linux), every worker listens on a socket of its own bound to the same address,
and the kernel spreads new connections across them by a hash of the client's address and port,
as nginx's `reuse_port` does. Only sockets of the same user can join the group; the parent
first binds the address plainly, which fails while anything else listens there (an older carnet
included), so a second server never silently shares the port.

The parent only supervises: it restarts a worker that dies and, on SIGTERM or SIGINT, passes
SIGTERM on (each worker stops accepting, finishes its requests and signs the audit tail, as one
uvicorn server does) and waits for them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.context import SpawnProcess
from typing import Any

log = logging.getLogger("carnet.serving")

_spawn = multiprocessing.get_context("spawn")
# A worker that dies within this long of its start is failing to start, not crashing: the
# supervisor stops rather than restart it forever (a bad schema, a port taken).
_STARTUP_SECONDS = 10.0


def balanced_available() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listening_socket(host: str, port: int, *, reuse_port: bool, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def check_port_free(host: str, port: int) -> None:
    """OSError (EADDRINUSE) when anything listens on host:port, with or without SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a listener
        probe.bind((host, port))


def _worker(app: str, host: str, port: int, config: dict[str, Any]) -> None:
    import uvicorn

    sock = listening_socket(host, port, reuse_port=True, backlog=int(config.get("backlog", 2048)))
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, **config)).run(sockets=[sock])


def serve_balanced(
    app: str,
    *,
    host: str,
    port: int,
    workers: int,
    startup_seconds: float = _STARTUP_SECONDS,
    **config: Any,
) -> int:
    """Run `workers` uvicorn servers of `app` (an import string; `factory=True` in config for a
    factory), each on its own SO_REUSEPORT socket, until SIGTERM or SIGINT; returns the exit
    status (1 when a worker failed to start). OSError when host:port is taken."""
    check_port_free(host, port)
    stopping = threading.Event()
    failed = False

    def start() -> tuple[SpawnProcess, float]:
        process = _spawn.Process(target=_worker, args=(app, host, port, config), daemon=False)
        process.start()
        return process, time.monotonic()

    def stop(signum: int, _frame: Any) -> None:
        stopping.set()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    running = [start() for _ in range(workers)]
    log.info("carnet: %d workers, each on its own listening socket (SO_REUSEPORT)", workers)
    try:
        while not stopping.wait(0.5):
            for i, (process, started) in enumerate(running):
                if process.is_alive():
                    continue
                if time.monotonic() - started < startup_seconds:
                    log.error(
                        "carnet: worker %s exited during its start (status %s)", process.pid, process.exitcode
                    )
                    failed = True
                    stopping.set()
                    break
                log.warning(
                    "carnet: worker %s exited (status %s); starting another", process.pid, process.exitcode
                )
                running[i] = start()
    finally:
        for process, _started in running:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process, _started in running:
            process.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 1 if failed else 0
