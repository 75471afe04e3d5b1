"""The FHIR API under load on PostgreSQL: 64 concurrent clients over loopback against carnet served
as `carnet serve --workers 2` serves it (uvicorn, a listening socket per worker) on this machine,
ratios against /healthz measured in the same run.

The server runs as a hospital runs it: PostgreSQL, and Redis for detection counters and
containment flags (CARNET_REDIS_URL). The concurrent reads and searches are driven by `wrk`
(Debian package `wrk`; a C load generator, so the client does not use the cores it measures) with
a Lua script that gives each request its clinician's session cookie; without wrk, by httpx.

1. Guarded Patient read (GET /fhir/Patient/{id}): 64 physicians, each reading the 30 patients
   in their care (so detection, which runs on every request, sees ordinary work); /healthz and
   the reads alternate for --rounds rounds, the headline is the median round.
2. Patient search by identifier (GET /fhir/Patient?identifier=...) at 1,000 and at 100,000
   patients (each physician searches 5 of its own patients: below the enumeration thresholds).
3. Name-only search (GET /fhir/Patient?family=...) by ward physicians with 800 patients in
   their care each, 1 client, at 1,000 and at 100,000 patients.
4. Patient create (POST /fhir/Patient): 64 front-desk accounts, 30 registrations each.
5. `carnet import` (carnet.phi.importer): Bulk NDJSON Patient + Observation, resources per
   second, against the bare encrypted loader writing the same patients (the seeding path).

Every benchmark account has four weeks of ordinary history in the exposure ledger (alternating
day and night shifts) and its baseline computed by the nightly job (`carnet incident
baselines`), as a night-shift clinician's account has: so a run at any hour measures reads, not
the off-hours step-ups a never-seen account gets at night. Detection is not bypassed.

The run exits 1 when any measured request answered an error (or wrk saw a socket error).

    .venv/bin/python -m benchmarks.fhir_load [--patients 100000] [--seconds 20] [--clients 64]

Creates and drops its own database on CARNET_BENCH_POSTGRES_URL (default: the local server) and
empties Redis database CARNET_BENCH_REDIS_URL (default redis://127.0.0.1:6379/11).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import redis
import sqlalchemy as sa
from faker import Faker

from benchmarks._host import RedisWatch, scheduler_note
from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.crypto.blind import name_matches, name_words
from carnet.crypto.keys import FileKeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.detection.baselines import refresh_baselines
from carnet.detection.config import get_detection_config
from carnet.detection.models import ActorAddress, Exposure
from carnet.identity import sessions
from carnet.kernel import clock
from carnet.patients.models import CareRelationship
from carnet.phi.importer import import_files
from carnet.phi.loader import SeedBatch, load_batch
from carnet.phi.system import system_access
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Environment, Settings
from tests.factories import make_account, make_facility, make_practitioner

ADMIN_URL = os.environ.get(
    "CARNET_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CARNET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
ORIGIN = "http://localhost:8000"
# Real-looking French names (as the synthetic hospital has), so name searches and their blind
# prefixes are as selective as in a hospital, not all "Nom0…".
_FAKE = Faker("fr_FR")
_FAKE.seed_instance(18)
FAMILIES = sorted({_FAKE.last_name() for _ in range(3000)})
GIVENS = sorted({_FAKE.first_name() for _ in range(1500)})
WARD_CARE_LIST = 800  # a ward physician's care list (560-826 in the seeded hospital)


def searchable_families(patients: list[uuid.UUID], index_of: dict[uuid.UUID, int], k: int = 5) -> list[str]:
    """k family names of these patients, spread over the list, of 4 letters or more and each
    borne by one patient of the list: a shorter name alone is a partial search, and a name that
    matches several of one's patients is a fragment, both of which detection rightly counts as
    a sweep (a clinician looking one patient up names that patient)."""
    families = [name_of(index_of[p])[0] for p in patients]
    out = []
    for p in patients[::7]:
        name = name_of(index_of[p])[0]
        if len(name.replace(" ", "").replace("-", "")) < 4 or len(name_words(name)[0]) < 4:
            continue
        if sum(1 for f in families if name_matches(f, name)) == 1:
            out.append(name)
    return out[:k]


def name_of(n: int) -> tuple[str, str]:
    """Patient n's (family, given): deterministic, so a search can name its own patients."""
    rng = random.Random(n * 7919 + 17)
    return rng.choice(FAMILIES), rng.choice(GIVENS)


