"""Run the side-by-side benchmark (see benchmarks/gnuhealth/__init__.py)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import redis
import sqlalchemy as sa

from benchmarks.fhir_load import (
    ADMIN_URL,
    ORIGIN,
    REDIS_URL,
    WARD_CARE_LIST,
    Pair,
    Post,
    Result,
    _free_port,
    _patient_body,
    baseline_accounts,
    cpu_seconds,
    load,
    make_clinicians,
    open_session,
    plain_patient,
    searchable_families,
    seed_patients,
    start_server,
    wrk_load,
)
from carnet.access.roles import Role
from carnet.crypto.keys import FileKeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Environment, Settings
from tests.factories import make_account, make_facility

# What is compared: pinned, installed from PyPI into GNU Health's own virtual environment.
GNUHEALTH = ["gnuhealth==5.0.6", "trytond==7.0.59", "gunicorn==27.0.1", "psycopg2-binary==2.9.13"]
VAR = Path(os.environ.get("CARNET_BENCH_GNUHEALTH_DIR", "var/gnuhealth")).resolve()
ADMIN_PASSWORD = "gnuhealth-bench-" + uuid.uuid4().hex[:12]  # this run's, never stored in the repo
READ_FIELDS = [
    "puid", "party.name", "party.lastname", "party.dob", "party.gender", "party.ref",
    "party.federation_account", "party.addresses", "party.contact_mechanisms",
]  # fmt: skip
SEARCH_FIELDS = ["puid", "party.name", "party.lastname", "party.dob", "party.gender"]
# What is measured (`--only`): all by default.
OPERATIONS = ("read", "name", "birth", "create")
ONLY: set[str] = set(OPERATIONS)


# -- GNU Health: install, database, server --------------------------------------------------------
def ensure_gnuhealth() -> Path:
    """GNU Health's virtual environment, created and filled from PyPI on first use."""
    venv = VAR / "venv"
    if not (venv / "bin" / "trytond-admin").exists():
        VAR.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *GNUHEALTH], check=True)
    return venv


def _admin(sql: str) -> None:
    engine = make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(sql))
    engine.dispose()


def _exists(database: str) -> bool:
    engine = make_engine(ADMIN_URL)
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).first()
    engine.dispose()
    return found is not None


def _templates() -> list[int]:
    """Patient counts of the GNU Health templates already built."""
    engine = make_engine(ADMIN_URL)
    with engine.connect() as conn:
        names = conn.execute(
            sa.text("SELECT datname FROM pg_database WHERE datname LIKE 'gnuhealth_bench_tpl_%'")
        ).scalars()
        counts = [int(n.rsplit("_", 1)[1]) for n in names if n.rsplit("_", 1)[1].isdigit()]
    engine.dispose()
    return counts


def _pg_uri() -> str:
    url = sa.engine.make_url(ADMIN_URL)
    auth = url.username or "postgres"
    if url.password:
        auth += f":{url.password}"
    return f"postgresql://{auth}@{url.host or '127.0.0.1'}:{url.port or 5432}/"


