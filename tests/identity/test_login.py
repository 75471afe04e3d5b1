from __future__ import annotations

import datetime as dt
import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.identity.models import AuthSession
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.identity.conftest import login, make_person

GENERIC = "the username, password or code is not right"


def audit_kinds(runtime: Runtime) -> list[tuple[str, str]]:
    with runtime.session_factory() as session:
        return [(e.kind, e.outcome) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]


@pytest.mark.parametrize("role", [r for r in Role if r not in (Role.PATIENT, Role.API_CLIENT)])
def test_password_alone_never_yields_a_session_for_any_staff_role(
    client: TestClient, sqlite_runtime: Runtime, role: Role
) -> None:
    person = make_person(sqlite_runtime, f"user-{role.value}", roles=(role,))
    response = client.post("/auth/login", json={"username": person.username, "password": person.password})
    assert response.status_code == 401
    assert response.json()["issue"][0]["diagnostics"] == GENERIC
    assert not [c for c in client.cookies if "session" in c]
    assert ("account:login:failure", "denied") in audit_kinds(sqlite_runtime)


def test_staff_without_any_second_factor_cannot_sign_in(client: TestClient, sqlite_runtime: Runtime) -> None:
    person = make_person(sqlite_runtime, "nofactor", with_totp=False)
    response = client.post(
        "/auth/login", json={"username": "nofactor", "password": person.password, "otp": ""}
    )
    assert response.status_code == 401


def test_login_with_totp_sets_a_strict_httponly_session_and_me_answers(
    client: TestClient, sqlite_runtime: Runtime
) -> None:
    person = make_person(sqlite_runtime, "dr.house")
    data = login(client, person)
    assert data["roles"] == ["physician"]
    cookies = client.cookies
    assert "carnet_session" in cookies
    me = client.get("/auth/me").json()
    assert me["username"] == "dr.house"
    assert me["account"] == str(person.account_id)
    assert me["roles"] == ["physician"]
    assert me["fhirUser"] is None
    assert ("account:login:success", "success") in audit_kinds(sqlite_runtime)


def test_session_cookie_attributes(sqlite_runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    from carnet.app import create_app

    person = make_person(sqlite_runtime, "cookie.check")
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as c:
        response = c.post(
            "/auth/login",
            json={"username": person.username, "password": person.password, "otp": person.code()},
        )
    headers = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    session_cookie = next(h for h in headers if h.startswith("carnet_session="))
    assert "HttpOnly" in session_cookie
    assert "SameSite=strict" in session_cookie
    assert "Secure" not in session_cookie  # http://localhost only
    runtime = sqlite_runtime
    runtime.settings = runtime.settings.model_copy(update={"origin": "https://epr.example.org"})
    with TestClient(create_app(runtime), base_url="https://epr.example.org") as c:
        movable_clock.advance(dt.timedelta(seconds=31))
        response = c.post(
            "/auth/login",
            json={"username": person.username, "password": person.password, "otp": person.code()},
        )
    headers = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    session_cookie = next(h for h in headers if h.startswith("__Host-carnet_session="))
    assert "Secure" in session_cookie and "HttpOnly" in session_cookie


def test_unknown_user_wrong_password_wrong_code_get_the_same_answer(
    client: TestClient, sqlite_runtime: Runtime
) -> None:
    person = make_person(sqlite_runtime, "same.answer")
    answers = [
        client.post("/auth/login", json={"username": "nobody", "password": "x" * 14, "otp": "123456"}),
        client.post(
            "/auth/login", json={"username": person.username, "password": "x" * 14, "otp": person.code()}
        ),
        client.post(
            "/auth/login",
            json={
                "username": person.username,
                "password": person.password,
                "otp": person.code(offset_steps=5),
            },
        ),
    ]
    assert {r.status_code for r in answers} == {401}
    assert len({r.text for r in answers}) == 1
    with sqlite_runtime.session_factory() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.kind == "account:login:failure")).all()
        reasons = sorted(json.loads(e.detail)["reason"] for e in events)
    assert reasons == ["unknown account", "wrong code", "wrong password"]


