"""Several MLLP listener processes on one port (`carnet interfaces serve --processes N`).

Applying a message costs CPU in Python (parsing, the gate's steps), not waits on shared locks,
so one process, bound by its interpreter lock, uses one core at most: N processes, each with
its own runtime (engine, connection pool), listen on the same port with SO_REUSEPORT, and the
kernel hands each new connection to one of them.

What holds across processes:
- A connection stays on the process that accepted it: a sender's messages on one connection
  are applied in the order sent (it waits for each ACK before the next, the MLLP discipline),
  and a group never mixes processes.
- Messages of one patient sent on two connections that landed on two processes may be applied
  at the same time (within one process they wait for each other, its stripes). The database
  decides between them as between any two writers: the patient row held FOR SHARE against a
  merge, the links' and the message log's unique keys (the second to insert a link or a
  control id fails whole and is NAKed "resend it", or answered as the replay it is), the
  versions' If-Match. Nothing is half-applied; no order between two connections was ever
  promised (which of two arrives first is the network's).
- A replay on another process than its first copy is found by the message log (its unique
  control id), as on one.
- An interface's volume budget (and its strikes for types outside its registration) is
  counted in Redis, shared by every process (`carnet/interfaces/budget.py`, one round trip per
  group): a sender spreading over k connections on k processes is throttled at its
  registration, as on one. `serve --processes N` (N > 1) refuses to start without Redis.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carnet.settings import Settings


@dataclass(frozen=True)
class ListenerOptions:
    """How each process listens (plain values: handed to a new process)."""

    host: str
    port: int
    workers: int = 1
    group: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None


def _listener(settings: Settings, options: ListenerOptions) -> tuple[Any, Any]:
    from carnet.interfaces.mllp import MllpListener, tls_context
    from carnet.interfaces.service import InterfaceService
    from carnet.runtime import build_runtime

    context = None
    if options.tls_cert is not None and options.tls_key is not None:
        context = tls_context(options.tls_cert, options.tls_key, options.client_ca)
    runtime = build_runtime(settings)
    listener = MllpListener(
        InterfaceService(runtime),
        host=options.host,
        port=options.port,
        ssl_context=context,
        workers=options.workers,
        group=options.group,
        reuse_port=True,
    )
    return runtime, listener


def _serve_one(settings: Settings, options: ListenerOptions, ready: Any) -> None:
    """A listener process: its own runtime, the shared port; says when it listens."""
    runtime, listener = _listener(settings, options)

    async def serve() -> None:
        await listener.start()
        ready.put(os.getpid())
        await listener.serve_forever()

    try:
        with suppress(KeyboardInterrupt):
            asyncio.run(serve())
    finally:
        runtime.close()


def start_processes(settings: Settings, options: ListenerOptions, count: int) -> list[Any]:
    """`count` listener processes on `options.port` (already bound by the caller with
    SO_REUSEPORT, or bound by them), each ready when this returns."""
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    processes = [
        spawn.Process(
            target=_serve_one, args=(settings, options, ready), name=f"carnet-mllp-{n}", daemon=True
        )
        for n in range(count)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=120)
    return processes


def stop_processes(processes: list[Any]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(30)
