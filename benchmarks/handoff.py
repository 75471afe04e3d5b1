"""What the thread hand-off of a sync endpoint costs under uvicorn, measured, not assumed.

carnet's endpoints are sync (`def`): Starlette runs each in anyio's thread pool, a hand-off an
`async def` endpoint does not make. This serves carnet's own app (its middleware: security
headers, metrics, request ids) with two extra routes answering the same bytes, one `def` and
one `async def`, and drives both with the same wrk load in interleaved rounds; the difference in
CPU per request (uvicorn workers, user + system) is what the hand-off costs. Compare it with the
CPU of a guarded read (`benchmarks.fhir_load`): that bounds what async endpoints with psycopg's
async pool could save on the read path.

    .venv/bin/python -m benchmarks.handoff [--seconds 10] [--clients 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from benchmarks._db import bench_database
from benchmarks.fhir_load import _tree_cpu, start_server, wrk_load
from carnet.crypto.keys import FileKeyProvider

_BODY = b'{"resourceType":"Patient","id":"x"}'


def create() -> FastAPI:
    """carnet's app with the two measuring routes (the benchmark's uvicorn factory)."""
    from carnet.app import create_app

    app = create_app()

    @app.get("/bench/sync")
    def sync_route() -> Response:
        return Response(_BODY, media_type="application/fhir+json")

    @app.get("/bench/async")
    async def async_route() -> Response:
        return Response(_BODY, media_type="application/fhir+json")

    return app


def run(seconds: float, clients: int, rounds: int, workers: int) -> str:
    load_start = os.getloadavg()
    rows: dict[str, list[tuple[float, float]]] = {"sync (def, thread hand-off)": [], "async (async def)": []}
    with bench_database("handoff") as url, tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        FileKeyProvider.create(var / "keys.json")
        server, base = start_server(url, var, workers, factory="benchmarks.handoff:create")
        try:
            none: dict[str, str] = {}
            wrk_load(base, "warm-up", clients, 3, [(none, "/bench/sync"), (none, "/bench/async")])
            for _ in range(rounds):
                for label, path in (
                    ("sync (def, thread hand-off)", "/bench/sync"),
                    ("async (async def)", "/bench/async"),
                ):
                    before = _tree_cpu([server.pid])
                    result = wrk_load(base, label, clients, seconds, [(none, path)])
                    used = _tree_cpu([server.pid]) - before
                    if result.errors:
                        raise RuntimeError(f"{label}: {result.errors} errors")
                    rows[label].append((result.throughput, used / max(1, result.requests) * 1e6))
        finally:
            server.terminate()
            server.wait(timeout=30)
    load_end = os.getloadavg()
    lines = [
        f"load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end; "
        f"{clients} clients, {workers} uvicorn workers, {rounds} interleaved rounds of {seconds:.0f} s",
        "",
        "| endpoint | throughput (median) | CPU per request, app workers (median) |",
        "|---|---|---|",
    ]
    medians: dict[str, tuple[float, float]] = {}
    for label, values in rows.items():
        rate = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        medians[label] = (rate, cpu)
        lines.append(f"| {label} | {rate:,.0f}/s | {cpu:,.0f} µs |")
    (s_rate, s_cpu), (a_rate, a_cpu) = medians.values()
    lines.append("")
    lines.append(
        f"- async / sync: {a_rate / s_rate:.2f}x the throughput; the hand-off costs "
        f"{s_cpu - a_cpu:,.0f} µs of CPU per request"
    )
    return "\n".join(lines)


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    print(run(args.seconds, args.clients, args.rounds, args.workers))


if __name__ == "__main__":
    main()
