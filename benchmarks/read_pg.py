"""PostgreSQL's CPU per guarded Patient read, by statement: this checkout against another one,
each on its own database (migrated by its own code), interleaved in the same run.

    CARNET_BENCH_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:5451/postgres \\
    .venv/bin/python -m benchmarks.read_pg --compare-with /tmp/base [--reads 400] [--rounds 3]
        [--clients 64 --seconds 10]

`--compare-with`: a directory holding another carnet checkout (`git archive main | tar -x -C DIR`).
Each checkout runs in a worker process of its own (PYTHONPATH), which creates, migrates and seeds
its database as `benchmarks.read_calls` does (20 physicians, 30 patients each in their care,
four weeks of history, detection on with Redis database CARNET_BENCH_REDIS_URL), then, in turns:

- `--reads` reads one at a time, in process (the ASGI app called as uvicorn calls it): the CPU
  of the database's backends (/proc, user + system) per read, and per statement the calls per
  read and the execution time per read from pg_stat_statements (when the server loads it:
  `shared_preload_libraries = 'pg_stat_statements'` and `pg_stat_statements.track = all`, which a
  private cluster of one's own can have; nested statements are counted inside their caller too);
- with `--clients`, the same reads served by uvicorn (2 workers) under wrk for `--seconds`: the
  backends' CPU per read and reads/s at that concurrency.

Backend CPU is a CPU clock, but on this shared 2-core machine it still moves by tens of percent
with the load (cache and sibling-thread contention): the ratio of the two checkouts is taken per
round, then the median, and a change of a few percent needs the replay below.

`--replay-from LOG --reads N [--skip patient,...]` prints a script for PostgreSQL's single-user
mode replaying one logged read (`replay_script`): run under callgrind for two values of N, the
difference of the instruction counts is PostgreSQL's work per read, exact at any load (the
commands are in docs/BENCHMARKS.md, section "s10-pg"). With `--replay-to CONNINFO`, the same read
is sent over the protocol, two pipelines a read as the app sends them, to a server (run under
callgrind: `replay_protocol`, docs/BENCHMARKS.md section "s11-pg"). Drops its databases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (a worker on another checkout): that checkout's modules
    sys.path[0] = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or str(Path(__file__).parents[1])


def _backends(url: str) -> list[int]:
    import sqlalchemy as sa

    from benchmarks._db import ADMIN_URL
    from carnet.db.engine import make_engine

    engine = make_engine(ADMIN_URL)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
                    ),
                    {"d": sa.engine.make_url(url).database},
                ).scalars()
            )
    finally:
        engine.dispose()


def _statements(url: str) -> dict[str, tuple[int, float, int, float]]:
    """pg_stat_statements of this database: query text -> (calls, execution ms, plans, planning
    ms; plans only with `pg_stat_statements.track_planning`)."""
    import sqlalchemy as sa

    from benchmarks._db import ADMIN_URL
    from carnet.db.engine import make_engine

    engine = make_engine(ADMIN_URL)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT s.query, s.calls, s.total_exec_time, s.plans, s.total_plan_time"
                    " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = :d"
                ),
                {"d": sa.engine.make_url(url).database},
            ).all()
    except sa.exc.DBAPIError:
        return {}  # pg_stat_statements not loaded: CPU figures only
    finally:
        engine.dispose()
    out: dict[str, tuple[int, float, int, float]] = {}
    for query, calls, total, plans, planning in rows:
        c, t, p, pt = out.get(query, (0, 0.0, 0, 0.0))
        out[query] = (c + int(calls), t + float(total), p + int(plans), pt + float(planning))
    return out


def _wal() -> tuple[int, int, int]:
    """The cluster's WAL so far: (records, full-page images, bytes) (every database's)."""
    import sqlalchemy as sa

    from benchmarks._db import ADMIN_URL
    from carnet.db.engine import make_engine

    engine = make_engine(ADMIN_URL)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")).one()
    finally:
        engine.dispose()
    return int(row[0]), int(row[1]), int(row[2])


def _cpu(pids: list[int]) -> float:
    from benchmarks.fhir_load import _cpu as cpu

    return sum(cpu(p) for p in pids)


def worker() -> None:
    """One checkout: set up, then answer the driver's commands (one JSON line each) on stdin."""
    import redis

    from benchmarks._db import bench_database
    from benchmarks.fhir_load import (
        ORIGIN,
        baseline_accounts,
        make_clinicians,
        seed_patients,
        start_server,
        wrk_load,
    )
    from benchmarks.read_calls import REDIS_URL, _call, _scope
    from carnet.app import create_app
    from carnet.crypto.keys import FileKeyProvider
    from carnet.runtime import build_runtime
    from carnet.settings import Environment, Settings
    from tests.factories import make_facility

    warnings.simplefilter("ignore")
    with bench_database(f"readpg{os.getpid()}") as url, tempfile.TemporaryDirectory() as tmp:
        var = Path(tmp)
        FileKeyProvider.create(var / "keys.json")
        settings = Settings(
            env=Environment.TEST, var_dir=var, database_url=url, origin=ORIGIN, redis_url=REDIS_URL
        )
        runtime = build_runtime(settings)
        server = None
        try:
            redis.Redis.from_url(REDIS_URL).flushdb()
            facility = make_facility(runtime)
            ids, _ = seed_patients(runtime, facility, 0, 600)
            history: list[tuple[uuid.UUID, list[uuid.UUID]]] = []
            clinicians = make_clinicians(runtime, facility, ids, 20, history=history)
            baseline_accounts(runtime, history)
            pairs = [(c.headers, f"/fhir/Patient/{p}") for c in clinicians for p in c.patients]
            random.Random(1).shuffle(pairs)
            scopes = [_scope(h, p) for h, p in pairs]
            app = create_app(runtime)
            loop = asyncio.new_event_loop()
            lifespan = app.router.lifespan_context(app)
            loop.run_until_complete(lifespan.__aenter__())
            for scope in scopes[:100]:  # warm: pools, prepared statements, caches
                loop.run_until_complete(_call(app, scope))
            at = 100
            # The in-process app's own backends, before any server's: a served round's leftovers
            # (requests uvicorn still answers after wrk stopped) are not counted in a serial one.
            serial_pids = _backends(url)
            print(json.dumps({"ready": True}), flush=True)
            for line in sys.stdin:
                command = json.loads(line)
                if command["do"] == "serial":
                    n = command["reads"]
                    pids = serial_pids
                    statements, wal, cpu, began = _statements(url), _wal(), _cpu(pids), time.process_time()
                    for k in range(n):
                        loop.run_until_complete(_call(app, scopes[(at + k) % len(scopes)]))
                    at += n
                    answer: dict[str, Any] = {
                        "db_ms": 1000 * (_cpu(pids) - cpu) / n,
                        "app_ms": 1000 * (time.process_time() - began) / n,
                        "wal": [(b - a) / n for a, b in zip(wal, _wal(), strict=True)],
                        "statements": _per_read(statements, _statements(url), n),
                    }
                else:  # served, under wrk
                    if server is None:
                        server, base = start_server(url, var, 2)
                        wrk_load(base, "warm-up", command["clients"], 3, pairs)
                    pids = _backends(url)
                    cpu = _cpu(pids)
                    result = wrk_load(base, "Patient read", command["clients"], command["seconds"], pairs)
                    pids = sorted(set(pids) | set(_backends(url)))
                    answer = {
                        "db_ms": 1000 * (_cpu(pids) - cpu) / max(1, result.requests),
                        "reads_per_s": result.throughput,
                        "errors": result.errors,
                    }
                print(json.dumps(answer), flush=True)
            loop.run_until_complete(lifespan.__aexit__(None, None, None))
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
            runtime.close()


