"""Server render time of the main web pages in a large seeded hospital.

Each page is requested in-process (Starlette's TestClient, no network) by a signed-in account of
the right role: session check, gate (authorize, query, decrypt, audit, exposure) and the
template. Baselines in the same run: /healthz (the process answers: no template, no database)
and the sign-in page (the same layout, no session, no data); each page's p95 is also given as a
multiple of /healthz's. The load average is printed at the start and the end. Aim: every page
under 200 ms at p95 at 100,000 patients. Printing (a watermarked PDF, audited and counted) is
measured as the POST the print button sends.

Beside wall time, each page's CPU: this process's (server and in-process client; `CPU ms`) and
that of the PostgreSQL backends serving the database (`DB CPU ms`, read from /proc), per page,
and the SQL statements it sends. On a shared, loaded machine wall time mostly measures the wait
for a core; CPU per page is what the page costs. Planner statistics are refreshed (ANALYZE)
before measuring, as autovacuum keeps them on a running server.

    .venv/bin/python -m benchmarks.web_pages                    # 100,000 patients on SQLite
    .venv/bin/python -m benchmarks.web_pages --patients 10000 --samples 20
    .venv/bin/python -m benchmarks.web_pages --postgres         # same on PostgreSQL (benchmarks/_db.py)
    .venv/bin/python -m benchmarks.web_pages --postgres --keep /tmp/web-bench   # seed once, reuse
    .venv/bin/python -m benchmarks.web_pages --postgres --keep /tmp/web-bench --database webperf_bench

With --keep the seeded hospital (its key file and database URL) stays in the folder and the next
run with the same --keep reuses it instead of seeding again; drop the database by hand after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl

import sqlalchemy as sa
from fastapi.testclient import TestClient

from benchmarks._db import ADMIN_URL, bench_database
from carnet.access.actor import Actor, ActorKind
from carnet.access.exports import request_export
from carnet.access.roles import Role
from carnet.app import create_app
from carnet.billing.models import Invoice, Payment
from carnet.crypto.keys import FileKeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.identity import sessions
from carnet.identity.models import Account
from carnet.phi.gate import Gate
from carnet.phi.schemas import PrescriptionInput
from carnet.runtime import Runtime, build_runtime
from carnet.scheduling.models import Encounter
from carnet.settings import Environment, Settings
from carnet.synth.seed import seed_hospital

ORIGIN = "http://localhost:8000"


@contextmanager
def _database(postgres: bool, tmp: Path) -> Iterator[str]:
    if not postgres:
        url = f"sqlite:///{tmp / 'carnet.db'}"
        migrate.upgrade(make_engine(url))
        yield url
        return
    with bench_database("web") as url:
        yield url


@contextmanager
def _kept(keep: Path, postgres: bool, database: str | None) -> Iterator[tuple[Path, str, bool]]:
    """A seeded hospital kept between runs (its key file and database URL in `keep`):
    seeding 100,000 patients takes minutes, profiling a page should not. A reused database is
    migrated to head first (an index migration added since it was seeded applies)."""
    keep.mkdir(parents=True, exist_ok=True)
    saved = keep / "database-url"
    if saved.exists() and (keep / "keys.json").exists():
        url = saved.read_text().strip()
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield keep, url, False
        return
    if postgres:
        name = database or f"carnet_bench_web_kept_{uuid.uuid4().hex[:8]}"
        admin = make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{keep / 'carnet.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    FileKeyProvider.create(keep / "keys.json")
    saved.write_text(url)
    yield keep, url, True


def _account(runtime: Runtime, roles: set[str], facility: uuid.UUID | None = None) -> Account:
    """The first seeded account holding one of these roles (active grant), at `facility` if given."""
    from carnet.access.models import RoleGrant

    query = (
        sa.select(Account)
        .join(RoleGrant, RoleGrant.account_id == Account.id)
        .where(RoleGrant.role.in_(roles), RoleGrant.status == "active", Account.status == "active")
        .order_by(Account.username)
        .limit(1)
    )
    if facility is not None:
        query = query.where(Account.facility_id == facility)
    with runtime.session_factory() as session:
        account = session.scalar(query)
        if account is None:
            raise SystemExit(f"no seeded account with roles {roles}")
        return account


def _patient_account(runtime: Runtime) -> Account | None:
    with runtime.session_factory() as session:
        return session.scalar(
            sa.select(Account).where(Account.kind == "patient").order_by(Account.username).limit(1)
        )


def _client(app: object, runtime: Runtime, account: Account) -> TestClient:
    with runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=account.id,
            privileged=account.kind == "staff",
            second_factor_method="webauthn",
            address="bench",
            user_agent="benchmarks.web_pages",
        )
    client = TestClient(app, base_url=ORIGIN, follow_redirects=False)  # type: ignore[arg-type]
    # One browser per account: several accounts from one address and client within minutes are
    # what detection takes for stolen sessions used together (a campaign).
    client.headers["user-agent"] = f"benchmarks.web_pages ({account.username})"
    client.cookies.set("carnet_session", issued.token)
    client.cookies.set("carnet_csrf", issued.csrf_token)
    return client


def _actor(account: Account, role: Role) -> Actor:
    return Actor(
        kind=ActorKind.STAFF,
        username=account.username,
        roles=frozenset({role}),
        account_id=account.id,
        facility_id=account.facility_id,
        practitioner_id=account.practitioner_id,
    )


def _a_billed_patient(runtime: Runtime, account: Account) -> str:
    """A patient of the billing clerk's facility with an issued invoice (the seeded billing run's)."""
    with runtime.session_factory() as session:
        found = session.scalar(
            sa.select(Invoice.patient_id)
            .where(Invoice.facility_id == account.facility_id, Invoice.status.in_(("issued", "balanced")))
            .limit(1)
        )
    if found is None:
        raise SystemExit("no invoice at the billing clerk's facility: seed more patients")
    return str(found)


def _a_patient_of(runtime: Runtime, account: Account) -> tuple[str, str | None]:
    """A patient on the physician's day list (through the gate, like the page)."""
    actor = _actor(account, Role.PHYSICIAN)
    day = Gate(runtime, actor).day_list()
    rows = day.appointments or []
    if rows:
        return rows[0].patient.id, rows[0].patient.ins
    inpatients = day.inpatients
    if inpatients:
        return inpatients[0].patient.id, inpatients[0].patient.ins
    raise SystemExit("the seeded physician has nobody on their day list: seed more patients")


