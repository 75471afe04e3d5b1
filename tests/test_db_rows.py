"""Rows read by a Core statement made into model instances without the ORM's loading
(carnet.db.base.detached): what the session resolution and the guarded read rely on."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from carnet.db.base import Base, detached
from carnet.identity.models import Account, AuthSession
from carnet.patients.models import Patient


def test_a_detached_instance_holds_the_row_and_nothing_to_write() -> None:
    pid, facility = uuid.uuid4(), uuid.uuid4()
    now = dt.datetime(2026, 12, 7, 4, 0, tzinfo=dt.UTC)
    patient = detached(Patient, {"id": pid, "facility_id": facility, "family_ct": b"ct", "updated_at": now})
    assert (patient.id, patient.facility_id) == (pid, facility)
    assert (patient.family_ct, patient.updated_at) == (b"ct", now)
    assert patient.merged_into_id is None  # a column the row did not carry reads as empty
    state = sa.inspect(patient)
    assert state.transient  # in no session: a flush can never write it
    assert not state.attrs.id.history.added  # loaded, not set: no pending change
    # The constructor's instance differs only there: its values are changes to write.
    assert Patient(id=pid).id == pid and sa.inspect(Patient(id=pid)).attrs.id.history.added


@pytest.mark.parametrize("model", [AuthSession, Account, Patient])
def test_the_core_loaders_name_columns_as_the_model_names_its_attributes(model: type[Base]) -> None:
    # authenticate.resolve and the kernel's patient_to_read fill instances by column key.
    mapper = sa.inspect(model)
    table = mapper.local_table
    assert isinstance(table, sa.Table)
    assert sorted(a.key for a in mapper.column_attrs) == sorted(c.key for c in table.columns)