def _per_read(
    before: dict[str, tuple[int, float, int, float]], after: dict[str, tuple[int, float, int, float]], n: int
) -> list[Any]:
    out = []
    for query, (calls, total, plans, planning) in after.items():
        c0, t0, p0, pt0 = before.get(query, (0, 0.0, 0, 0.0))
        if calls - c0 >= n // 2:
            text = " ".join(query.split())[:150]
            out.append((text, (calls - c0) / n, (total - t0) / n, (plans - p0) / n, (planning - pt0) / n))
    return sorted(out, key=lambda x: -x[2] - x[4])


class _Worker:
    def __init__(self, label: str, code: Path | None) -> None:
        env = dict(os.environ)
        if code is not None:
            env["PYTHONPATH"] = str(code)
        self.label = label
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(code or Path(__file__).parents[1]),
        )
        self.serial: list[dict[str, Any]] = []
        self.served: list[dict[str, Any]] = []

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        if command:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label}: the worker ended")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=120)


def run(compare_with: Path | None, reads: int, rounds: int, clients: int, seconds: float) -> str:
    load_start = os.getloadavg()[0]
    workers = [_Worker("this checkout", None)]
    if compare_with is not None:
        workers.append(_Worker(f"{compare_with}", compare_with))
    try:
        for w in workers:
            w.ask()  # ready
        for r in range(rounds):
            for w in workers[r % len(workers) :] + workers[: r % len(workers)]:
                w.serial.append(w.ask(do="serial", reads=reads))
            if clients:
                for w in workers[r % len(workers) :] + workers[: r % len(workers)]:
                    w.served.append(w.ask(do="served", clients=clients, seconds=seconds))
    finally:
        for w in workers:
            w.close()
    lines = [f"load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (2 cores)", ""]
    lines += ["| per round | " + " | ".join(str(i + 1) for i in range(rounds)) + " | median |"]
    lines += ["|---|" + "---|" * (rounds + 1)]

    def row(label: str, values: list[float], fmt: str) -> str:
        cells = " | ".join(fmt.format(v) for v in values)
        return f"| {label} | {cells} | {fmt.format(statistics.median(values))} |"

    for w in workers:
        lines.append(f"| **{w.label}** |" + " |" * (rounds + 1))
        lines.append(
            row(
                f"PostgreSQL CPU per read, one at a time (ms, {reads} reads)",
                [s["db_ms"] for s in w.serial],
                "{:.3f}",
            )
        )
        lines.append(row("app CPU per read, one at a time (ms)", [s["app_ms"] for s in w.serial], "{:.3f}"))
        lines.append(row("WAL records per read", [s["wal"][0] for s in w.serial], "{:.1f}"))
        lines.append(row("WAL full-page images per read", [s["wal"][1] for s in w.serial], "{:.2f}"))
        lines.append(row("WAL bytes per read", [s["wal"][2] for s in w.serial], "{:,.0f}"))
        if clients:
            lines.append(
                row(
                    f"PostgreSQL CPU per read, {clients} clients (ms)",
                    [s["db_ms"] for s in w.served],
                    "{:.3f}",
                )
            )
            lines.append(row(f"reads/s, {clients} clients", [s["reads_per_s"] for s in w.served], "{:,.0f}"))
    if len(workers) == 2:
        a, b = workers
        lines.append("| **this checkout / the other, per round** |" + " |" * (rounds + 1))
        lines.append(
            row(
                "PostgreSQL CPU per read, one at a time",
                [x["db_ms"] / y["db_ms"] for x, y in zip(a.serial, b.serial, strict=True)],
                "{:.3f}x",
            )
        )
        if clients:
            lines.append(
                row(
                    f"PostgreSQL CPU per read, {clients} clients",
                    [x["db_ms"] / y["db_ms"] for x, y in zip(a.served, b.served, strict=True)],
                    "{:.3f}x",
                )
            )
            lines.append(
                row(
                    f"reads/s, {clients} clients",
                    [x["reads_per_s"] / y["reads_per_s"] for x, y in zip(a.served, b.served, strict=True)],
                    "{:.3f}x",
                )
            )
    for w in workers:
        last = w.serial[-1]["statements"]
        if last:
            lines += [
                "",
                f"{w.label}, last round, per read (pg_stat_statements;"
                " nested statements counted in their caller too):",
                "",
            ]
            lines += ["| statement | calls | exec ms | plans | planning ms |", "|---|---|---|---|---|"]
            lines += [f"| `{q}` | {c:.2f} | {t:.4f} | {p:.2f} | {pt:.4f} |" for q, c, t, p, pt in last]
    errors = sum(s.get("errors", 0) for w in workers for s in w.served)
    if errors:
        lines.append(f"\n{errors} errors in the served rounds")
    return "\n".join(lines)


