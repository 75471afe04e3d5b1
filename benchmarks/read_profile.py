"""The guarded Patient read's CPU, and where it goes: `fhir_load`'s read rounds alone, with an
optional py-spy profile of the app workers while they serve the reads.

The same server, accounts, history and wrk load as `benchmarks.fhir_load` (64 physicians each
reading the 30 patients in their care, detection on, Redis on), without its searches, creates
and import, so a change to the read path is measured in a couple of minutes:

    .venv/bin/python -m benchmarks.read_profile --patients 1000 --rounds 3
    .venv/bin/python -m benchmarks.read_profile --profile /tmp/read.txt   # needs py-spy

The profile (py-spy's collapsed stacks of every uvicorn worker during one more read round)
is summarised as the share of sampled CPU by package and by the functions with the most self
time; the raw stacks are written to the named file (`flamegraph.pl` or speedscope read them).
py-spy is a profiler, not a dependency: `.venv/bin/pip install py-spy`.

Creates and drops its own database on CARNET_BENCH_POSTGRES_URL and empties Redis database
CARNET_BENCH_REDIS_URL, as fhir_load does.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis

from benchmarks._db import bench_database
from benchmarks._host import RedisWatch, scheduler_note
from benchmarks.fhir_load import (
    REDIS_URL,
    Pair,
    analyze,
    baseline_accounts,
    cpu_seconds,
    make_clinicians,
    seed_patients,
    start_server,
    wrk_load,
)
from carnet.crypto.keys import FileKeyProvider
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Environment, Settings
from tests.factories import make_facility

ORIGIN = "http://127.0.0.1"

# Where a sampled frame's file lives -> the package it is counted under.
_PACKAGES = (
    ("site-packages/sqlalchemy/", "sqlalchemy"),
    ("site-packages/psycopg", "psycopg"),
    ("site-packages/starlette/", "starlette"),
    ("site-packages/fastapi/", "fastapi"),
    ("site-packages/uvicorn/", "uvicorn"),
    ("site-packages/anyio/", "anyio"),
    ("site-packages/pydantic", "pydantic"),
    ("site-packages/fhir", "fhir.resources"),
    ("site-packages/opentelemetry/", "opentelemetry"),
    ("site-packages/prometheus_client/", "prometheus_client"),
    ("site-packages/redis/", "redis"),
    ("site-packages/cryptography/", "cryptography"),
    ("site-packages/orjson", "orjson"),
    ("site-packages/jsonschema_rs", "jsonschema_rs"),
    ("site-packages/h11/", "h11"),
    ("site-packages/httptools/", "httptools"),
    ("site-packages/uvloop/", "uvloop"),
    ("site-packages/", "other libraries"),
    ("carnet/", "carnet"),
    ("/lib/python3", "stdlib"),
)


def _package(frame: str) -> str:
    for marker, name in _PACKAGES:
        if marker in frame:
            if name == "carnet":
                # carnet/<context>/...: which bounded context
                rest = frame.split("carnet/", 1)[1]
                return "carnet." + rest.split("/", 1)[0].split(".py", 1)[0]
            return name
    return "native/other"


# Leaf frames that are a thread waiting, not working: py-spy sees a C-level wait (psycopg's
# wait_c, uvloop's epoll, a lock) as its Python caller, busy; these samples are not CPU.
_WAITS = (
    ("Connection.wait", "psycopg/connection.py"),
    ("Runner.run", "asyncio/runners.py"),
    ("Condition.wait", "threading.py"),
    ("Queue.get", "queue.py"),
    ("SocketBuffer._read_from_socket", "redis/"),
    ("Connection._recv", "multiprocessing/connection.py"),
    ("Event.wait", "threading.py"),
)


def summarize(collapsed: str, top: int = 40) -> str:
    """Self time by package and by function, inclusive time by function, from py-spy's collapsed
    stacks ("frame;frame;... count" per line), samples of a thread waiting left out."""
    self_by_package: collections.Counter[str] = collections.Counter()
    self_by_function: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = waited = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        name, _, where = frames[-1].partition(" (")
        if any(name == function and path in where for function, path in _WAITS):
            waited += count
            continue
        total += count
        self_by_package[_package(frames[-1])] += count
        self_by_function[_function(frames[-1])] += count
        for function in {_function(f) for f in frames}:
            inclusive[function] += count
    if not total:
        return "(no samples)"
    out = [f"{total:,} samples working ({waited:,} waiting, left out)", ""]
    out += ["| self time by package | share |", "|---|---|"]
    out += [f"| {name} | {n / total:.1%} |" for name, n in self_by_package.most_common()]
    out += ["", "| self time by function | share |", "|---|---|"]
    out += [f"| `{name}` | {n / total:.1%} |" for name, n in self_by_function.most_common(top)]
    out += ["", "| inclusive time by function | share |", "|---|---|"]
    out += [f"| `{name}` | {n / total:.1%} |" for name, n in inclusive.most_common(top * 2)]
    return "\n".join(out)


def _function(frame: str) -> str:
    """'name (path/to/file.py:12)' -> 'name (file.py)'"""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    short = "/".join(path.split("/")[-2:])
    return f"{name} ({short})"


def _workers(server_pid: int) -> list[int]:
    """uvicorn's worker processes (children of its supervisor; not the multiprocessing tracker)."""
    out = []
    for child in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"resource_tracker" not in cmdline:
            out.append(int(child))
    return out


