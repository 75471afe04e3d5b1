"""Seeded data is ordinary data to the gate: care relationships open charts, canaries stay shut."""

from __future__ import annotations

import uuid

import pyotp
import pytest
from sqlalchemy import select

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.detection.models import CanaryPatient
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.kernel.errors import NotFound
from carnet.patients.models import Patient
from carnet.phi.gate import Gate
from carnet.phi.loader import decrypt_field
from carnet.runtime import Runtime
from carnet.synth.seed import seed_hospital


def _physician_actor(runtime: Runtime, practitioner_id: uuid.UUID) -> Actor:
    with runtime.session_factory() as session:
        account = session.scalars(select(Account).where(Account.practitioner_id == practitioner_id)).one()
    return Actor(
        kind=ActorKind.STAFF,
        username=account.username,
        roles=frozenset({Role.PHYSICIAN}),
        account_id=account.id,
        facility_id=account.facility_id,
        practitioner_id=practitioner_id,
        session_id=uuid.uuid4(),
        address="127.0.0.1",
        second_factor_at=clock.now(),
    )


def test_a_designated_physician_opens_a_seeded_chart_and_its_history(runtime: Runtime) -> None:
    seed_hospital(runtime, patients=120, seed=3, facilities=1)
    with runtime.session_factory() as session:
        patient = session.scalars(
            select(Patient).where(Patient.designated_physician_id.is_not(None)).order_by(Patient.id).limit(1)
        ).one()
        canary_id = session.scalars(select(CanaryPatient.patient_id).limit(1)).one()
    assert patient.designated_physician_id is not None
    family = decrypt_field(
        runtime.keyring, table="patients", column="family", row_id=patient.id, blob=patient.family_ct
    )
    gate = Gate(runtime, _physician_actor(runtime, patient.designated_physician_id))

    chart = gate.read_patient(patient_id=str(patient.id))
    assert chart.family == family
    versions = gate.history(resource_type="Patient", resource_id=str(patient.id))
    assert [v.version_id for v in versions] == [1]
    assert versions[0].data["family"] == family
    assert gate.list_prescriptions(patient_id=str(patient.id)) is not None
    # Nobody has a reason to open a canary: it answers like a missing record.
    with pytest.raises(NotFound):
        gate.read_patient(patient_id=str(canary_id))


def test_seeded_credentials_sign_in(sqlite_runtime: Runtime) -> None:
    """The credentials file is usable as is: password plus the TOTP code from its secret."""
    from fastapi.testclient import TestClient

    from carnet.app import create_app

    report = seed_hospital(sqlite_runtime, patients=60, seed=5, facilities=1)
    by_role = {c.roles[0]: c for c in report.credentials}
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as client:
        for role in (Role.PHYSICIAN.value, Role.FRONT_DESK.value, Role.PATIENT.value):
            entry = by_role[role]
            client.cookies.clear()
            answer = client.post(
                "/auth/login",
                json={
                    "username": entry.username,
                    "password": entry.password,
                    "otp": pyotp.TOTP(entry.totp_secret).at(clock.now()),
                },
            )
            assert answer.status_code == 200, answer.text
            me = client.get("/auth/me").json()
            assert me["username"] == entry.username
            assert role in me["roles"]
            wrong = client.post(
                "/auth/login",
                json={"username": entry.username, "password": entry.password + "!", "otp": "000000"},
            )
            assert wrong.status_code == 401