def gnuhealth_database(venv: Path, run: Path, patients: int, name: str) -> Path:
    """This run's GNU Health database, copied from a template holding the health module and the
    benchmark's N patients (built once: `trytond-admin` and writing the patients take minutes).
    Returns the trytond configuration file."""
    config = run / "trytond.conf"
    config.write_text(
        f"[database]\nuri = {_pg_uri()}\npath = {run / 'attach'}\n"
        "[session]\ntimeout = 36000\nmax_attempt = 1000\n"
    )
    password = run / "password"
    password.write_text(ADMIN_PASSWORD + "\n")
    password.chmod(0o600)
    env = os.environ | {"TRYTONPASSFILE": str(password)}
    admin = [str(venv / "bin" / "trytond-admin"), "-c", str(config)]
    base = "gnuhealth_bench_tpl_health"
    if not _exists(base):
        print(f"building the GNU Health template database {base} (once)", file=sys.stderr)
        _admin(f'CREATE DATABASE "{base}"')
        try:
            subprocess.run(
                [*admin, "-d", base, "--all", "-u", "health", "--activate-dependencies",
                 "--email", "admin@example.org"],
                check=True, env=env, cwd=run, capture_output=True,
            )  # fmt: skip
        except BaseException:
            _admin(f'DROP DATABASE IF EXISTS "{base}" WITH (FORCE)')
            raise
    template = f"gnuhealth_bench_tpl_{patients}"
    if not _exists(template):
        # Grown from the largest smaller template: writing patients through the ORM is slow.
        smaller = [m for m in _templates() if m < patients]
        start = max(smaller, default=0)
        source = f"gnuhealth_bench_tpl_{start}" if start else base
        print(f"writing patients {start:,} to {patients:,} into {template} (once)", file=sys.stderr)
        _admin(f'CREATE DATABASE "{template}" TEMPLATE "{source}"')
        try:
            lines = "".join(json.dumps(plain_patient(n)) + "\n" for n in range(start, patients))
            subprocess.run(
                [str(venv / "bin" / "python"), str(Path(__file__).with_name("tryton_side.py")), str(config),
                 template],
                input=lines, text=True, check=True, env=env, cwd=run, capture_output=True,
            )  # fmt: skip
        except BaseException:
            _admin(f'DROP DATABASE IF EXISTS "{template}" WITH (FORCE)')
            raise
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    # This run's administrator password (the template's is another run's).
    subprocess.run([*admin, "-d", name, "-p"], check=True, env=env, cwd=run, capture_output=True)
    return config


def gnuhealth_ids(name: str) -> dict[str, int]:
    """INS -> gnuhealth.patient id in this run's database."""
    url = sa.engine.make_url(ADMIN_URL).set(database=name)
    engine = make_engine(url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT party.ref, p.id FROM gnuhealth_patient p JOIN party_party party ON party.id = p.party"
            )
        ).all()
    engine.dispose()
    return {ref: pid for ref, pid in rows}


def start_gnuhealth(venv: Path, run: Path, config: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    server = subprocess.Popen(
        [str(venv / "bin" / "gunicorn"), "--workers", "2", "--threads", "4", "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning", "trytond.application:app"],
        env=os.environ | {"TRYTOND_CONFIG": str(config)}, cwd=run,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(base, timeout=1)
            return server, base
        except httpx.HTTPError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("GNU Health did not start")


@dataclass
class Tryton:
    base: str
    database: str
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})

    @property
    def path(self) -> str:
        return f"/{self.database}/"

    def login(self) -> None:
        answer = self.call("common.db.login", ["admin", {"password": ADMIN_PASSWORD}, "en"])
        user_id, session = answer[0], answer[1]
        token = base64.b64encode(f"admin:{user_id}:{session}".encode()).decode()
        self.headers = {"Authorization": f"Session {token}", "Content-Type": "application/json"}

    def body(self, method: str, params: list[Any]) -> str:
        return json.dumps({"id": 1, "method": method, "params": params}, ensure_ascii=False)

    def call(self, method: str, params: list[Any]) -> Any:
        response = httpx.post(
            self.base + self.path, content=self.body(method, params), headers=self.headers, timeout=60
        )
        answer = response.json()
        if response.status_code != 200 or "error" in answer:
            raise RuntimeError(f"GNU Health {method}: {response.status_code} {str(answer)[:300]}")
        return answer["result"]


# -- the run --------------------------------------------------------------------------------------
@dataclass
class Case:
    label: str
    unit: str  # "/s" (throughput, higher is better) or "ms" (p50, lower is better)
    carnet: list[Result] = field(default_factory=list)
    gnuhealth: list[Result] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)  # ms per request: carnet, GNU Health

    def figure(self, r: Result) -> float:
        return r.throughput if self.unit == "/s" else r.pct(50)

    def ratios(self) -> list[float]:
        """carnet's advantage per round: > 1 means carnet is better."""
        pairs = zip(self.carnet, self.gnuhealth, strict=True)
        if self.unit == "/s":
            return [c.throughput / g.throughput for c, g in pairs]
        return [g.pct(50) / c.pct(50) for c, g in pairs]