@dataclass(frozen=True)
class ServerSpec:
    """How a server is started (benchmarks.fhir_load.start_server): its workers, request threads
    per worker (None: the setting's default), the server program, another checkout's code."""

    workers: int = 2
    threads: int | None = None
    server: str = "balanced"
    code: Path | None = None

    def label(self) -> str:
        threads = "" if self.threads is None else f" x {self.threads} threads"
        return f"{self.code or 'this checkout'}, {self.server}, {self.workers} workers{threads}"


def run(
    *,
    patients: int,
    seconds: float,
    clients: int,
    workers: int,
    rounds: int,
    profile: Path | None,
    compare_with: Path | None = None,
    spec: ServerSpec | None = None,
    other: ServerSpec | None = None,
    gil: bool = False,
) -> str:
    """`other` (or `compare_with`, another checkout's code): a second server reading the same
    pairs in the same rounds, in turns with the first."""
    spec = spec or ServerSpec(workers=workers)
    if other is None and compare_with is not None:
        other = ServerSpec(spec.workers, spec.threads, spec.server, compare_with)
    with bench_database("readprofile") as url, tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        FileKeyProvider.create(var / "keys.json")
        runtime = build_runtime(Settings(env=Environment.TEST, var_dir=var, database_url=url, origin=ORIGIN))
        try:
            return _measure(runtime, url, var, patients, seconds, clients, rounds, profile, spec, other, gil)
        finally:
            runtime.close()


@dataclass
class _Served:
    label: str
    server: subprocess.Popen[bytes]
    base: str
    reads_per_s: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    app_ms: list[float] = field(default_factory=list)
    db_ms: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)


