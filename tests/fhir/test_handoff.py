"""The Patient read's hand-off (carnet.fhir.core.handoff) answers as anyio's does: the result,
the exception, the caller's context, and never more jobs at once than its threads."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from carnet.fhir.core import handoff

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def test_the_result_the_exception_and_the_context_reach_the_caller() -> None:
    pool = handoff.Threads(2, name="test-handoff")

    def job(x: int) -> tuple[int, str, bool]:
        return x * 2, request_id.get(), threading.current_thread() is threading.main_thread()

    def fails() -> None:
        raise LookupError("no such patient")

    def stops() -> None:
        raise StopIteration

    async def main() -> None:
        request_id.set("r-1")
        assert await pool.run(job, 21) == (42, "r-1", False)
        with pytest.raises(LookupError, match="no such patient"):
            await pool.run(fails)
        with pytest.raises(RuntimeError):
            await pool.run(stops)

    asyncio.run(main())


def test_no_more_jobs_run_at_once_than_threads_and_a_cancelled_caller_is_let_go() -> None:
    pool = handoff.Threads(3, name="test-handoff")
    running = 0
    most = 0
    lock = threading.Lock()

    def job() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1

    async def main() -> None:
        await asyncio.gather(*(pool.run(job) for _ in range(12)))
        slow = asyncio.ensure_future(pool.run(time.sleep, 0.05))
        await asyncio.sleep(0.01)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        await asyncio.sleep(0.08)  # its thread answers a cancelled future: nothing breaks
        assert await pool.run(len, "abc") == 3

    asyncio.run(main())
    assert most == 3


def test_one_set_of_threads_per_size() -> None:
    assert handoff.threads(2) is handoff.threads(2)
    assert handoff.threads(2) is not handoff.threads(3)
    assert handoff.threads(3).size == 3