_TAGS = (
    ("SELECT carnet_scope", "session"),  # session, account, grants, state, with the scope (0014)
    ("SELECT auth_sessions", "session"),
    ("SELECT set_config", "scope"),
    ("WITH session_actor", "patient"),
    ("SELECT patients.", "patient"),
    ("INSERT INTO exposures", "exposure"),
    ("WITH carnet_exposure", "append"),  # the exposure row written by the audit append
    ("WITH link", "append"),
)


def _logged_read(log: str) -> list[tuple[str, str, list[str]]]:
    """The first read (BEGIN ... COMMIT) of the backend that ran the audit append most in a log
    written with `log_statement = 'all'`, `log_parameter_max_length = -1`: (tag, SQL, each
    parameter as logged: NULL or a quoted literal) for each statement between BEGIN and COMMIT,
    the exposure row's id replaced by `gen_random_uuid()`; tag "raw" for an unprepared command
    (the round trip's SAVEPOINT)."""
    import collections
    import re

    entries = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ UTC \[\d+\] (?:LOG|DETAIL):)", log)
    by_pid: dict[str, list[list[str]]] = collections.defaultdict(list)
    for entry in entries:
        if m := re.match(r".*? \[(\d+)\] LOG:  execute (\S+): (.*)", entry, re.S):
            by_pid[m.group(1)].append([m.group(2), " ".join(m.group(3).split()), ""])
        elif (m := re.match(r".*? \[(\d+)\] DETAIL:  parameters: (.*)", entry, re.S)) and by_pid[m.group(1)]:
            by_pid[m.group(1)][-1][2] = m.group(2).strip()
    pid = max(by_pid, key=lambda p: sum("carnet_audit_link" in q for _n, q, _p in by_pid[p]))
    statements = by_pid[pid]
    texts = [q for _n, q, _p in statements]
    begin = texts.index("BEGIN")
    commit = texts.index("COMMIT", begin)
    out: list[tuple[str, str, list[str]]] = []
    for name, query, parameters in statements[begin + 1 : commit]:
        if name == "<unnamed>":
            out.append(("raw", query, []))
            continue
        tag = next((t for prefix, t in _TAGS if query.startswith(prefix)), "other")
        values = [m.group(2) for m in re.finditer(r"\$(\d+) = (NULL|'(?:[^']|'')*')", parameters)]
        if tag == "exposure":
            values[-1] = "gen_random_uuid()"  # the row's id: a new one each time
        if query.startswith("WITH carnet_exposure"):
            values[8] = "gen_random_uuid()"  # the exposure row's id, its ninth value
        out.append((tag, query, values))
    return out


