"""The second wall: on PostgreSQL, the application role sees only its facilities' rows, even
with raw SQL that bypasses the gate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from carnet.access.roles import Role
from carnet.access.scope import enter_scope
from carnet.kernel.errors import NotFound
from carnet.phi.gate import Gate
from carnet.runtime import Runtime, build_runtime
from carnet.settings import Settings
from tests import factories as f
from tests.conftest import _empty_postgres

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_runtime(postgres_database: str, settings: Settings) -> Iterator[Runtime]:
    runtime = build_runtime(settings.model_copy(update={"database_url": postgres_database}))
    yield runtime
    _empty_postgres(runtime.engine)
    runtime.close()


def _count(runtime: Runtime, table: str, scope: str | None) -> int:
    with runtime.engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL ROLE carnet_app"))
        if scope is not None:
            conn.execute(sa.text("SELECT set_config('carnet.facility_ids', :v, true)"), {"v": scope})
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_raw_sql_as_the_application_role_sees_only_its_facilities(pg_runtime: Runtime) -> None:
    runtime = pg_runtime
    north, south = f.make_facility(runtime), f.make_facility(runtime)
    for facility, n in ((north, 2), (south, 3)):
        for _ in range(n):
            f.register_patient(runtime, facility)
    # As the superuser the harness connects with, everything (RLS does not bind superusers).
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM patients")).scalar_one() == 5
    assert _count(runtime, "patients", str(north)) == 2
    assert _count(runtime, "patients", str(south)) == 3
    assert _count(runtime, "patients", f"{north},{south}") == 5
    assert _count(runtime, "patients", None) == 0  # no declared scope: nothing
    assert _count(runtime, "patients", "*") == 5  # the system door's explicit scope
    assert _count(runtime, "resource_versions", str(north)) == 2
    # Writing into another facility is refused by the policy's WITH CHECK.
    with pytest.raises(sa.exc.ProgrammingError), runtime.engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL ROLE carnet_app"))
        conn.execute(sa.text("SELECT set_config('carnet.facility_ids', :v, true)"), {"v": str(north)})
        conn.execute(
            sa.text("UPDATE patients SET gender = 'other' WHERE facility_id = :s"), {"s": str(south)}
        )
        conn.execute(
            sa.text("UPDATE patients SET facility_id = :s WHERE facility_id = :n"),
            {"s": str(south), "n": str(north)},
        )
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM patients WHERE gender = 'other'")).scalar_one() == 0


def test_the_gate_runs_inside_the_wall(pg_runtime: Runtime) -> None:
    runtime = pg_runtime
    north, south = f.make_facility(runtime), f.make_facility(runtime)
    patient = f.register_patient(runtime, south)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=north)
    gate = Gate(runtime, clerk)
    with runtime.session_factory.begin() as session:
        # What the gate does at the start of each transaction, then a query that forgets its filters.
        enter_scope(session, [north])
        assert session.execute(sa.text("SELECT count(*) FROM patients")).scalar_one() == 0
        assert session.execute(sa.text("SELECT current_user")).scalar_one() == "carnet_app"
    with pytest.raises(NotFound):
        gate.read_patient(patient_id=patient.id)