def _printable(runtime: Runtime, physician: Account, patient_id: str, billed: str) -> tuple[str, str]:
    """An active prescription of the physician's patient (one is written if none) and an issued
    invoice of the billed patient: what the print buttons print."""
    gate = Gate(runtime, _actor(physician, Role.PHYSICIAN))
    active = [p for p in gate.list_prescriptions(patient_id=patient_id) if p.status == "active" and p.id]
    if not active:
        active = [
            gate.prescribe(
                data=PrescriptionInput(
                    patient_id=patient_id,
                    medication_code="N02BE01",
                    medication_display="Paracétamol 1 g",
                    substance_code="N02BE01",
                    dosage_text="1 g trois fois par jour",
                    allergy_override_reason="benchmark",
                )
            )
        ]
    with runtime.session_factory() as session:
        invoice = session.scalar(
            sa.select(Invoice.id)
            .where(Invoice.patient_id == uuid.UUID(billed), Invoice.status.in_(("issued", "balanced")))
            .limit(1)
        )
    if invoice is None:
        raise SystemExit("the billed patient has no issued invoice")
    return str(active[0].id), str(invoice)


class _Statements:
    """SQL statements the process sent (every engine of the runtime: one listener on the class)."""

    def __init__(self) -> None:
        self.count = 0
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._one)

    def _one(self, *_args: object) -> None:
        self.count += 1


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _backend_cpu(runtime: Runtime) -> float | None:
    """CPU seconds used so far by the PostgreSQL backends serving this database (the server's
    other half: the process's own CPU does not include them). None off PostgreSQL, or when the
    server's processes cannot be read (another machine)."""
    if runtime.engine.dialect.name != "postgresql":
        return None
    with runtime.engine.connect() as conn:
        pids = conn.scalars(
            sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).all()
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / _TICK


