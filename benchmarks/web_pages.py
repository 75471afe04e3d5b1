"""Server render time of the main web pages in a large seeded hospital.

Each page is requested in-process (Starlette's TestClient, no network) by a signed-in account of
the right role: session check, gate (authorize, query, decrypt, audit, exposure) and the
template. Baseline in the same run: the sign-in page, which renders the same layout with no
session and no data. Aim: every page under 200 ms at 100,000 patients.

    .venv/bin/python -m benchmarks.web_pages                    # 100,000 patients on SQLite
    .venv/bin/python -m benchmarks.web_pages --patients 10000 --samples 20
    .venv/bin/python -m benchmarks.web_pages --postgres         # same on PostgreSQL
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

import sqlalchemy as sa
from fastapi.testclient import TestClient

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.app import create_app
from carnet.crypto.keys import FileKeyProvider
from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.identity import sessions
from carnet.identity.models import Account
from carnet.phi.gate import Gate
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Environment, Settings
from carnet.synth.seed import seed_hospital

ADMIN_URL = os.environ.get(
    "CARNET_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
ORIGIN = "http://localhost:8000"


@contextmanager
def _database(postgres: bool, tmp: Path) -> Iterator[str]:
    if not postgres:
        url = f"sqlite:///{tmp / 'carnet.db'}"
        migrate.upgrade(make_engine(url))
        yield url
        return
    name = f"carnet_bench_web_{uuid.uuid4().hex[:8]}"
    admin = make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _account(runtime: Runtime, roles: set[str]) -> Account:
    """The first seeded account holding one of these roles (active grant)."""
    from carnet.access.models import RoleGrant

    with runtime.session_factory() as session:
        account = session.scalar(
            sa.select(Account)
            .join(RoleGrant, RoleGrant.account_id == Account.id)
            .where(RoleGrant.role.in_(roles), RoleGrant.status == "active", Account.status == "active")
            .order_by(Account.username)
            .limit(1)
        )
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
    client.cookies.set("carnet_session", issued.token)
    client.cookies.set("carnet_csrf", issued.csrf_token)
    return client


def _a_patient_of(runtime: Runtime, account: Account) -> tuple[str, str | None]:
    """A patient on the physician's day list (through the gate, like the page)."""
    actor = Actor(
        kind=ActorKind.STAFF,
        username=account.username,
        roles=frozenset({Role.PHYSICIAN}),
        account_id=account.id,
        facility_id=account.facility_id,
        practitioner_id=account.practitioner_id,
    )
    day = Gate(runtime, actor).day_list()
    rows = day.appointments or []
    if rows:
        return rows[0].patient.id, rows[0].patient.ins
    inpatients = day.inpatients
    if inpatients:
        return inpatients[0].patient.id, inpatients[0].patient.ins
    raise SystemExit("the seeded physician has nobody on their day list: seed more patients")


def _time(client: TestClient, path: str, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        response = client.get(
            path, headers={"HX-Request": "true"} if "/sections/" in path or path.endswith("-log") else None
        )
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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="carnet-bench-web-") as tmp_name:
        tmp = Path(tmp_name)
        FileKeyProvider.create(tmp / "keys.json")
        with _database(args.postgres, tmp) as url:
            settings = Settings(env=Environment.TEST, var_dir=tmp, origin=ORIGIN, database_url=url)
            runtime = build_runtime(settings)
            started = time.perf_counter()
            seed_hospital(runtime, patients=args.patients, seed=7)
            seeded = time.perf_counter() - started
            app = create_app(runtime)
            physician = _account(runtime, {"physician"})
            patient_id, ins = _a_patient_of(runtime, physician)
            pages: list[tuple[str, Account | None, str]] = [
                ("sign-in page (baseline: no session, no data)", None, "/login"),
                ("my day (physician)", physician, "/day"),
                ("search by identifier (physician)", physician, f"/patients?identifier={ins or ''}"),
                ("chart (physician)", physician, f"/patients/{patient_id}"),
                ("  its notes section (htmx)", physician, f"/patients/{patient_id}/sections/notes"),
                (
                    "  its prescriptions section (htmx)",
                    physician,
                    f"/patients/{patient_id}/sections/prescriptions",
                ),
                ("  its coverage section (htmx)", physician, f"/patients/{patient_id}/sections/coverage"),
                (
                    "  its appointments section (htmx)",
                    physician,
                    f"/patients/{patient_id}/sections/appointments",
                ),
                ("account page (physician)", physician, "/account"),
                ("front desk (registration form)", _account(runtime, {"front_desk"}), "/desk"),
                ("security console (officer)", _account(runtime, {"security_officer"}), "/security"),
                ("administration (admin)", _account(runtime, {"system_administrator"}), "/admin"),
            ]
            portal = _patient_account(runtime)
            if portal is not None:
                pages.append(("patient portal", portal, "/portal"))
                pages.append(("  its access log (htmx)", portal, "/portal/access-log"))
            db = "PostgreSQL" if args.postgres else "SQLite"
            print(
                f"{args.patients:,} patients on {db}, seeded in {seeded:.0f} s;"
                f" {args.samples} samples per page"
            )
            print(f"{'page':50} {'median ms':>10} {'p95 ms':>8} {'x baseline':>11}")
            baseline = None
            with TestClient(app, base_url=ORIGIN) as anonymous:
                for label, account, path in pages:
                    client = anonymous if account is None else _client(app, runtime, account)
                    _time(client, path, 2)  # warm the templates and caches
                    times = sorted(_time(client, path, args.samples))
                    median = statistics.median(times)
                    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
                    baseline = baseline or median
                    print(f"{label:50} {median:10.1f} {p95:8.1f} {median / baseline:11.1f}")
            runtime.close()


if __name__ == "__main__":
    main()
