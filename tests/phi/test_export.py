"""Gate.export on SQLite and PostgreSQL (row-level security on): only an approved request of the
same account, once; the policy filters the patients; exposures are recorded on channel export."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from carnet.access.exports import approve_export, request_export
from carnet.access.roles import Role
from carnet.detection.models import Exposure
from carnet.kernel.errors import Forbidden
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from tests import factories as f


def test_an_approved_export_runs_once_through_the_gate(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    mine = f.register_patient(runtime, facility, family="Exporte")
    f.link_care(runtime, patient_id=mine.id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    f.register_patient(runtime, facility, family="Horsfile")  # no care relationship: left out
    other = f.register_patient(runtime, f.make_facility(runtime, "Autre"), family="Ailleurs")
    officer = f.make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility)

    asked = request_export(
        runtime,
        actor=doctor,
        purpose="transfert vers le registre",
        scope="patients",
        patient_ids=[mine.id, other.id],
    )
    with pytest.raises(Forbidden):
        Gate(runtime, doctor).export(export_id=asked.id)  # not approved yet
    approve_export(runtime, actor=officer, export_id=asked.id)

    export = Gate(runtime, doctor).export(export_id=asked.id)
    assert export.export_id == asked.id
    assert export.approved_by == str(officer.account_id)
    assert [p.id for p in export.items] == [mine.id]
    assert export.items[0].family == "Exporte"
    with runtime.session_factory() as session:
        rows = session.execute(
            sa.select(Exposure.patient_id, Exposure.channel).where(Exposure.actor_ref == doctor.actor_ref)
        ).all()
    assert [(str(p), c) for p, c in rows if c == "export"] == [(mine.id, "export")]

    with pytest.raises(Forbidden):
        Gate(runtime, doctor).export(export_id=asked.id)  # used