def _time(client: TestClient, path: str, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        if path.startswith("POST "):
            # The search is a form post (identifiers never ride in a URL): the fields as a body.
            target, _, fields = path[5:].partition("?")
            form = dict(parse_qsl(fields)) | {"csrf_token": client.cookies.get("carnet_csrf") or ""}
            response = client.post(target, data=form)
        else:
            fragment = "/sections/" in path or path.endswith("-log")
            response = client.get(path, headers={"HX-Request": "true"} if fragment else None)
        out.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}: {response.text[:300]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep the seeded hospital in this folder (key file + database URL) and reuse it next time",
    )
    parser.add_argument(
        "--database",
        help="with --postgres --keep: the kept database's name (default carnet_bench_web_kept_<random>)",
    )
    parser.add_argument(
        "--only", help="measure only the pages whose label contains this, or one of a|b|c (and /healthz)"
    )
    args = parser.parse_args()
    if args.database is not None and (args.keep is None or not args.postgres):
        parser.error("--database names a kept PostgreSQL database: give --postgres --keep too")

    if args.keep is not None:
        with _kept(args.keep, args.postgres, args.database) as (var, url, fresh):
            runtime = _runtime(var, url)
            try:
                seeded = _seed(runtime, args.patients) if fresh else "reused a kept seeded hospital"
                _analyze(runtime)
                _measure(runtime, args.patients, args.samples, args.postgres, seeded, args.only)
            finally:
                runtime.close()
        return
    with tempfile.TemporaryDirectory(prefix="carnet-bench-web-") as tmp_name:
        tmp = Path(tmp_name)
        FileKeyProvider.create(tmp / "keys.json")
        with _database(args.postgres, tmp) as url:
            runtime = _runtime(tmp, url)
            try:
                seeded = _seed(runtime, args.patients)
                _analyze(runtime)
                _measure(runtime, args.patients, args.samples, args.postgres, seeded, args.only)
            finally:
                runtime.close()


def _runtime(var: Path, url: str) -> Runtime:
    return build_runtime(Settings(env=Environment.TEST, var_dir=var, origin=ORIGIN, database_url=url))


def _seed(runtime: Runtime, patients: int) -> str:
    started = time.perf_counter()
    seed_hospital(runtime, patients=patients, seed=7)
    return f"seeded in {time.perf_counter() - started:.0f} s"


def _analyze(runtime: Runtime) -> None:
    """Planner statistics, as autovacuum keeps them on a running server: without them (a server
    with autovacuum off, a database just seeded) PostgreSQL guesses every table nearly empty and
    picks plans no deployed hospital runs (the worklist's sort of every issued invoice, 140 ms
    instead of 0.3)."""
    if runtime.engine.dialect.name != "postgresql":
        return
    with runtime.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("ANALYZE"))


def _a_payment(runtime: Runtime, account: Account) -> str | None:
    """A payment received at the billing clerk's facility (what a receipt prints)."""
    with runtime.session_factory() as session:
        found = session.scalar(
            sa.select(Payment.id)
            .join(Invoice, Invoice.id == Payment.invoice_id)
            .where(Invoice.facility_id == account.facility_id)
            .limit(1)
        )
    return None if found is None else str(found)


def _a_stay(runtime: Runtime, patient_id: str) -> str | None:
    """A stay of the physician's patient, in progress or finished (what a discharge letter prints)."""
    with runtime.session_factory() as session:
        found = session.scalar(
            sa.select(Encounter.id)
            .where(
                Encounter.patient_id == uuid.UUID(patient_id),
                Encounter.status.in_(("in-progress", "finished")),
            )
            .limit(1)
        )
    return None if found is None else str(found)