def test_a_totp_code_cannot_be_replayed(client: TestClient, sqlite_runtime: Runtime) -> None:
    person = make_person(sqlite_runtime, "replay")
    code = person.code()
    first = client.post("/auth/login", json={"username": "replay", "password": person.password, "otp": code})
    assert first.status_code == 200
    client.cookies.clear()
    again = client.post("/auth/login", json={"username": "replay", "password": person.password, "otp": code})
    assert again.status_code == 401
    # an earlier step (still inside the drift window) is also refused once a later one was used
    earlier = person.code(offset_steps=-1)
    assert (
        client.post(
            "/auth/login", json={"username": "replay", "password": person.password, "otp": earlier}
        ).status_code
        == 401
    )


def test_new_session_id_at_login_and_the_old_one_ends(
    client: TestClient, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    person = make_person(sqlite_runtime, "fixation")
    login(client, person)
    first = client.cookies.get("carnet_session")
    movable_clock.advance(dt.timedelta(seconds=31))
    login(client, person)
    second = client.cookies.get("carnet_session")
    assert first and second and first != second
    with sqlite_runtime.session_factory() as session:
        rows = session.scalars(select(AuthSession).order_by(AuthSession.created_at)).all()
        assert rows[0].revoked_at is not None and rows[1].revoked_at is None
        assert first not in {r.token_digest for r in rows}  # only digests are stored


def test_logout_ends_the_session_and_needs_csrf(client: TestClient, sqlite_runtime: Runtime) -> None:
    person = make_person(sqlite_runtime, "leaving")
    login(client, person)
    token = client.headers.pop("X-CSRF-Token")
    refused = client.post("/auth/logout")
    assert refused.status_code == 403
    assert client.get("/auth/me").status_code == 200
    assert client.post("/auth/logout", headers={"X-CSRF-Token": token}).status_code == 200
    assert client.get("/auth/me").status_code == 401
    kinds = audit_kinds(sqlite_runtime)
    assert ("account:session:revoked", "success") in kinds and ("account:logout", "success") in kinds


def test_login_from_another_site_is_refused(client: TestClient, sqlite_runtime: Runtime) -> None:
    person = make_person(sqlite_runtime, "csrf.login")
    body = {"username": person.username, "password": person.password, "otp": person.code()}
    assert (
        client.post("/auth/login", json=body, headers={"Origin": "https://evil.example"}).status_code == 403
    )
    assert (
        client.post(
            "/auth/login", content=json.dumps(body), headers={"Content-Type": "text/plain"}
        ).status_code
        == 400
    )
    assert (
        client.post("/auth/login", json=body, headers={"Origin": "http://localhost:8000"}).status_code == 200
    )


def test_me_names_a_practitioner_as_fhir_user(client: TestClient, sqlite_runtime: Runtime) -> None:
    from carnet.org.models import Facility, Practitioner

    with sqlite_runtime.session_factory.begin() as session:
        facility = Facility(name="Hôpital Test", finess="750000001", city="Paris")
        session.add(facility)
        session.flush()
        practitioner = Practitioner(
            facility_id=facility.id,
            rpps="10000000001",
            family="Martin",
            given="Alice",
            profession="physician",
        )
        session.add(practitioner)
        session.flush()
        practitioner_id, facility_id = practitioner.id, facility.id
    person = make_person(sqlite_runtime, "dr.martin", practitioner_id=practitioner_id)
    with sqlite_runtime.session_factory.begin() as session:
        from carnet.identity.models import Account

        session.get_one(Account, person.account_id).facility_id = facility_id
    login(client, person)
    me = client.get("/auth/me").json()
    assert me["fhirUser"] == f"Practitioner/{practitioner_id}"
    assert me["facility"] == str(facility_id)