def replay_script(log: str, reads: int, skip: frozenset[str] = frozenset()) -> str:
    """A script for `postgres --single` replaying the first read found in a server log written
    with `log_statement = 'all'`, `log_parameter_max_length = -1` (`_logged_read`): its
    statements PREPAREd, then `reads` times BEGIN, each EXECUTE with the logged parameters (the
    exposure row with a new id each time), COMMIT. Run under `valgrind --tool=callgrind` for
    N and for M reads, the difference of the instruction counts over M - N is PostgreSQL's work
    per read, exactly, whatever the machine's load; leaving statements out (`skip`: session,
    scope, patient, exposure, append, raw) attributes it. Single-user mode also parses each
    EXECUTE line and prints every row in text (a fifth of the count): `replay_protocol` replays
    over the wire instead, as the app sends it."""
    out, executes = [], []
    for tag, query, values in _logged_read(log):
        if tag in skip:
            continue
        if tag == "raw":
            executes.append(query)
            continue
        out.append(f"PREPARE {tag} AS {query}")
        executes.append(f"EXECUTE {tag}({', '.join(values)})" if values else f"EXECUTE {tag}")
    for _ in range(reads):
        out += ["BEGIN", *executes, "COMMIT"]
    return "\n".join(out) + "\n"


def replay_protocol(log: str, reads: int, conninfo: str) -> int:
    """The first logged read (`_logged_read`) sent `reads` times to the server at `conninfo` as
    the fast read sends it: its statements prepared once, then per read two pipelines (BEGIN and
    the statements up to the round trip's SAVEPOINT; the SAVEPOINT, the rest and COMMIT), each
    one Sync, rows asked in binary. Answers the backend's pid. Against a server run under
    `valgrind --tool=callgrind` (each backend writes its own file when it ends), the difference
    of the backend's instruction counts for N and M reads over M - N is PostgreSQL's work per
    read with the protocol's own (parse, bind, sending rows); the commands are in
    docs/BENCHMARKS.md, section "s11-pg"."""
    import select
    import uuid as uuid_module

    import psycopg
    from psycopg import pq

    read = _logged_read(log)
    trips: list[list[tuple[str, str, list[bytes | None]]]] = [[]]
    names: dict[str, bytes] = {}
    for tag, query, values in read:
        if tag == "raw" and query.startswith("SAVEPOINT"):
            trips.append([])
        if tag != "raw":
            names.setdefault(query, b"replay_%d" % len(names))
        params: list[bytes | None] = [
            None
            if v == "NULL"
            else v.encode()
            if v == "gen_random_uuid()"
            else v[1:-1].replace("''", "'").encode()
            for v in values
        ]
        trips[-1].append((tag, query, params))
    with psycopg.connect(conninfo) as conn:
        pg = conn.pgconn
        for query, name in names.items():
            result = pg.prepare(name, query.encode())
            if result.status != pq.ExecStatus.COMMAND_OK:
                raise RuntimeError(result.get_error_message())

        def drain() -> None:
            while True:
                pg.consume_input()
                while not pg.is_busy():
                    result = pg.get_result()
                    if result is None:
                        continue
                    if result.status == pq.ExecStatus.FATAL_ERROR:
                        raise RuntimeError(result.get_error_message())
                    if result.status == pq.ExecStatus.PIPELINE_SYNC:
                        return
                select.select([pg.socket], [], [], 1)

        for _ in range(reads):
            for number, trip in enumerate(trips):
                pg.enter_pipeline_mode()
                if number == 0:
                    pg.send_query_params(b"BEGIN", None)
                for tag, query, params in trip:
                    if tag == "raw":
                        pg.send_query_params(query.encode(), None)
                        continue
                    fresh = [
                        str(uuid_module.uuid4()).encode() if p == b"gen_random_uuid()" else p for p in params
                    ]
                    pg.send_query_prepared(names[query], fresh, result_format=pq.Format.BINARY)
                if number == len(trips) - 1:
                    pg.send_query_params(b"COMMIT", None)
                pg.pipeline_sync()
                pg.flush()
                drain()
                pg.exit_pipeline_mode()
        return int(pg.backend_pid)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compare-with", type=Path, default=None)
    parser.add_argument("--reads", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--clients", type=int, default=0, help="also served reads under wrk at this concurrency"
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument(
        "--replay-from",
        type=Path,
        default=None,
        help="print a `postgres --single` script replaying the first read of this log (replay_script)",
    )
    parser.add_argument("--skip", default="", help="with --replay-from: statements left out, comma-separated")
    parser.add_argument(
        "--replay-to",
        default=None,
        help="with --replay-from: send the read --reads times to this server (conninfo) over the"
        " protocol instead (replay_protocol); prints the backend's pid",
    )
    args = parser.parse_args()
    if args.replay_from is not None and args.replay_to is not None:
        print(replay_protocol(args.replay_from.read_text(), args.reads, args.replay_to))
        return
    if args.replay_from is not None:
        skip = frozenset(s for s in args.skip.split(",") if s)
        sys.stdout.write(replay_script(args.replay_from.read_text(), args.reads, skip))
        return
    if args.worker:
        worker()
        return
    print(run(args.compare_with, args.reads, args.rounds, args.clients, args.seconds))


if __name__ == "__main__":
    main()
