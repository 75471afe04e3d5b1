"""The FHIR Patient read's hand-off to a worker thread, lighter than anyio's.

The read is blocking work (psycopg, the gate) run off the event loop, as FastAPI runs every sync
route: `anyio.to_thread.run_sync` costs ~60 µs of CPU per call here (its capacity limiter, a
cancel scope, a worker thread found or started, a result queue), against ~20 µs for a job put
on a queue that a fixed set of threads takes from, each answering through the loop's
`call_soon_threadsafe` (benchmarks/handoff.py measures the kinds of hand-off).

What stays as anyio's: the function runs in a copy of the caller's context (contextvars: the
request's trace), its exception is raised in the caller, and at most `size` run at once, the
rest waiting their turn in the queue (`Settings.request_threads`, the same bound anyio's
limiter gives the other routes: reads have threads of their own). What differs: a caller
cancelled while its job runs is not kept waiting for it (anyio's would be); the job runs to its
end all the same (the read commits or fails closed, audited, as ever) and its answer is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple["asyncio.Future[Any]", contextvars.Context, Callable[..., Any], tuple[Any, ...]]


class Threads:
    """`size` daemon threads running the jobs put on one queue, oldest first."""

    def __init__(self, size: int, name: str = "carnet-read") -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        for n in range(size):
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True).start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in one of the threads, in a copy of the caller's context."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, contextvars.copy_context(), fn, args))
        return await future

    def _work(self) -> None:
        while True:
            future, context, fn, args = self._jobs.get()
            try:
                result, error = context.run(fn, *args), None
            except BaseException as exc:  # handed to the caller, whatever it is
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                future.get_loop().call_soon_threadsafe(_settle, future, result, error)
            del future, context, fn, args, result, error


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    elif isinstance(error, StopIteration):  # a future cannot carry one
        future.set_exception(RuntimeError("the read raised StopIteration"))
    else:
        future.set_exception(error)


_threads: dict[int, Threads] = {}
_lock = threading.Lock()


def threads(size: int) -> Threads:
    """The process's read threads, `size` of them (made on first use)."""
    found = _threads.get(size)
    if found is None:
        with _lock:
            found = _threads.get(size)
            if found is None:
                found = _threads[size] = Threads(size)
    return found


async def in_thread(size: int, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in one of the process's `size` read threads (see the module)."""
    return await threads(size).run(fn, *args)
