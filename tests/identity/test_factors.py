from __future__ import annotations

import datetime as dt

import pyotp
from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.identity.conftest import PASSWORD, login, make_person


def test_enrol_a_second_totp_then_remove_the_first(
    client: TestClient, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    person = make_person(sqlite_runtime, "two.phones")
    login(client, person)
    first_device = client.get("/auth/factors").json()["totp"][0]["id"]
    started = client.post("/auth/totp/enroll").json()
    assert started["otpauthUri"].startswith("otpauth://totp/carnet:two.phones?secret=")
    new_code = pyotp.TOTP(started["secret"]).at(clock.now())
    assert (
        client.post(
            "/auth/totp/confirm", json={"deviceId": started["deviceId"], "code": "000000"}
        ).status_code
        == 400
    )
    assert client.post(
        "/auth/totp/confirm", json={"deviceId": started["deviceId"], "code": new_code}
    ).json() == {"confirmed": True}
    assert len(client.get("/auth/factors").json()["totp"]) == 2
    assert client.post(f"/auth/totp/{first_device}/remove").json() == {"removed": True}
    # The remaining device cannot go: a staff account keeps a second factor.
    assert client.post(f"/auth/totp/{started['deviceId']}/remove").status_code == 400
    # The old phone no longer signs in; the new one does.
    movable_clock.advance(dt.timedelta(seconds=31))
    client.cookies.clear()
    old = client.post(
        "/auth/login", json={"username": "two.phones", "password": PASSWORD, "otp": person.code()}
    )
    assert old.status_code == 401
    new = client.post(
        "/auth/login",
        json={
            "username": "two.phones",
            "password": PASSWORD,
            "otp": pyotp.TOTP(started["secret"]).at(clock.now()),
        },
    )
    assert new.status_code == 200
    with sqlite_runtime.session_factory() as session:
        kinds = [(e.kind, e.outcome) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert ("account:mfa:enrolled", "denied") in kinds
    assert ("account:mfa:enrolled", "success") in kinds
    assert ("account:mfa:removed", "success") in kinds


def test_changing_factors_needs_a_fresh_second_factor(
    client: TestClient, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    person = make_person(sqlite_runtime, "stale")
    login(client, person)
    device = client.get("/auth/factors").json()["totp"][0]["id"]
    movable_clock.advance(dt.timedelta(minutes=6))
    assert client.post("/auth/totp/enroll").status_code == 401
    assert client.post(f"/auth/totp/{device}/remove").status_code == 401


def test_a_patient_enrols_totp_and_then_needs_it(
    client: TestClient, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    patient = make_person(sqlite_runtime, "patient.p", kind="patient", with_totp=False)
    data = login(client, patient)
    assert data["roles"] == ["patient"] and data["kind"] == "patient"
    started = client.post("/auth/totp/enroll").json()
    code = pyotp.TOTP(started["secret"]).at(clock.now())
    assert (
        client.post("/auth/totp/confirm", json={"deviceId": started["deviceId"], "code": code}).status_code
        == 200
    )
    client.cookies.clear()
    assert client.post("/auth/login", json={"username": "patient.p", "password": PASSWORD}).status_code == 401


def test_someone_elses_device_answers_not_found(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    from carnet.app import create_app

    alice = make_person(sqlite_runtime, "alice.f")
    bob = make_person(sqlite_runtime, "bob.f")
    app = create_app(sqlite_runtime)
    with (
        TestClient(app, base_url="http://localhost:8000") as a,
        TestClient(app, base_url="http://localhost:8000") as b,
    ):
        login(a, alice)
        login(b, bob)
        bobs = b.get("/auth/factors").json()["totp"][0]["id"]
        assert a.post(f"/auth/totp/{bobs}/remove").status_code == 404
        assert len(b.get("/auth/factors").json()["totp"]) == 1


def test_a_patient_with_a_passkey_needs_it(client: TestClient, sqlite_runtime: Runtime) -> None:
    from carnet.identity.models import WebAuthnCredential

    patient = make_person(sqlite_runtime, "patient.key", kind="patient", with_totp=False)
    with sqlite_runtime.session_factory.begin() as session:
        session.add(
            WebAuthnCredential(
                account_id=patient.account_id,
                credential_id="BBBB",
                public_key=b"k",
                sign_count=0,
                label="phone",
                created_at=clock.now(),
            )
        )
    assert (
        client.post("/auth/login", json={"username": "patient.key", "password": PASSWORD}).status_code == 401
    )