# -- data ---------------------------------------------------------------------------------------
def _ins(n: int) -> str:
    return f"{1 + n % 2}{n:012d}"[:13]


def plain_patient(n: int) -> dict[str, str]:
    """Patient n's identity, the same on every run and in every system compared."""
    rng = random.Random(n * 104729 + 3)
    family, given = name_of(n)
    return {
        "ins": _ins(n),
        "family": family,
        "given": given,
        "birth_date": (dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(90 * 365))).isoformat(),
        "gender": rng.choice(["female", "male"]),
        "phone": f"06{n:08d}"[:10],
        "email": f"p{n}@example.org",
    }


def seed_patients(
    runtime: Runtime, facility: uuid.UUID, start: int, count: int
) -> tuple[list[uuid.UUID], float]:
    """Patients straight through the encrypted loader (the seeding path); (ids, seconds)."""
    ids: list[uuid.UUID] = []
    began = time.perf_counter()
    now = clock.now()
    for chunk in range(start, start + count, 5000):
        batch = SeedBatch()
        for n in range(chunk, min(chunk + 5000, start + count)):
            pid = uuid.uuid4()
            ids.append(pid)
            batch.add(
                "patients",
                {
                    "id": pid,
                    "facility_id": facility,
                    **plain_patient(n),
                    "address": {"line": f"{n} rue du Test", "city": "Paris"},
                    "designated_physician_id": None,
                    "opposes_other_facilities": False,
                    "active": True,
                    "merged_into_id": None,
                    "version_id": 1,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        with system_access(runtime, reason="benchmark seed", operator="bench") as door:
            load_batch(door, batch)
    return ids, time.perf_counter() - began


@dataclass
class Clinician:
    headers: dict[str, str]
    patients: list[uuid.UUID]
    identifiers: list[str]
    actor: Actor | None = None  # for in-process gate calls


def workstation(account_id: uuid.UUID) -> tuple[str, str]:
    """The workstation an account works from: its own network address and browser, as in a
    hospital where each clinician signs in at their own machine. Without it every benchmark
    account shares wrk's one address and client, and detection's one-machine rule (many
    accounts from one machine is one operator) rightly asks them all for a second factor.
    The address reaches carnet as uvicorn's peer address: the benchmark's server trusts
    X-Forwarded-For from loopback only (`--forwarded-allow-ips 127.0.0.1`, wrk standing for a
    load balancer); carnet itself never reads the header."""
    n = account_id.int
    address = f"10.{18 + n % 8}.{n >> 8 & 0xFF}.{1 + (n >> 16) % 250}"
    return address, f"Mozilla/5.0 (carnet-bench ws-{n % 10**8:08d})"


def open_session(runtime: Runtime, account_id: uuid.UUID) -> dict[str, str]:
    address, agent = workstation(account_id)
    with runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=account_id,
            privileged=False,
            second_factor_method="totp",
            address=address,
            user_agent=agent,
        )
    return {
        "Cookie": f"carnet_session={issued.token}",
        "X-CSRF-Token": issued.csrf_token,
        "User-Agent": agent,
        "X-Forwarded-For": address,
    }


def make_clinicians(
    runtime: Runtime,
    facility: uuid.UUID,
    ids: list[uuid.UUID],
    count: int,
    *,
    per: int = 30,
    history: list[tuple[uuid.UUID, list[uuid.UUID]]],
) -> list[Clinician]:
    """`count` physicians with `per` patients each in their care (the lists wrap around `ids`);
    each account and its patients join `history` (see baseline_accounts)."""
    out = []
    for i in range(count):
        practitioner = make_practitioner(runtime, facility)
        actor = make_account(
            runtime, roles=[Role.PHYSICIAN], facility_id=facility, practitioner_id=practitioner
        )
        assert actor.account_id is not None
        start = i * per % len(ids)
        mine = (ids[start:] + ids[:start])[:per]
        history.append((actor.account_id, mine[:30]))
        with system_access(runtime, reason="benchmark care relationships", operator="bench") as door:
            for pid in mine:
                door.session.add(
                    CareRelationship(
                        patient_id=pid,
                        practitioner_id=practitioner,
                        facility_id=facility,
                        kind="care_team",
                        start_at=clock.now() - dt.timedelta(days=1),
                        end_at=None,
                    )
                )
        out.append(Clinician(open_session(runtime, actor.account_id), mine, [], actor))
    return out


def analyze(runtime: Runtime) -> None:
    """Planner statistics, as autovacuum keeps them on a hospital's server: the benchmarks' server
    runs with autovacuum off, and a freshly seeded database without statistics is planned as
    no production one is (s10-pg measured 5% more PostgreSQL work per read without them).

    Called again after the warm-up: a plan a backend cached while the audit trail was a few
    hundred rows long (the foreign-key check of `audit_event_patients`, a sequential scan of
    `audit_events` at that size) is otherwise kept for the connection's life on this server, and
    each append then reads the whole, growing, trail: PostgreSQL's CPU per read rose round after
    round, 0.7 to over 3 ms (session 12). On a hospital's server autovacuum analyzes the trail as
    it grows (each 10%), which invalidates such plans; the ANALYZE after the warm-up stands for
    that."""
    if runtime.engine.dialect.name == "postgresql":
        with runtime.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE"))


def baseline_accounts(runtime: Runtime, history: list[tuple[uuid.UUID, list[uuid.UUID]]]) -> int:
    """Four weeks of ordinary work for each benchmark account, then the nightly baseline job.

    Each account was shown its patients once a shift, on days 2 to 28 before today, alternating
    day shifts (10:30 Paris time) and night shifts (23:30): a night-shift clinician's history, so
    the off-hours rule knows the account works at night, and the volume rule knows its usual
    level. The history ends two days ago: nothing of it falls in the live windows. Returns the
    exposures written."""
    config = get_detection_config()
    paris = zoneinfo.ZoneInfo(config.timezone)
    today = clock.now().astimezone(paris).date()
    rows: list[dict[str, Any]] = []
    for account_id, patients in history:
        for days_ago in range(2, 29):
            hour = 23 if days_ago % 2 else 10
            day = today - dt.timedelta(days=days_ago)
            shift = dt.datetime.combine(day, dt.time(hour, 30), tzinfo=paris).astimezone(dt.UTC)
            for k, pid in enumerate(patients):
                rows.append(
                    {
                        "id": uuid.uuid4(),
                        "actor_ref": f"account:{account_id}",
                        "patient_id": pid,
                        "channel": "chart",
                        "resource_type": "Patient",
                        "at": shift + dt.timedelta(seconds=40 * k),
                        "audit_seq": None,
                        "outside_care": False,
                        "fields": None,
                    }
                )
    # Each account's workstation is one it has used before (no new-address signal on the run).
    first_seen = clock.now() - dt.timedelta(days=28)
    addresses = [
        {"actor_ref": f"account:{a}", "address": workstation(a)[0], "first_seen_at": first_seen}
        for a, _ in history
    ]
    with runtime.session_factory.begin() as session:
        session.execute(sa.insert(Exposure), rows)
        session.execute(sa.insert(ActorAddress), addresses)
        refresh_baselines(session, config=config)
    return len(rows)


# -- load -------------------------------------------------------------------------------------
@dataclass
class Result:
    label: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


Request = Callable[[int, int], tuple[str, str, dict[str, str], Any]]


async def load(
    base: str, label: str, clients: int, seconds: float, make: Request, limit: int | None = None
) -> Result:
    """`clients` loops for `seconds` (or `limit` requests each); make(client, n) -> request."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    # A connection idle past uvicorn's keep-alive (5 s) is closed by the server; httpx's default
    # expiry is the same 5 s, so a request sent on one just then met the close (a ReadError on
    # a create, which httpx does not retry): the client lets its idle connections go first.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=1.0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:

        async def worker(c: int) -> None:
            nonlocal errors
            n = 0
            while time.perf_counter() < deadline and (limit is None or n < limit):
                method, path, headers, body = make(c, n)
                began = time.perf_counter()
                try:
                    response = await http.request(method, path, headers=headers, json=body)
                    status, text = response.status_code, response.text[:200]
                except httpx.HTTPError as exc:  # a dropped connection counts as an error
                    status, text = 0, type(exc).__name__
                latencies.append((time.perf_counter() - began) * 1000)
                if status >= 300 or status == 0:
                    errors += 1
                    if errors <= 3:
                        print(f"  {label}: {status} {text}", file=sys.stderr)
                n += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in range(clients)))
        elapsed = time.perf_counter() - began
    return Result(label, len(latencies), errors, elapsed, latencies)


Pair = tuple[dict[str, str], str]  # (headers, path) of one GET
Post = tuple[dict[str, str], str, str]  # (headers, path, JSON body) of one POST


def wrk_load(
    base: str,
    label: str,
    clients: int,
    seconds: float,
    pairs: list[Pair] | list[Post],
    error_marker: str | None = None,
) -> Result:
    """GETs (or POSTs, for entries with a body) with wrk, round-robin over `pairs`; the same
    Result shape (latencies are wrk's own percentiles, so pct() reads them back). A 2xx answer
    whose body contains `error_marker` counts as an error too (JSON-RPC answers errors in 200s)."""
    entries = [(e[0], e[1], e[2] if len(e) == 3 else None) for e in pairs]
    if shutil.which("wrk") is None:

        def make(c: int, n: int) -> tuple[str, str, dict[str, str], Any]:
            headers, path, body = entries[(c * 7919 + n) % len(entries)]
            return (
                ("GET" if body is None else "POST"),
                path,
                headers,
                None if body is None else json.loads(body),
            )

        return asyncio.run(load(base, label, clients, seconds, make))

    def lua_entry(headers: dict[str, str], path: str, body: str | None) -> str:
        table = ", ".join(
            f"[{json.dumps(k)}] = {json.dumps(v, ensure_ascii=False)}" for k, v in headers.items()
        )
        method = "GET" if body is None else "POST"
        lua_body = json.dumps(body, ensure_ascii=False) if body else "nil"
        return f"{{{json.dumps(path)}, {{{table}}}, {json.dumps(method)}, {lua_body}}}"

    marker = (
        "response = function(status, headers, body)\n"
        f"  if string.find(body, {json.dumps(error_marker)}, 1, true) then bad = bad + 1 end\n"
        "end\n"
        if error_marker
        else ""
    )
    lua_pairs = ",\n".join(lua_entry(*e) for e in entries)
    script = (
        "local threads = {}\n"
        "setup = function(thread) table.insert(threads, thread) end\n"
        "init = function(args) bad = 0 end\n"
        f"local pairs_ = {{\n{lua_pairs}\n}}\n"
        "local counter = math.random(#pairs_)\n"
        "request = function()\n"
        "  counter = counter % #pairs_ + 1\n"
        "  local p = pairs_[counter]\n"
        "  return wrk.format(p[3], p[1], p[2], p[4])\n"
        "end\n"
        f"{marker}"
        "done = function(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        "  local b = 0\n"
        "  for _, t in ipairs(threads) do b = b + (t:get('bad') or 0) end\n"
        '  io.write(string.format("RESULT %d %f %d %d %d %d %d\\n", summary.requests,\n'
        "    summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status + b,\n"
        "    latency:percentile(50), latency:percentile(99), latency.max))\n"
        "end\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        threads = max(1, min(2, clients))
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
             "-s", f.name, base],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    finally:
        os.unlink(f.name)
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    requests, duration, socket_errors, status_errors, p50, p99, _max = (float(v) for v in line.split()[1:])
    # Two latencies stand for the distribution: pct() interpolates between them.
    return WrkResult(
        label, int(requests), int(socket_errors + status_errors), duration, [], p50 / 1000, p99 / 1000
    )


@dataclass
class WrkResult(Result):
    p50_ms: float = 0.0
    p99_ms: float = 0.0

    def pct(self, q: float) -> float:
        return self.p50_ms if q <= 50 else self.p99_ms


def cpu_seconds(server_pid: int, url: str) -> tuple[float, float]:
    """CPU (user + system) used so far by the server's processes, and by the PostgreSQL backends
    connected to this run's database (other databases' work is not counted)."""
    database = sa.engine.make_url(url).database
    engine = make_engine(ADMIN_URL)
    with engine.connect() as conn:
        backends = (
            conn.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                {"d": database},
            )
            .scalars()
            .all()
        )
    engine.dispose()
    return _tree_cpu([server_pid]), sum(_cpu(pid) for pid in backends)


def audit_rows_scanned(runtime: Runtime) -> int:
    """Rows of `audit_events` read by sequential scans so far in this run's database, as the
    backends reported them (each at most a second late while it works). A read appends to the
    trail and looks it up by key only: a sequential scan of it is a plan made while it was small
    (see `analyze`)."""
    with runtime.engine.connect() as conn:
        scanned = conn.execute(
            sa.text(
                "SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables"
                " WHERE relname = 'audit_events'"
            )
        ).scalar()
    return int(scanned or 0)


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # ended meanwhile
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        total += _cpu(pid)
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        total += _tree_cpu([int(c) for c in children])
    return total


# -- server -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(
    url: str,
    var: Path,
    workers: int,
    *,
    general_only: bool = False,
    factory: str = "carnet.app:create_app",
    code: Path | None = None,
    threads: int | None = None,
    server: str = "balanced",
) -> tuple[subprocess.Popen[bytes], str]:
    """carnet served as `carnet serve` serves it; `general_only`: every gate operation on the
    kernel's general path (no fast read), to measure one path against the other in the same run;
    `code`: the carnet of another checkout (a copy of an earlier commit), to measure a change
    against it; `threads`: request threads per worker (CARNET_REQUEST_THREADS); `server`:
    "balanced" (what `carnet serve --workers N` runs: a listening socket per worker), "uvicorn"
    (uvicorn's own workers on one shared socket) or "granian", to measure one against another.
    Both trust X-Forwarded-For from loopback, so each clinician reads from a workstation of its own."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}
    if general_only:
        env["CARNET_GATE_GENERAL_ONLY"] = "1"
    env.update(
        {
            "CARNET_ENV": "test",
            "CARNET_VAR_DIR": str(var),
            "CARNET_DATABASE_URL": url,
            "CARNET_ORIGIN": ORIGIN,
            "CARNET_REDIS_URL": REDIS_URL,
        }
    )
    if threads is not None:
        env["CARNET_REQUEST_THREADS"] = str(threads)
    if code is not None:
        env["PYTHONPATH"] = str(code)  # ahead of this checkout's editable install
    if server == "granian":
        env["CARNET_BENCH_FACTORY"] = factory
        command = [
            sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--log-level", "warning",
            "--no-access-log", "benchmarks.fhir_load:proxied_app",
        ]  # fmt: skip
    elif server == "balanced":
        # `carnet serve --workers N`: each worker on a listening socket of its own (SO_REUSEPORT)
        command = [
            sys.executable, "-c",
            "import sys; from carnet.operations.serving import serve_balanced; sys.exit(serve_balanced("
            f"{factory!r}, host='127.0.0.1', port={port}, workers={workers}, factory=True,"
            " log_level='warning', access_log=False, proxy_headers=True, forwarded_allow_ips='127.0.0.1'))",
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log",
            "--proxy-headers", "--forwarded-allow-ips", "127.0.0.1",
        ]  # fmt: skip
    server_process = subprocess.Popen(command, env=env, cwd=code)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return server_process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server_process.kill()
    raise RuntimeError("the server did not start")


def proxied_app() -> Any:
    """granian's app (`start_server(server="granian")`): the factory named in CARNET_BENCH_FACTORY,
    trusting X-Forwarded-For from loopback as uvicorn's --proxy-headers does."""
    import importlib

    from granian.utils.proxies import wrap_asgi_with_proxy_headers

    module, _, name = os.environ["CARNET_BENCH_FACTORY"].partition(":")
    return wrap_asgi_with_proxy_headers(getattr(importlib.import_module(module), name)(), "127.0.0.1")


# -- the run ------------------------------------------------------------------------------------
def _patient_body(facility: uuid.UUID, n: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": _ins(900_000_000 + n)}],
        "name": [{"family": f"Cree{n}", "given": ["Bench"]}],
        "gender": "female",
        "birthDate": "1975-06-07",
        "managingOrganization": {"reference": f"Organization/{facility}"},
    }


def _row(r: Result, baseline: Result) -> str:
    return (
        f"| {r.label} | {r.throughput:,.0f}/s | {r.pct(50):.1f} ms | {r.pct(99):.1f} ms | {r.errors} | "
        f"{r.throughput / baseline.throughput:.2f}x | {r.pct(50) / baseline.pct(50):.1f}x |"
    )


def run(
    patients: int,
    seconds: float,
    clients: int,
    workers: int,
    import_patients: int,
    rounds: int,
    compare_general: bool = False,
) -> tuple[str, int]:
    name = f"carnet_fhirload_{uuid.uuid4().hex[:8]}"
    admin = make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        with tempfile.TemporaryDirectory() as tmp:
            var = Path(tmp)
            FileKeyProvider.create(var / "keys.json")
            runtime = build_runtime(
                Settings(env=Environment.TEST, var_dir=var, database_url=url, origin=ORIGIN)
            )
            try:
                return _measure(
                    runtime,
                    url,
                    var,
                    patients,
                    seconds,
                    clients,
                    workers,
                    import_patients,
                    rounds,
                    compare_general,
                )
            finally:
                runtime.close()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _measure(
    runtime: Runtime,
    url: str,
    var: Path,
    patients: int,
    seconds: float,
    clients: int,
    workers: int,
    import_patients: int,
    rounds: int,
    compare_general: bool = False,
) -> tuple[str, int]:
    """The report, and how many measured requests answered an error."""
    load_start = os.getloadavg()
    facility = make_facility(runtime)
    ids, _ = seed_patients(runtime, facility, 0, 1000)
    history: list[tuple[uuid.UUID, list[uuid.UUID]]] = []
    clinicians = make_clinicians(runtime, facility, ids, min(clients, len(ids) // 30), history=history)
    ins_of = {pid: _ins(n) for n, pid in enumerate(ids)}
    index_of = {pid: n for n, pid in enumerate(ids)}
    for c in clinicians:
        c.identifiers = [ins_of[p] for p in c.patients[:5]]
    # Ward physicians: a care list as long as a seeded hospital's, searched by family name alone.
    wards = make_clinicians(runtime, facility, ids, 4, per=WARD_CARE_LIST, history=history)
    for w in wards:
        w.identifiers = searchable_families(w.patients, index_of)
    desks: list[dict[str, str]] = []
    for k in range(clients):
        desk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
        assert desk.account_id is not None
        history.append((desk.account_id, ids[k * 13 % 970 :][:30]))
        desks.append(open_session(runtime, desk.account_id))
    baseline_accounts(runtime, history)
    analyze(runtime)
    redis.Redis.from_url(REDIS_URL).flushdb()  # this run's detection counters start empty
    server, base = start_server(url, var, workers)
    general = start_server(url, var, workers, general_only=True) if compare_general else None
    lines: list[str] = []
    watch = RedisWatch(REDIS_URL).start()  # Redis's longest wait, beside every round
    try:

        def searches(label: str, concurrency: int = clients) -> Result:
            pairs = [(c.headers, f"/fhir/Patient?identifier={i}") for c in clinicians for i in c.identifiers]
            return wrk_load(base, label, concurrency, seconds, pairs)

        def name_searches(label: str) -> Result:
            pairs = [(w.headers, f"/fhir/Patient?family={quote(f)}") for w in wards for f in w.identifiers]
            return wrk_load(base, label, 1, seconds, pairs)

        health_pairs: list[Pair] = [({}, "/healthz")]
        read_pairs = [(c.headers, f"/fhir/Patient/{p}") for c in clinicians for p in c.patients]
        random.Random(1).shuffle(read_pairs)
        # Warm up first (connection pools, prepared statements, caches), as a server in service is.
        warm = wrk_load(base, "warm-up", clients, min(seconds, 5), read_pairs)
        if general is not None:
            wrk_load(general[1], "warm-up (general path)", clients, min(seconds, 5), read_pairs)
        analyze(runtime)  # the trail the warm-up wrote, as autovacuum would (see `analyze`)
        scanned_before = audit_rows_scanned(runtime)
        general_rounds: list[tuple[Result, float, float]] = []
        # /healthz and reads alternate, so both see the same neighbours; the median round counts.
        health_rounds: list[Result] = []
        read_rounds: list[Result] = []
        cpu_rounds: list[tuple[float, float]] = []
        for _ in range(rounds):
            health_rounds.append(wrk_load(base, "/healthz (baseline)", clients, seconds, health_pairs))
            cpu_before = cpu_seconds(server.pid, url)
            reads_r = wrk_load(base, "Patient read", clients, seconds, read_pairs)
            cpu_after = cpu_seconds(server.pid, url)
            read_rounds.append(reads_r)
            cpu_rounds.append(
                (
                    (cpu_after[0] - cpu_before[0]) / max(1, reads_r.requests) * 1000,
                    (cpu_after[1] - cpu_before[1]) / max(1, reads_r.requests) * 1000,
                )
            )
            if general is not None:
                g_before = cpu_seconds(general[0].pid, url)
                g_reads = wrk_load(general[1], "Patient read, general path", clients, seconds, read_pairs)
                g_after = cpu_seconds(general[0].pid, url)
                n = max(1, g_reads.requests)
                general_rounds.append(
                    (g_reads, (g_after[0] - g_before[0]) / n * 1000, (g_after[1] - g_before[1]) / n * 1000)
                )
        scanned_per_read = (audit_rows_scanned(runtime) - scanned_before) / max(
            1, sum(r.requests for r in read_rounds) + sum(g.requests for g, _a, _d in general_rounds)
        )
        ratios = [r.throughput / h.throughput for r, h in zip(read_rounds, health_rounds, strict=True)]
        middle = sorted(range(rounds), key=lambda i: ratios[i])[rounds // 2]
        health, reads = health_rounds[middle], read_rounds[middle]
        app_ms, db_ms = (statistics.median(x) for x in zip(*cpu_rounds, strict=True))
        reads_one = wrk_load(base, "Patient read, 1 client", 1, seconds, read_pairs)
        health_one = wrk_load(base, "/healthz, 1 client (baseline)", 1, seconds, health_pairs)
        search_small = searches("Patient search, 1,000 patients")
        search_small_one = searches("Patient search, 1,000 patients, 1 client", 1)
        names_small = name_searches(f"Name-only search, 1,000 patients ({WARD_CARE_LIST} in care), 1 client")

        def create(c: int, n: int) -> tuple[str, str, dict[str, str], Any]:
            return "POST", "/fhir/Patient", desks[c], _patient_body(facility, c * 1000 + n)

        creates = asyncio.run(load(base, "Patient create", clients, 600, create, limit=30))

        _more, seed_seconds = seed_patients(runtime, facility, 1000, patients - 1000)
        search_large = searches(f"Patient search, {patients:,} patients")
        search_large_one = searches(f"Patient search, {patients:,} patients, 1 client", 1)
        names_large = name_searches(
            f"Name-only search, {patients:,} patients ({WARD_CARE_LIST} in care), 1 client"
        )
        health_after = wrk_load(base, "/healthz (baseline, after)", clients, seconds, health_pairs)
    finally:
        watch.stop()
        for process in (server, *([general[0]] if general is not None else [])):
            process.terminate()
            process.wait(timeout=30)

    imported, import_seconds, loader_rate = (
        _import(runtime, var, facility, import_patients) if import_patients else (0, 0.0, 0.0)
    )
    load_end = os.getloadavg()
    measured = [
        *health_rounds, *read_rounds, *(g for g, _a, _d in general_rounds), reads_one, health_one,
        search_small, search_small_one, names_small, creates, search_large, search_large_one,
        names_large, health_after,
    ]  # fmt: skip
    errors = sum(r.errors for r in measured)
    cores = os.cpu_count() or 1
    lines.append(
        f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} at the start, "
        f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at the end ({cores} cores)"
    )
    lines.append(watch.summary())
    note = scheduler_note()
    if note is not None:
        lines.append(note)
    lines.append("")
    lines.append("| headline | figure |")
    lines.append("|---|---|")
    lines.append(f"| /healthz throughput, {clients} clients | {health.throughput:,.0f}/s |")
    lines.append(f"| guarded Patient read throughput, {clients} clients | {reads.throughput:,.0f}/s |")
    lines.append(
        f"| reads / /healthz (median of {rounds} interleaved rounds: "
        f"{', '.join(f'{x:.3f}' for x in ratios)}) | **{ratios[middle]:.3f}x** |"
    )
    lines.append(
        f"| CPU per read (median of {rounds}): app + PostgreSQL | "
        f"{app_ms:.2f} + {db_ms:.2f} = **{app_ms + db_ms:.2f} ms** |"
    )
    lines.append(f"| read p50 / p99, {clients} clients | {reads.pct(50):.1f} / {reads.pct(99):.1f} ms |")
    lines.append(f"| creates, {clients} clients | {creates.throughput:,.0f}/s |")
    lines.append(f"| name-only search p50, 1,000 patients | {names_small.pct(50):.1f} ms |")
    lines.append(f"| name-only search p50, {patients:,} patients | **{names_large.pct(50):.1f} ms** |")
    lines.append(f"| errors in measured requests | {errors} (warm-up: {warm.errors}) |")
    lines.append(
        "| audit trail rows read by sequential scans per measured read (thousands with a plan made "
        "while it was small: `analyze`; a few from the warm-up's last statistics) | "
        f"{scanned_per_read:,.1f} |"
    )
    if general_rounds:
        g_ratio = [
            g.throughput / h.throughput for (g, _a, _d), h in zip(general_rounds, health_rounds, strict=True)
        ]
        g_mid = sorted(range(rounds), key=lambda i: g_ratio[i])[rounds // 2]
        g_reads = general_rounds[g_mid][0]
        g_app_ms, g_db_ms = (
            statistics.median(x) for x in zip(*[(a, d) for _g, a, d in general_rounds], strict=True)
        )
        lines.append(
            "| general path (same run, own server): reads / /healthz, CPU per read app + PostgreSQL,"
            f" p50 / p99 | "
            f"{g_ratio[g_mid]:.3f}x ({', '.join(f'{x:.3f}' for x in g_ratio)}); "
            f"{g_app_ms:.2f} + {g_db_ms:.2f} = {g_app_ms + g_db_ms:.2f} ms; "
            f"{g_reads.pct(50):.1f} / {g_reads.pct(99):.1f} ms |"
        )
        lines.append(
            f"| fast path / general path: throughput, CPU per read | "
            f"**{reads.throughput / g_reads.throughput:.2f}x**, "
            f"**{(app_ms + db_ms) / (g_app_ms + g_db_ms):.2f}x** |"
        )
    lines.append("")
    lines.append("| measure | throughput | p50 | p99 | errors | throughput vs /healthz | p50 vs /healthz |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in (health, reads, search_small, creates, search_large, health_after):
        base_r = health_after if r is search_large else health
        lines.append(_row(r, base_r))
    for r in (health_one, reads_one, search_small_one, search_large_one, names_small, names_large):
        lines.append(_row(r, health_one))
    growth = search_large.pct(50) / search_small.pct(50)
    growth_one = search_large_one.pct(50) / search_small_one.pct(50)
    lines.append("")
    lines.append(
        f"- CPU per guarded Patient read at {clients} clients: {app_ms:.2f} ms in the app workers + "
        f"{db_ms:.2f} ms in its PostgreSQL backends = {app_ms + db_ms:.2f} ms; on {cores} cores "
        f"that bounds throughput at {cores * 1000 / (app_ms + db_ms):,.0f} reads/s before the load "
        "generator and anything else running take their share"
    )
    lines.append(
        f"- search p50 growth from 1,000 to {patients:,} patients: {growth:.2f}x at {clients} clients, "
        f"{growth_one:.2f}x at 1 client; name-only search "
        f"{names_large.pct(50) / names_small.pct(50):.2f}x "
        f"(seeding the extra {patients - 1000:,} through the encrypted loader took {seed_seconds:.0f} s)"
    )
    if import_patients:
        lines.append(
            f"- `carnet import` (NDJSON, {import_patients:,} Patient + {import_patients:,} Observation): "
            f"{imported:,} resources in {import_seconds:.1f} s = "
            f"{imported / import_seconds:,.0f} resources/s; "
            f"the bare encrypted loader wrote patients at {loader_rate:,.0f}/s "
            f"({imported / import_seconds / loader_rate:.2f}x)"
        )
    return "\n".join(lines), errors


def _import(runtime: Runtime, var: Path, facility: uuid.UUID, count: int) -> tuple[int, float, float]:
    patients = var / "Patient.ndjson"
    observations = var / "Observation.ndjson"
    with patients.open("w") as p, observations.open("w") as o:
        for n in range(count):
            p.write(json.dumps(_patient_body(facility, 500_000 + n) | {"id": f"src{n}"}) + "\n")
            o.write(
                json.dumps(
                    {
                        "resourceType": "Observation",
                        "status": "final",
                        "category": [{"coding": [{"code": "vital-signs"}]}],
                        "code": {
                            "coding": [
                                {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}
                            ]
                        },
                        "subject": {"reference": f"Patient/src{n}"},
                        "effectiveDateTime": "2026-01-02T10:00:00+00:00",
                        "valueQuantity": {"value": 60 + n % 40, "unit": "/min"},
                    }
                )
                + "\n"
            )
    began = time.perf_counter()
    report = import_files(runtime, paths=[patients, observations], facility_id=facility, operator="bench")
    seconds = time.perf_counter() - began
    assert not report.rejected, report.rejected[:3]
    _ids, loader_seconds = seed_patients(runtime, facility, 2_000_000, count)
    return report.total_accepted, seconds, count / loader_seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--import-patients", type=int, default=5000, help="0: skip the import")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved /healthz + read rounds")
    parser.add_argument(
        "--compare-general",
        action="store_true",
        help="also read through a second server on the kernel's general path (no fast read), interleaved",
    )
    args = parser.parse_args()
    if args.patients < 2000 or args.clients < 1 or args.rounds < 1:
        parser.error("--patients at least 2000, --clients and --rounds at least 1")
    report, errors = run(
        args.patients,
        args.seconds,
        args.clients,
        args.workers,
        args.import_patients,
        args.rounds,
        args.compare_general,
    )
    print(report)
    if errors:
        print(f"FAILED: {errors} measured requests answered an error", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
