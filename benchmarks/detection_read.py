"""Detection's CPU per guarded read, alone: `SqlExposureLedger.record` timed with the thread's
CPU clock on every read, in the app as benchmarks.read_calls drives it (physicians reading
patients of their care, ASGI, PostgreSQL with Redis, detection on), without a profiler.

Two passes over the same reads: the first opens each patient for the first time in the run
(each read adds a patient to the windows: every few reads go to Redis), the second opens them
again (patients already counted: the reads fhir_load's steady state makes). Prints the mean,
median and p90 CPU of `record` per read for each pass, and the process CPU per request of the
second.

    CARNET_BENCH_REDIS_URL=redis://127.0.0.1:6379/13 .venv/bin/python -m benchmarks.detection_read

Creates and drops its own database; empties Redis database CARNET_BENCH_REDIS_URL (default 14).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import warnings
from typing import Any

from benchmarks.read_calls import _call, workload
from carnet.detection.ledger import SqlExposureLedger


def _figures(label: str, samples: list[int]) -> str:
    ordered = sorted(samples)
    n = len(ordered)
    return (
        f"{label}: detection (ledger.record) CPU per read: mean {statistics.fmean(ordered) / 1000:.1f} us, "
        f"median {ordered[n // 2] / 1000:.1f} us, p90 {ordered[int(n * 0.9)] / 1000:.1f} us ({n} reads)"
    )


async def _drive(app: Any, scopes: list[dict[str, Any]], samples: list[int], lines: list[str]) -> None:
    import anyio.to_thread

    async with app.router.lifespan_context(app):
        for scope in scopes[:50]:  # warm: pools, prepared statements, caches (other patients)
            await _call(app, scope)
        # Inline, as read_calls profiles it: the thread hand-off is no part of detection.
        original = anyio.to_thread.run_sync

        async def inline(func: Any, *args: Any, **_kwargs: Any) -> Any:
            return func(*args)

        anyio.to_thread.run_sync = inline  # type: ignore[assignment]
        try:
            measured = scopes[50:]
            for label in ("first reads", "reads again"):
                del samples[:]
                began = time.process_time()
                for scope in measured:
                    await _call(app, scope)
                spent = time.process_time() - began
                lines.append(_figures(label, samples))
                lines.append(f"  process CPU per request {1000 * spent / len(measured):.2f} ms")
        finally:
            anyio.to_thread.run_sync = original


def run() -> str:
    from carnet.app import create_app

    samples: list[int] = []
    original = SqlExposureLedger.record

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.thread_time_ns()
        try:
            return original(self, *args, **kwargs)
        finally:
            samples.append(time.thread_time_ns() - began)

    SqlExposureLedger.record = timed  # type: ignore[method-assign]
    try:
        with workload("detectread", "read") as (runtime, scopes):
            lines = [f"load average {os.getloadavg()[0]:.2f} at the start (2 cores)"]
            asyncio.run(_drive(create_app(runtime), scopes, samples, lines))
            lines.append(f"load average {os.getloadavg()[0]:.2f} at the end")
    finally:
        SqlExposureLedger.record = original  # type: ignore[method-assign]
    return "\n".join(lines)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.parse_args()
    warnings.simplefilter("ignore")
    print(run())


if __name__ == "__main__":
    main()
