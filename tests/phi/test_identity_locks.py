"""On PostgreSQL the duplicate check of a registration is serialised on the identity's blind keys,
not on the facility: unrelated registrations run side by side, the same person's still queue
(and the second is refused as a duplicate: tests/phi/test_gate_writes.py races them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from carnet.access.roles import Role
from carnet.crypto.blind import IndexKind
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


def _waiting_on_advisory_locks(runtime: Runtime) -> int:
    with runtime.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ).scalar_one()
        )


def test_a_registration_in_flight_holds_its_identity_not_the_facility(pg_runtime: Runtime) -> None:
    runtime = pg_runtime
    facility = f.make_facility(runtime)
    clerk = f.make_account(runtime, roles=[Role.FRONT_DESK], facility_id=facility)
    ins = "2900175000222"
    key = runtime.keyring.blind.index(IndexKind.IDENTIFIER, ins).hex()
    outcome: list[str] = []
    # What a registration of this INS holds until its commit: the facility's identity lock
    # shared, and the identity's own key.
    with runtime.engine.connect() as holder:
        holder.execute(
            sa.text("SELECT pg_advisory_xact_lock_shared(hashtextextended(:k, 0))"),
            {"k": f"carnet:patient-identity:{facility}"},
        )
        holder.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"carnet:patient-identity:{facility}:ins:{key}"},
        )
        # Another person is registered meanwhile (the thread only bounds a failure to a hang).
        other = threading.Thread(
            target=lambda: outcome.append(f.register_patient(runtime, facility, by=clerk, family="Autre").id)
        )
        other.start()
        other.join(timeout=120)
        assert outcome, "an unrelated registration waited for the one in flight"
        # The same INS waits for the registration in flight to end.
        same = threading.Thread(
            target=lambda: outcome.append(f.register_patient(runtime, facility, by=clerk, ins=ins).id)
        )
        same.start()
        for _ in range(600):
            if _waiting_on_advisory_locks(runtime):
                break
            time.sleep(0.1)
        assert _waiting_on_advisory_locks(runtime) == 1 and len(outcome) == 1
        holder.rollback()  # the registration in flight ends
    same.join(timeout=120)
    assert len(outcome) == 2


def test_name_keys_are_walled_by_facility_like_the_patients(pg_runtime: Runtime) -> None:
    runtime = pg_runtime
    north, south = f.make_facility(runtime), f.make_facility(runtime)
    f.register_patient(runtime, north, family="Nord")
    f.register_patient(runtime, south, family="Sud-Ouest")

    def count(scope: str | None) -> int:
        with runtime.engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL ROLE carnet_app"))
            if scope is not None:
                conn.execute(sa.text("SELECT set_config('carnet.facility_ids', :v, true)"), {"v": scope})
            return int(conn.execute(sa.text("SELECT count(*) FROM patient_name_keys")).scalar_one())

    assert count(None) == 0
    north_keys, south_keys = count(str(north)), count(str(south))
    assert north_keys >= 2 and south_keys >= 3  # each word of the family and given names
    assert count("*") == north_keys + south_keys