def _gh_creates(tryton: Tryton, clients: int, limit: int, offset: int) -> Result:
    """`clients` loops of `limit` registrations: party, then patient (two calls, as the client)."""
    latencies: list[float] = []
    errors = 0

    async def run() -> float:
        nonlocal errors
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=tryton.base, limits=limits, timeout=60) as http:

            async def call(method: str, params: list[Any]) -> Any:
                response = await http.post(
                    tryton.path, content=tryton.body(method, params), headers=tryton.headers
                )
                answer = response.json()
                if response.status_code != 200 or "error" in answer:
                    raise RuntimeError(str(answer)[:200])
                return answer["result"]

            async def worker(c: int) -> None:
                nonlocal errors
                for n in range(limit):
                    k = 900_000_000 + offset + c * 1000 + n
                    plain = plain_patient(k)
                    began = time.perf_counter()
                    try:
                        party = await call(
                            "model.party.party.create",
                            [[{"name": "Bench", "lastname": f"Cree{k}", "is_person": True, "is_patient": True,
                               "dob": {"__class__": "date", "year": 1975, "month": 6, "day": 7},
                               "gender": "f", "ref": plain["ins"], "code": f"BENCH-C{k}",
                               "fed_country": "FRA", "federation_account": f"FRA{plain['ins']}"}], {}],
                        )  # fmt: skip
                        await call("model.gnuhealth.patient.create", [[{"party": party[0]}], {}])
                    except (RuntimeError, httpx.HTTPError) as exc:
                        errors += 1
                        if errors <= 3:
                            print(f"  GNU Health create: {exc}", file=sys.stderr)
                    latencies.append((time.perf_counter() - began) * 1000)

            began = time.perf_counter()
            await asyncio.gather(*(worker(c) for c in range(clients)))
            return time.perf_counter() - began

    seconds = asyncio.run(run())
    return Result("GNU Health create", len(latencies), errors, seconds, latencies)


def _carnet_url(name: str) -> str:
    return sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def run(patients: int, seconds: float, rounds: int, clients: int) -> tuple[str, int]:
    venv = ensure_gnuhealth()
    tag = uuid.uuid4().hex[:8]
    carnet_db, gh_db = f"carnet_vs_gh_{tag}", f"gnuhealth_bench_{tag}"
    load_start = os.getloadavg()
    _admin(f'CREATE DATABASE "{carnet_db}"')
    run_dir = Path(tempfile.mkdtemp(prefix="gnuhealth-run-", dir=VAR))
    try:
        engine = make_engine(_carnet_url(carnet_db))
        migrate.upgrade(engine)
        engine.dispose()
        config = gnuhealth_database(venv, run_dir, patients, gh_db)
        FileKeyProvider.create(run_dir / "keys.json")
        runtime = build_runtime(
            Settings(
                env=Environment.TEST, var_dir=run_dir, database_url=_carnet_url(carnet_db), origin=ORIGIN
            )
        )
        try:
            return _measure(runtime, venv, run_dir, config, carnet_db, gh_db, patients, seconds, rounds,
                            clients, load_start)  # fmt: skip
        finally:
            runtime.close()
    finally:
        for name in (carnet_db, gh_db):
            _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(run_dir, ignore_errors=True)