def _measure(
    runtime: Runtime,
    url: str,
    var: Path,
    patients: int,
    seconds: float,
    clients: int,
    rounds: int,
    profile: Path | None,
    spec: ServerSpec,
    other: ServerSpec | None,
    gil: bool = False,
) -> str:
    load_start = os.getloadavg()
    facility = make_facility(runtime)
    ids, _ = seed_patients(runtime, facility, 0, patients)
    history: list[tuple[uuid.UUID, list[uuid.UUID]]] = []
    clinicians = make_clinicians(runtime, facility, ids, min(clients, len(ids) // 30), history=history)
    baseline_accounts(runtime, history)
    analyze(runtime)
    redis.Redis.from_url(REDIS_URL).flushdb()
    served = []
    for each in (spec, *([other] if other is not None else [])):
        started = start_server(
            url, var, each.workers, code=each.code, threads=each.threads, server=each.server
        )
        served.append(_Served(each.label(), *started))
    lines = []
    watch = RedisWatch(REDIS_URL).start()  # Redis's longest wait, beside every round
    try:
        health_pairs: list[Pair] = [({}, "/healthz")]
        read_pairs = [(c.headers, f"/fhir/Patient/{p}") for c in clinicians for p in c.patients]
        random.Random(1).shuffle(read_pairs)
        errors = 0
        for s in served:
            errors += wrk_load(s.base, "warm-up", clients, min(seconds, 5), read_pairs).errors
        analyze(runtime)  # the trail the warm-up wrote, as autovacuum would (fhir_load.analyze)
        health_per_s = []
        for r in range(rounds):
            health = wrk_load(served[0].base, "/healthz", clients, seconds, health_pairs)
            errors += health.errors
            health_per_s.append(health.throughput)
            # Each round reads through every server, in turns, so each sees the same neighbours.
            for s in served[r % len(served) :] + served[: r % len(served)]:
                before = cpu_seconds(s.server.pid, url)
                reads = wrk_load(s.base, "Patient read", clients, seconds, read_pairs)
                after = cpu_seconds(s.server.pid, url)
                errors += reads.errors
                n = max(1, reads.requests)
                s.app_ms.append((after[0] - before[0]) / n * 1000)
                s.db_ms.append((after[1] - before[1]) / n * 1000)
                s.ratios.append(reads.throughput / health.throughput)
                s.p99s.append(reads.pct(99))
                s.reads_per_s.append(reads.throughput)
        lines += [
            f"load average {load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (2 cores)",
            watch.summary(),
            *([note] if (note := scheduler_note()) is not None else []),
            "",
            "| per round | " + " | ".join(str(i + 1) for i in range(rounds)) + " | median |",
            "|---|" + "---|" * (rounds + 1),
            _line("/healthz, reads/s", health_per_s, "{:,.0f}"),
        ]
        for s in served:
            total = [a + d for a, d in zip(s.app_ms, s.db_ms, strict=True)]
            lines += [
                f"| **{s.label}** |" + " |" * (rounds + 1),
                _line("guarded reads/s", s.reads_per_s, "{:,.0f}"),
                _line("reads / /healthz", s.ratios, "{:.3f}x"),
                _line("CPU per read, app (ms)", s.app_ms, "{:.2f}"),
                _line("CPU per read, PostgreSQL (ms)", s.db_ms, "{:.2f}"),
                _line("CPU per read, app + PostgreSQL (ms)", total, "{:.2f}"),
                _line("read p99 (ms)", s.p99s, "{:.1f}"),
            ]
        if len(served) == 2:
            mine, other = served
            lines += [
                "",
                "the first server against the second, same rounds (median of the per-round ratios):",
                _line(
                    "CPU per read, app + PostgreSQL",
                    [
                        (a + d) / (oa + od)
                        for a, d, oa, od in zip(
                            mine.app_ms, mine.db_ms, other.app_ms, other.db_ms, strict=True
                        )
                    ],
                    "{:.2f}x",
                ),
                _line(
                    "CPU per read, app",
                    [a / o for a, o in zip(mine.app_ms, other.app_ms, strict=True)],
                    "{:.2f}x",
                ),
                _line(
                    "read throughput",
                    [a / o for a, o in zip(mine.reads_per_s, other.reads_per_s, strict=True)],
                    "{:.2f}x",
                ),
            ]
        lines += ["", f"errors in measured requests: {errors}"]
        if profile is not None:
            for k, s in enumerate(served):
                out = profile if k == 0 else profile.with_suffix(".other" + profile.suffix)
                lines += [
                    "",
                    f"### profile: {s.label}",
                    "",
                    _profiled(s.server.pid, s.base, clients, seconds, read_pairs, out, gil=gil),
                ]
    finally:
        watch.stop()
        for s in served:
            s.server.terminate()
            s.server.wait(timeout=30)
    return "\n".join(lines)


def _line(label: str, values: list[float], fmt: str) -> str:
    cells = " | ".join(fmt.format(v) for v in values)
    return f"| {label} | {cells} | **{fmt.format(statistics.median(values))}** |"


def _profiled(
    server_pid: int,
    base: str,
    clients: int,
    seconds: float,
    pairs: list[Pair],
    out: Path,
    *,
    gil: bool = False,
) -> str:
    spy = str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        spy = shutil.which("py-spy") or "py-spy"
    duration = max(2, round(seconds) - 1)
    recorders = []
    with tempfile.TemporaryDirectory() as tmp:
        for pid in _workers(server_pid):
            raw = Path(tmp) / f"{pid}.txt"
            recorders.append(
                (
                    raw,
                    subprocess.Popen(
                        [spy, "record", "--format", "raw", "--rate", "200", "--duration", str(duration),
                         "--pid", str(pid), "--output", str(raw), "--nonblocking",
                         *(["--gil"] if gil else [])],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    ),
                )
            )  # fmt: skip
        wrk_load(base, "Patient read (profiled)", clients, seconds, pairs)
        collapsed = []
        for raw, process in recorders:
            process.wait(timeout=120)
            if raw.exists():
                collapsed.append(raw.read_text())
    text = "".join(collapsed)
    out.write_text(text)
    return f"py-spy, {len(recorders)} workers, {duration} s at 200 Hz (raw stacks: {out})\n\n" + summarize(
        text
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the workers; raw stacks here")
    parser.add_argument(
        "--compare-with",
        type=Path,
        default=None,
        help="a directory holding another carnet checkout (e.g. `git archive main | tar -x -C DIR`): "
        "its server reads the same pairs in the same rounds",
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (a holder preempted included)",
    )
    parser.add_argument("--threads", type=int, default=None, help="request threads per worker")
    parser.add_argument("--server", choices=("uvicorn", "granian", "balanced"), default="balanced")
    parser.add_argument(
        "--other-workers", type=int, default=None, help="a second server, this checkout's code"
    )
    parser.add_argument("--other-threads", type=int, default=None)
    parser.add_argument("--other-server", choices=("uvicorn", "granian", "balanced"), default=None)
    args = parser.parse_args()
    spec = ServerSpec(args.workers, args.threads, args.server)
    other = None
    if args.compare_with or args.other_workers or args.other_threads or args.other_server:
        other = ServerSpec(
            args.other_workers or spec.workers,
            args.other_threads if args.other_threads is not None else spec.threads,
            args.other_server or spec.server,
            args.compare_with,
        )
    print(
        run(
            patients=args.patients,
            seconds=args.seconds,
            clients=args.clients,
            workers=args.workers,
            rounds=args.rounds,
            profile=args.profile,
            gil=args.gil,
            spec=spec,
            other=other,
        )
    )


if __name__ == "__main__":
    main()
