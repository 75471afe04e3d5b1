from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.app import create_app
from carnet.identity.authenticate import require_fresh_second_factor
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.kernel.errors import StepUpRequired
from carnet.runtime import Runtime
from carnet.settings import Environment
from tests.identity.conftest import login, make_person


def test_idle_timeout_is_60_minutes_for_clinicians(
    client: TestClient, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    login(client, make_person(sqlite_runtime, "nurse.idle", roles=(Role.NURSE,)))
    movable_clock.advance(dt.timedelta(minutes=59))
    assert client.get("/auth/me").status_code == 200  # activity resets the idle clock
    movable_clock.advance(dt.timedelta(minutes=59))
    assert client.get("/auth/me").status_code == 200
    movable_clock.advance(dt.timedelta(minutes=61))
    response = client.get("/auth/me")
    assert response.status_code == 401
    assert "expired or revoked" in response.json()["issue"][0]["diagnostics"]


def test_absolute_timeout_is_12_hours_even_when_active(
    client: TestClient, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    login(client, make_person(sqlite_runtime, "busy"))
    for _ in range(23):
        movable_clock.advance(dt.timedelta(minutes=30))
        assert client.get("/auth/me").status_code == 200
    movable_clock.advance(dt.timedelta(minutes=31))
    assert client.get("/auth/me").status_code == 401


def test_privileged_idle_timeout_is_15_minutes(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    # Demo mode: a seeded privileged account may use TOTP, so its session is a full one.
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"env": Environment.DEMO})
    admin = make_person(sqlite_runtime, "admin.idle", roles=(Role.SYSTEM_ADMINISTRATOR,))
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as c:
        assert login(c, admin)["enrollmentOnly"] is False
        movable_clock.advance(dt.timedelta(minutes=14))
        assert c.get("/auth/me").status_code == 200
        movable_clock.advance(dt.timedelta(minutes=16))
        assert c.get("/auth/me").status_code == 401


def test_a_privilege_change_ends_the_session(
    client: TestClient, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    from carnet.access.models import RoleGrant

    person = make_person(sqlite_runtime, "promoted", roles=(Role.NURSE,))
    login(client, person)
    with sqlite_runtime.session_factory.begin() as session:
        session.add(
            RoleGrant(
                account_id=person.account_id,
                role=Role.SECURITY_OFFICER.value,
                status="active",
                requested_at=clock.now(),
                decided_at=clock.now(),
            )
        )
    ended = client.get("/auth/me")
    assert ended.status_code == 401
    assert "roles have changed" in ended.json()["issue"][0]["diagnostics"]
    # The next login gets a new session, under the new role's rules (a passkey to enrol first).
    movable_clock.advance(dt.timedelta(seconds=31))
    assert login(client, person)["enrollmentOnly"] is True


def test_revoking_all_sessions_cuts_every_open_session(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    person = make_person(sqlite_runtime, "stolen")
    app = create_app(sqlite_runtime)
    with (
        TestClient(app, base_url="http://localhost:8000") as mine,
        TestClient(app, base_url="http://localhost:8000") as thief,
    ):
        login(thief, person)
        movable_clock.advance(dt.timedelta(seconds=31))
        login(mine, person)
        assert len(mine.get("/auth/sessions").json()["sessions"]) == 2
        assert mine.post("/auth/sessions/revoke-all").json() == {"revoked": 2}
        assert thief.get("/auth/me").status_code == 401
        assert mine.get("/auth/me").status_code == 401


def test_revoking_one_session_and_not_someone_elses(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    alice = make_person(sqlite_runtime, "alice")
    bob = make_person(sqlite_runtime, "bob")
    app = create_app(sqlite_runtime)
    with (
        TestClient(app, base_url="http://localhost:8000") as a,
        TestClient(app, base_url="http://localhost:8000") as a2,
        TestClient(app, base_url="http://localhost:8000") as b,
    ):
        login(a, alice)
        movable_clock.advance(dt.timedelta(seconds=31))
        login(a2, alice)
        login(b, bob)
        bobs = b.get("/auth/sessions").json()["sessions"][0]["id"]
        # Alice cannot revoke Bob's session: it answers like a missing one.
        assert a.post(f"/auth/sessions/{bobs}/revoke").status_code == 404
        assert b.get("/auth/me").status_code == 200
        other = next(s["id"] for s in a.get("/auth/sessions").json()["sessions"] if not s["current"])
        assert a.post(f"/auth/sessions/{other}/revoke").json() == {"revoked": 1}
        assert a2.get("/auth/me").status_code == 401
        assert a.get("/auth/me").status_code == 200
        history = a.get("/auth/security-history").json()["events"]
        assert [e["kind"] for e in history][:1] == ["account:session:revoked"]


def test_a_contained_account_is_told_why_and_whom_to_call(
    client: TestClient, sqlite_runtime: Runtime
) -> None:
    person = make_person(sqlite_runtime, "contained")
    login(client, person)
    with sqlite_runtime.session_factory.begin() as session:
        session.execute(
            update(Account)
            .where(Account.id == person.account_id)
            .values(status="suspended", status_reason="unusual number of patients opened")
        )
    response = client.get("/auth/me")
    assert response.status_code == 403
    message = response.json()["issue"][0]["diagnostics"]
    assert "unusual number of patients opened" in message
    assert sqlite_runtime.settings.security_contact in message


def test_a_contained_session_is_told_it_is_suspended_not_merely_ended(
    client: TestClient, sqlite_runtime: Runtime
) -> None:
    """Containment suspends the account AND revokes its sessions; the answer must still say why."""
    from carnet.identity import sessions

    person = make_person(sqlite_runtime, "contained2")
    login(client, person)
    system = Actor(kind=ActorKind.SYSTEM, username="system:detection", roles=frozenset())
    with sqlite_runtime.session_factory.begin() as session:
        session.execute(
            update(Account)
            .where(Account.id == person.account_id)
            .values(status="suspended", status_reason="a canary patient was opened")
        )
        revoked = sessions.revoke(
            session,
            account_id=person.account_id,
            session_id=None,
            reason="contained",
            actor=system,
            audit=sqlite_runtime.audit,
        )
    assert revoked >= 1
    response = client.get("/auth/me")
    assert response.status_code == 403
    message = response.json()["issue"][0]["diagnostics"]
    assert "a canary patient was opened" in message
    assert sqlite_runtime.settings.security_contact in message


def test_step_up_freshness() -> None:
    actor = Actor(kind=ActorKind.STAFF, username="x", roles=frozenset(), second_factor_at=None)
    with pytest.raises(StepUpRequired):
        require_fresh_second_factor(actor)
    fresh = Actor(kind=ActorKind.STAFF, username="x", roles=frozenset(), second_factor_at=clock.now())
    require_fresh_second_factor(fresh)
    stale = Actor(
        kind=ActorKind.STAFF,
        username="x",
        roles=frozenset(),
        second_factor_at=clock.now() - dt.timedelta(minutes=6),
    )
    with pytest.raises(StepUpRequired):
        require_fresh_second_factor(stale)


def test_step_up_endpoint_refreshes_the_second_factor(
    client: TestClient, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    person = make_person(sqlite_runtime, "stepper")
    login(client, person)
    movable_clock.advance(dt.timedelta(minutes=10))
    assert client.post("/auth/recovery-codes").status_code == 401  # stale second factor
    wrong = client.post("/auth/step-up", json={"otp": person.code(offset_steps=4)})
    assert wrong.status_code == 401
    assert client.post("/auth/step-up", json={"otp": person.code()}).status_code == 200
    codes = client.post("/auth/recovery-codes").json()["recoveryCodes"]
    assert len(codes) == 10 and len(set(codes)) == 10
    kinds = [e["kind"] + "/" + e["outcome"] for e in client.get("/auth/security-history").json()["events"]]
    assert "account:mfa:step-up/denied" in kinds and "account:mfa:step-up/success" in kinds


def test_recovery_codes_are_single_use(
    client: TestClient, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    person = make_person(sqlite_runtime, "recovering")
    login(client, person)
    codes = client.post("/auth/recovery-codes").json()["recoveryCodes"]
    client.cookies.clear()
    body = {"username": person.username, "password": person.password, "otp": codes[0]}
    assert client.post("/auth/login", json=body).status_code == 200
    client.cookies.clear()
    assert client.post("/auth/login", json=body).status_code == 401
    body["otp"] = codes[1].upper()
    assert client.post("/auth/login", json=body).status_code == 200


def test_security_history_is_the_owners_own(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    alice = make_person(sqlite_runtime, "alice.h")
    bob = make_person(sqlite_runtime, "bob.h")
    app = create_app(sqlite_runtime)
    with TestClient(app, base_url="http://localhost:8000") as c:
        c.post(
            "/auth/login", json={"username": "alice.h", "password": "wrong password here", "otp": "000000"}
        )
        login(c, bob)
        events = c.get("/auth/security-history").json()["events"]
    assert {e["kind"] for e in events} == {
        "account:login:success",
        "account:mfa:enrolled",
        "account:account:created",
    }
    assert alice.account_id != bob.account_id
    with TestClient(app, base_url="http://localhost:8000") as anonymous:
        assert anonymous.get("/auth/security-history").status_code == 401


def test_a_requests_session_lookup_does_not_carry_the_password_hash() -> None:
    """Every request reads its session, account and grants in one statement (resolve, and the
    gate's fast read): the account's secrets are not among what it reads."""
    from carnet.identity.authenticate import _SESSION_ACCOUNT_GRANTS, SESSION_CONTEXT

    for statement in (_SESSION_ACCOUNT_GRANTS.statement, SESSION_CONTEXT):
        read = {c.key for c in statement.selected_columns}
        assert "password_hash" not in read
        assert {"status", "must_change_password", "must_replace_second_factor"} <= read