def _measure(
    runtime: Runtime,
    venv: Path,
    run_dir: Path,
    config: Path,
    carnet_db: str,
    gh_db: str,
    patients: int,
    seconds: float,
    rounds: int,
    clients: int,
    load_start: tuple[float, float, float],
) -> tuple[str, int]:
    facility = make_facility(runtime)
    ids, _ = seed_patients(runtime, facility, 0, patients)
    index_of = {pid: n for n, pid in enumerate(ids)}
    history: list[tuple[uuid.UUID, list[uuid.UUID]]] = []
    readers = make_clinicians(runtime, facility, ids, clients, history=history)
    wards = make_clinicians(runtime, facility, ids, 4, per=WARD_CARE_LIST, history=history)
    desk_sessions: list[dict[str, str]] = []
    for k in range(8 * rounds):
        desk = make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
        assert desk.account_id is not None
        history.append((desk.account_id, ids[k * 13 % (len(ids) - 30) :][:30]))
        desk_sessions.append(open_session(runtime, desk.account_id))
    baseline_accounts(runtime, history)
    redis.Redis.from_url(REDIS_URL).flushdb()
    gh_of = gnuhealth_ids(gh_db)

    def gh_id(pid: uuid.UUID) -> int:
        return gh_of[plain_patient(index_of[pid])["ins"]]

    carnet_server, carnet_base = start_server(_carnet_url(carnet_db), run_dir, 2)
    gh_server, gh_base = start_gnuhealth(venv, run_dir, config)
    tryton = Tryton(gh_base, gh_db)
    try:
        tryton.login()
        read_c: list[Pair] = [(c.headers, f"/fhir/Patient/{p}") for c in readers for p in c.patients]
        read_g: list[Post] = [
            (tryton.headers, tryton.path, tryton.body(
                "model.gnuhealth.patient.read", [[gh_id(p)], READ_FIELDS, {}]))
            for c in readers for p in c.patients
        ]  # fmt: skip
        families = [(w, family) for w in wards for family in searchable_families(w.patients, index_of)]
        name_c: list[Pair] = [(w.headers, f"/fhir/Patient?family={quote(f)}") for w, f in families]
        name_g: list[Post] = [
            (tryton.headers, tryton.path, tryton.body(
                "model.gnuhealth.patient.search_read",
                [[["party.lastname", "=", f]], 0, 100, None, SEARCH_FIELDS, {}]))
            for _w, f in families
        ]  # fmt: skip
        born = [(c, plain_patient(index_of[p])) for c in readers for p in c.patients[5:10]]
        birth_c: list[Pair] = [
            (c.headers, f"/fhir/Patient?family={quote(x['family'])}&birthdate={x['birth_date']}")
            for c, x in born
        ]
        birth_g: list[Post] = [
            (tryton.headers, tryton.path, tryton.body(
                "model.gnuhealth.patient.search_read",
                [[["party.lastname", "=", x["family"]], ["party.dob", "=", {"__class__": "date",
                  "year": int(x["birth_date"][:4]), "month": int(x["birth_date"][5:7]),
                  "day": int(x["birth_date"][8:])}]], 0, 100, None, SEARCH_FIELDS, {}]))
            for _c, x in born
        ]  # fmt: skip
        # Every GNU Health request once, checked, before it is timed (its errors are 200s).
        for _h, _path, body in [*read_g[:40], *name_g, *birth_g[:40]]:
            request = json.loads(body)
            found = tryton.call(request["method"], request["params"])
            assert found, f"GNU Health found nothing for {request['method']}"

        cases = {
            "read": Case(f"full patient read, {clients} clients", "/s"),
            "name": Case(
                f"family name only (exact) + read, 1 client ({WARD_CARE_LIST} patients in care)", "ms"
            ),
            "birth": Case("family + birth date + read, 1 client", "ms"),
            "create": Case("create patient, 8 clients", "/s"),
        }
        warm = [
            wrk_load(carnet_base, "warm-up", clients, 5, read_c),
            wrk_load(gh_base, "warm-up", clients, 5, read_g, error_marker='"error"'),
        ]
        for r in range(rounds):
            if "read" in ONLY:
                _timed(
                    cases["read"],
                    carnet_server.pid,
                    carnet_db,
                    lambda: wrk_load(carnet_base, "carnet read", clients, seconds, read_c),
                    True,
                )
                _timed(
                    cases["read"],
                    gh_server.pid,
                    gh_db,
                    lambda: wrk_load(gh_base, "GNU Health read", clients, seconds, read_g, '"error"'),
                    False,
                )
            if "name" in ONLY:
                cases["name"].carnet.append(wrk_load(carnet_base, "carnet name", 1, seconds, name_c))
                cases["name"].gnuhealth.append(
                    wrk_load(gh_base, "GNU Health name", 1, seconds, name_g, '"error"')
                )
            if "birth" in ONLY:
                cases["birth"].carnet.append(wrk_load(carnet_base, "carnet birth", 1, seconds, birth_c))
                cases["birth"].gnuhealth.append(
                    wrk_load(gh_base, "GNU Health birth", 1, seconds, birth_g, '"error"')
                )
            if "create" not in ONLY:
                continue
            desks = desk_sessions[r * 8 : (r + 1) * 8]

            def create(
                c: int, n: int, desks: list[dict[str, str]] = desks, r: int = r
            ) -> tuple[str, str, dict[str, str], Any]:
                return "POST", "/fhir/Patient", desks[c], _patient_body(facility, r * 100_000 + c * 1000 + n)

            cases["create"].carnet.append(
                asyncio.run(load(carnet_base, "carnet create", 8, 600, create, limit=30))
            )
            cases["create"].gnuhealth.append(_gh_creates(tryton, 8, 30, r * 100_000))
    finally:
        for server in (carnet_server, gh_server):
            server.terminate()
            server.wait(timeout=30)
    return _report(cases, warm, patients, seconds, rounds, load_start)


