"""An access that cannot be audited does not happen: no patient data returned, nothing committed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.org.models import Facility
from carnet.patients.models import Patient
from carnet.phi.system import system_access
from carnet.runtime import Runtime

TRIGGERS = {
    "sqlite": [
        "CREATE TRIGGER refuse_reads BEFORE INSERT ON audit_events WHEN NEW.kind = 'phi:resource:read'"
        " BEGIN SELECT RAISE(ABORT, 'the audit store refuses this event'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION carnet_test_refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'the audit store refuses this event'; END $$",
        "CREATE TRIGGER refuse_reads BEFORE INSERT ON audit_events FOR EACH ROW"
        " WHEN (NEW.kind = 'phi:resource:read') EXECUTE FUNCTION carnet_test_refuse()",
    ],
}
DROP = {
    "sqlite": ["DROP TRIGGER IF EXISTS refuse_reads"],
    "postgresql": [
        "DROP TRIGGER IF EXISTS refuse_reads ON audit_events",
        "DROP FUNCTION IF EXISTS carnet_test_refuse()",
    ],
}


@pytest.fixture
def patient_id(runtime: Runtime) -> uuid.UUID:
    now = dt.datetime.now(dt.UTC)
    with system_access(runtime, reason="test: create a patient") as door:
        facility = Facility(name="CH Test", finess=uuid.uuid4().hex[:9], city="Lyon")
        door.session.add(facility)
        door.session.flush()
        runtime.keyring.create_data_key(door.session, facility.id)
        pid = uuid.uuid4()

        def enc(column: str, value: str) -> bytes:
            blob = door.keyring.encrypt(
                value, facility_id=facility.id, table="patients", column=column, row_id=pid
            )
            assert blob is not None
            return blob

        door.session.add(
            Patient(
                id=pid,
                facility_id=facility.id,
                family_ct=enc("family", "Martin"),
                family_bi=b"\0" * 16,
                given_ct=enc("given", "Lucie"),
                given_bi=b"\0" * 16,
                birth_date_ct=enc("birth_date", "1970-01-01"),
                birth_date_bi=b"\0" * 16,
                gender="female",
                created_at=now,
                updated_at=now,
            )
        )
    return pid


@pytest.fixture
def refusing_audit_store(runtime: Runtime) -> Iterator[None]:
    """The real writer, against a database that refuses to store read events."""
    dialect = runtime.engine.dialect.name
    with runtime.engine.begin() as conn:
        for statement in TRIGGERS[dialect]:
            conn.exec_driver_sql(statement)
    yield
    with runtime.engine.begin() as conn:
        for statement in DROP[dialect]:
            conn.exec_driver_sql(statement)


def counts(runtime: Runtime) -> tuple[int, str]:
    with Session(runtime.engine) as session:
        events = session.scalar(sa.select(sa.func.count()).select_from(sa.table("audit_events")))
        gender = session.scalar(sa.text("SELECT gender FROM patients"))
    return int(events or 0), str(gender)


def read_name(runtime: Runtime, patient_id: uuid.UUID) -> str | None:
    """The gate's order: query, redact, audit (same transaction), only then return."""
    with system_access(runtime, reason="test: read a chart") as door:
        patient = door.session.get(Patient, patient_id)
        assert patient is not None
        name = door.keyring.decrypt(patient.family_ct, table="patients", column="family", row_id=patient.id)
        patient.gender = "other"  # a write in the same transaction must not survive either
        door.audit.append(
            door.session,
            AuditRecord(
                kind=AuditKind.PHI_READ,
                outcome=Outcome.SUCCESS,
                actor=door.actor,
                resource_type="Patient",
                patient_ids=[patient_id],
            ),
        )
        return name


def test_a_refused_audit_write_returns_no_patient_data(
    runtime: Runtime, patient_id: uuid.UUID, refusing_audit_store: None
) -> None:
    before = counts(runtime)
    returned: list[str | None] = []
    with pytest.raises(sa.exc.DBAPIError):
        returned.append(read_name(runtime, patient_id))
    assert returned == []
    # Neither the read's event, nor the door's own event, nor the write survived.
    assert counts(runtime) == before == (before[0], "female")


class BrokenWriter:
    """A writer whose every append fails (e.g. the audit store is unreachable)."""

    def __init__(self) -> None:
        self.calls = 0

    def append(self, session: Session, record: AuditRecord) -> int:
        self.calls += 1
        raise OSError("audit store unreachable")


def test_the_system_door_does_not_open_when_its_audit_fails(runtime: Runtime, patient_id: uuid.UUID) -> None:
    broken = BrokenWriter()
    crippled = dataclasses.replace(runtime, audit=broken)
    before = counts(runtime)
    entered = False
    with pytest.raises(OSError), system_access(crippled, reason="test: read a chart"):
        entered = True
    assert broken.calls == 1 and not entered
    assert counts(runtime) == before
    # And the real writer still works afterwards: the failure left no half-written chain.
    assert read_name(runtime, patient_id) == "Martin"