def _measure(
    runtime: Runtime, patients: int, samples: int, postgres: bool, seeded: str, only: str | None = None
) -> None:
    app = create_app(runtime)
    physician = _account(runtime, {"physician"})
    patient_id, ins = _a_patient_of(runtime, physician)
    desk = _account(runtime, {"front_desk"}, facility=physician.facility_id)
    billing = _account(runtime, {"billing"}, facility=physician.facility_id)
    officer = _account(runtime, {"security_officer"})
    billed = _a_billed_patient(runtime, billing)
    prescription, invoice = _printable(runtime, physician, patient_id, billed)
    nurse = _account(runtime, {"nurse"}, facility=physician.facility_id)
    integration = _account(runtime, {"integration"})
    week = f"practitioner={physician.practitioner_id}&view=week"
    request_export(
        runtime, actor=_actor(physician, Role.PHYSICIAN), purpose="benchmark: a pending export", scope="care"
    )
    pages: list[tuple[str, Account | None, str]] = [
        ("/healthz (baseline: no template, no data)", None, "/healthz"),
        ("sign-in page (no session, no data)", None, "/login"),
        ("my day (physician)", physician, "/day"),
        ("my day (nurse)", nurse, "/day"),
        ("search by identifier (physician)", physician, f"POST /patients?identifier={ins or ''}"),
        ("chart (physician)", physician, f"/patients/{patient_id}"),
        ("  its notes section (htmx)", physician, f"/patients/{patient_id}/sections/notes"),
        (
            "  its prescriptions section (htmx)",
            physician,
            f"/patients/{patient_id}/sections/prescriptions",
        ),
        ("  its results section (htmx)", physician, f"/patients/{patient_id}/sections/results"),
        ("  its coverage section (htmx)", physician, f"/patients/{patient_id}/sections/coverage"),
        ("print a prescription, PDF (physician)", physician, f"POST /print/prescriptions/{prescription}"),
        ("  its orders section (htmx)", physician, f"/patients/{patient_id}/sections/orders"),
        ("  its stays section (htmx)", physician, f"/patients/{patient_id}/sections/stays"),
        (
            "  its appointments section (htmx)",
            physician,
            f"/patients/{patient_id}/sections/appointments",
        ),
        ("account page (physician)", physician, "/account"),
        ("ward board (nurse)", nurse, "/ward"),
        ("front desk (registration form)", desk, "/desk"),
        ("calendar, a week of the physician (front desk)", desk, f"/desk/schedule?{week}"),
        (
            "calendar grid, week + physician (front desk)",
            desk,
            f"/desk/calendar?practitioner={physician.practitioner_id}",
        ),
        ("arrivals, today (front desk)", desk, "/desk/arrivals"),
        ("chart (front desk)", desk, f"/patients/{patient_id}"),
        ("  its coverage section (htmx)", desk, f"/patients/{patient_id}/sections/coverage"),
        ("chart (billing)", billing, f"/patients/{billed}"),
        ("  its invoices section (htmx)", billing, f"/patients/{billed}/sections/invoices"),
        ("print an invoice, PDF (billing)", billing, f"POST /print/invoices/{invoice}"),
        ("billing worklist (billing)", billing, "/billing/worklist"),
        ("security console (officer)", officer, "/security"),
        ("  export approvals (officer)", officer, "/security/exports"),
        ("  audit chain status (officer)", officer, "/security/audit"),
        ("integration log (integration)", integration, "/integration"),
        ("administration (admin)", _account(runtime, {"system_administrator"}), "/admin"),
    ]
    payment = _a_payment(runtime, billing)
    if payment is not None:
        pages.append(("print a receipt, PDF (billing)", billing, f"POST /print/payments/{payment}"))
    stay = _a_stay(runtime, patient_id)
    if stay is not None:
        pages.append(("print a discharge letter, PDF (physician)", physician, f"POST /print/stays/{stay}"))
    portal = _patient_account(runtime)
    if portal is not None:
        pages.append(("patient portal", portal, "/portal"))
        pages.append(("  its access log (htmx)", portal, "/portal/access-log"))
    if only:
        wanted = only.split("|")
        pages = [p for p in pages if p[2] == "/healthz" or any(w in p[0] for w in wanted)]
    db = "PostgreSQL" if postgres else "SQLite"
    print(f"{patients:,} patients on {db}, {seeded}; {samples} samples per page")
    print(time.strftime("started %Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    print("load average at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    # CPU per page: this process (server and in-process client) and PostgreSQL's backends; a
    # loaded machine stretches wall time far more than the CPU a page costs.
    print(
        f"{'page':50} {'median ms':>10} {'p95 ms':>8} {'p95 x /healthz':>15}"
        f" {'CPU ms':>7} {'DB CPU ms':>10} {'SQL':>5}"
    )
    statements = _Statements()
    baseline = None
    with TestClient(app, base_url=ORIGIN) as anonymous:
        for label, account, path in pages:
            client = anonymous if account is None else _client(app, runtime, account)
            _time(client, path, 2)  # warm the templates and caches
            db_before = _backend_cpu(runtime)
            sent, cpu = statements.count, time.process_time()
            times = sorted(_time(client, path, samples))
            cpu_ms = (time.process_time() - cpu) * 1000 / samples
            sql = (statements.count - sent) / samples
            db_after = _backend_cpu(runtime)
            db_ms = (
                f"{(db_after - db_before) * 1000 / samples:10.1f}"
                if db_before is not None and db_after is not None
                else f"{'-':>10}"
            )
            median = statistics.median(times)
            p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
            baseline = baseline or p95
            print(
                f"{label:50} {median:10.1f} {p95:8.1f} {p95 / baseline:15.1f}"
                f" {cpu_ms:7.1f} {db_ms} {sql:5.0f}"
            )
    print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(time.strftime("ended %Y-%m-%d %H:%M:%S UTC", time.gmtime()))


if __name__ == "__main__":
    main()