def _timed(case: Case, pid: int, database: str, measure: Callable[[], Result], carnet: bool) -> None:
    before = cpu_seconds(pid, _carnet_url(database))
    result = measure()
    after = cpu_seconds(pid, _carnet_url(database))
    per = ((after[0] - before[0]) + (after[1] - before[1])) / max(1, result.requests) * 1000
    if carnet:
        case.carnet.append(result)
        case.cpu.append((per, float("nan")))
    else:
        case.gnuhealth.append(result)
        case.cpu[-1] = (case.cpu[-1][0], per)


def _report(
    cases: dict[str, Case],
    warm: list[Result],
    patients: int,
    seconds: float,
    rounds: int,
    load_start: tuple[float, float, float],
) -> tuple[str, int]:
    load_end = os.getloadavg()
    lines = [
        f"{patients:,} patients in each system; {rounds} interleaved rounds of {seconds:.0f} s; load average "
        f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} at the start, "
        f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at the end ({os.cpu_count()} cores)",
        "",
        "| operation | carnet | GNU Health | carnet's advantage (median round; > 1: carnet better) "
        "| each round | errors |",
        "|---|---|---|---|---|---|",
    ]
    errors = sum(r.errors for r in warm)
    for case in cases.values():
        if not case.carnet:
            continue  # not measured in this run (--only)
        ratios = case.ratios()
        mid = sorted(range(len(ratios)), key=lambda i: ratios[i])[len(ratios) // 2]
        c, g = case.carnet[mid], case.gnuhealth[mid]
        unit = "/s" if case.unit == "/s" else " ms p50"
        fmt = "{:,.0f}" if case.unit == "/s" else "{:.1f}"
        sense = "x the throughput" if case.unit == "/s" else "x the speed"
        errs = sum(r.errors for r in case.carnet + case.gnuhealth)
        errors += errs
        lines.append(
            f"| {case.label} | {fmt.format(case.figure(c))}{unit} | {fmt.format(case.figure(g))}{unit} | "
            f"**{ratios[mid]:.2f}{sense}** | {', '.join(f'{x:.2f}' for x in ratios)} | {errs} |"
        )
        if case.cpu:
            cpu_c = statistics.median(x[0] for x in case.cpu)
            cpu_g = statistics.median(x[1] for x in case.cpu)
            lines.append(
                f"| CPU per read (server + its PostgreSQL backends) | {cpu_c:.2f} ms | {cpu_g:.2f} ms | "
                f"{cpu_c / cpu_g:.2f}x the CPU | | |"
            )
    return "\n".join(lines), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--only", default=",".join(OPERATIONS), help=f"the operations measured, of {','.join(OPERATIONS)}"
    )
    args = parser.parse_args()
    ONLY.clear()
    ONLY.update(args.only.split(","))
    if not ONLY or not set(OPERATIONS) >= ONLY:
        parser.error(f"--only takes some of {','.join(OPERATIONS)}")
    if args.patients < 2000 or args.rounds < 1 or args.clients < 1:
        parser.error("--patients at least 2000, --rounds and --clients at least 1")
    report, errors = run(args.patients, args.seconds, args.rounds, args.clients)
    print(report)
    if errors:
        print(f"FAILED: {errors} requests answered an error", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
