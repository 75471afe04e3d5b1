"""What one guarded Patient read costs the app in Python work, counted: function calls per read
and where the CPU goes, measured in process with a CPU clock, so the figure holds at any load.

On 2 cores the app's CPU is Python bytecode (perf: 70% in the interpreter, 20% in the kernel,
under 5% in C extensions), so the number of Python calls per read is what a change to the hot
path moves. A sampling profiler of the served app (benchmarks/read_profile.py) is distorted on
a loaded machine; this is not:

- the app is called as ASGI by an asyncio loop as uvicorn calls it (every middleware, FastAPI's
  routing and dependency, the route), on PostgreSQL with Redis, by physicians reading the
  patients in their care (detection on, as in fhir_load);
- /healthz and the reads are timed with the process CPU clock, for scale;
- then the same reads run under cProfile with a CPU clock (`time.thread_time`), the route's
  thread hand-off run inline so the one profile sees the whole request; the report gives the
  exact calls per read and the share of profiled time of each step and package.

    .venv/bin/python -m benchmarks.read_calls [--reads 600] [--profile /tmp/read.prof]
    .venv/bin/python -m benchmarks.read_calls --operation name     # or birth, identifier

`--operation` measures a Patient search instead of the read, as `fhir_load` and the GNU Health
side by side send it: `name`, a family name alone by a ward physician among the 800 patients of
their care list (each name borne by one of them); `birth`, family name and birth date of one of
five patients of a physician's care (of 30), as the GNU Health side by side asks; `identifier`,
one of those patients' INS.

Creates and drops its own database; empties Redis database CARNET_BENCH_REDIS_URL (default 14).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import os
import pstats
import random
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

from benchmarks._db import bench_database
from benchmarks.fhir_load import (
    ORIGIN,
    WARD_CARE_LIST,
    analyze,
    baseline_accounts,
    make_clinicians,
    plain_patient,
    searchable_families,
    seed_patients,
)
from carnet.crypto.keys import FileKeyProvider
from carnet.fhir.core import handoff
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Environment, Settings
from tests.factories import make_facility

REDIS_URL = os.environ.get("CARNET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")

# (label, function name, file ending): the steps of a read, as shares of the profiled time.
STEPS = (
    ("session cookie -> Actor", "resolve", "identity/authenticate.py"),
    ("the session read (gate, the session in its first pipeline)", "session_read", "phi/fastpath.py"),
    ("  session rows -> Actor", "quiet_resolve", "identity/authenticate.py"),
    ("  first pipeline, with the session", "_first_round_trip_of_session", "phi/fastpath.py"),
    ("the fast read (gate)", "patient_read", "phi/fastpath.py"),
    ("the fast search (gate)", "patient_search", "phi/fastpath_search.py"),
    ("the general path (gate)", "_run", "phi/kernel.py"),
    ("  first pipeline", "_first_round_trip", "phi/fastpath.py"),
    ("  operation body", "read", "patients/operations.py"),
    ("  operation body (search)", "search", "patients/operations.py"),
    ("  closing pipeline", "_closing_round_trip", "phi/fastpath.py"),
    ("    detection", "record", "detection/ledger.py"),
    ("    detection's Redis script", "_one_round_trip", "detection/ledger.py"),
    ("FHIR mapping + shape check", "patient_to_fhir", "resources/patient.py"),
    ("FHIR search engine", "respond", "fhir/core/search.py"),
    ("FastAPI routing", "_match", "fastapi/routing.py"),
)
PACKAGES = (
    "psycopg",
    "sqlalchemy",
    "fastapi/routing",
    "fastapi",
    "starlette",
    "redis",
    "opentelemetry",
    "prometheus_client",
    "pydantic",
    "anyio",
    "carnet/",
)


OPERATIONS = ("read", "name", "birth", "identifier")


def _scope(headers: dict[str, str], path: str) -> dict[str, Any]:
    """The scope uvicorn gives the app (the workstation's address as the peer, as the
    benchmark's proxy headers make it)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path.partition("?")[0],
        "raw_path": path.partition("?")[0].encode(),
        "query_string": path.partition("?")[2].encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items() if k.lower() != "x-forwarded-for"],
        "client": (headers.get("X-Forwarded-For", "127.0.0.1"), 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _call(app: Any, scope: dict[str, Any]) -> None:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    if status != 200:
        raise RuntimeError(f"{scope['path']} answered {status}")


def _pairs(
    runtime: Any, facility: uuid.UUID, operation: str, history: list[tuple[uuid.UUID, list[uuid.UUID]]]
) -> list[tuple[dict[str, str], str]]:
    """The requests measured: (headers, path and query)."""
    ids, _ = seed_patients(runtime, facility, 0, 600 if operation == "read" else 4 * WARD_CARE_LIST)
    index_of = {pid: n for n, pid in enumerate(ids)}
    if operation == "name":
        wards = make_clinicians(runtime, facility, ids, 4, per=WARD_CARE_LIST, history=history)
        return [
            (w.headers, f"/fhir/Patient?family={quote(name)}")
            for w in wards
            for name in searchable_families(w.patients, index_of)
        ]
    clinicians = make_clinicians(runtime, facility, ids, 20, history=history)
    if operation == "read":
        return [(c.headers, f"/fhir/Patient/{p}") for c in clinicians for p in c.patients]
    out = []
    for c in clinicians:
        for p in c.patients[5:10]:  # five patients each, as the GNU Health side by side asks
            x = plain_patient(index_of[p])
            query = f"identifier={x['ins']}"
            if operation == "birth":
                query = f"family={quote(x['family'])}&birthdate={x['birth_date']}"
            out.append((c.headers, f"/fhir/Patient?{query}"))
    return out


@contextmanager
def workload(name: str, operation: str) -> Iterator[tuple[Runtime, list[dict[str, Any]]]]:
    """A throwaway database (`name`) with the seeded workload of `operation`, Redis emptied, and
    the requests' ASGI scopes, shuffled; the runtime is closed and the database dropped after."""
    with bench_database(name) as url, tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        FileKeyProvider.create(var / "keys.json")
        settings = Settings(
            env=Environment.TEST, var_dir=var, database_url=url, origin=ORIGIN, redis_url=REDIS_URL
        )
        runtime = build_runtime(settings)
        try:
            redis.Redis.from_url(REDIS_URL).flushdb()
            facility = make_facility(runtime)
            history: list[tuple[uuid.UUID, list[uuid.UUID]]] = []
            pairs = _pairs(runtime, facility, operation, history)
            baseline_accounts(runtime, history)
            analyze(runtime)
            random.Random(1).shuffle(pairs)
            yield runtime, [_scope(h, p) for h, p in pairs]
        finally:
            runtime.close()


def run(reads: int, profile_out: Path | None, operation: str = "read") -> str:
    from carnet.app import create_app

    with workload("readcalls", operation) as (runtime, scopes):
        while len(scopes) < reads:  # a few searches, each asked again (as fhir_load asks them)
            scopes += scopes[: reads - len(scopes)]
        n = min(reads, len(scopes))
        app = create_app(runtime)
        profile = cProfile.Profile(time.thread_time)
        lines = [f"{operation}: load average {os.getloadavg()[0]:.2f} at the start (2 cores)", ""]
        asyncio.run(_drive(app, scopes, n, profile, lines))
        lines.append(f"load average {os.getloadavg()[0]:.2f} at the end")
    stats = pstats.Stats(profile)
    if profile_out is not None:
        stats.dump_stats(profile_out)
    return "\n".join([*lines, "", _report(stats, n)])


async def _drive(
    app: Any, scopes: list[dict[str, Any]], n: int, profile: cProfile.Profile, lines: list[str]
) -> None:
    import anyio.to_thread

    health = _scope({}, "/healthz")
    async with app.router.lifespan_context(app):
        for scope in scopes[:100]:  # warm: pools, prepared statements, caches
            await _call(app, scope)
        for label, batch in (("/healthz", [health] * n), ("guarded request", scopes[:n])):
            began, wall = time.process_time(), time.perf_counter()
            for scope in batch:
                await _call(app, scope)
            lines.append(
                f"{label}: {1000 * (time.process_time() - began) / n:.2f} ms process CPU per request"
                f" ({1000 * (time.perf_counter() - wall) / n:.2f} ms wall, one at a time)"
            )
        original = anyio.to_thread.run_sync
        original_read = handoff.in_thread

        async def inline(func: Any, *args: Any, **_kwargs: Any) -> Any:
            return func(*args)

        async def read_inline(_size: int, func: Any, *args: Any) -> Any:
            return func(*args)

        anyio.to_thread.run_sync = inline  # type: ignore[assignment]
        handoff.in_thread = read_inline  # type: ignore[assignment]  # the Patient read's own
        try:
            profile.enable()
            for scope in scopes[:n]:
                await _call(app, scope)
            profile.disable()
        finally:
            anyio.to_thread.run_sync = original
            handoff.in_thread = original_read


def _report(stats: pstats.Stats, n: int) -> str:
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in entries.values())
    calls = sum(v[1] for v in entries.values())
    out = [f"**{calls / n:,.0f} Python function calls per request** ({n} requests profiled)", ""]
    out += ["| step | share of profiled CPU | calls of it per read |", "|---|---|---|"]
    for label, function, where in STEPS:
        found = [v for k, v in entries.items() if k[2] == function and k[0].endswith(where)]
        if found:
            cumulative = sum(v[3] for v in found)
            count = sum(v[1] for v in found)
            out.append(f"| {label} | {cumulative / total:.1%} | {count / n:.2f} |")
    by_package: collections.Counter[str] = collections.Counter()
    for (filename, _line, _name), v in entries.items():
        package = next((p for p in PACKAGES if p in filename), "interpreter built-ins, stdlib")
        by_package[package.rstrip("/")] += v[2]
    out += ["", "| self time by package | share |", "|---|---|"]
    out += [f"| {p} | {t / total:.1%} |" for p, t in by_package.most_common()]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reads", type=int, default=600)
    parser.add_argument("--profile", type=Path, default=None, help="also write the cProfile stats here")
    parser.add_argument("--operation", choices=OPERATIONS, default="read")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(run(args.reads, args.profile, args.operation))


if __name__ == "__main__":
    main()
