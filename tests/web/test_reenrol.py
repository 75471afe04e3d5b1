"""Probation and in-person re-enrolment: an account opened or restored in the last 7 days that is
contained again stays suspended until its owner re-enrols in person (`carnet users re-enrol`)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from carnet.access.accounts import create_staff_account
from carnet.access.grants import approve_role_grant
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.identity import lifecycle
from carnet.identity.models import Account, AuthSession, TotpDevice
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.identity.test_commands import run_cli
from tests.proofs import prove
from tests.web.conftest import Hospital, Person, make_person, open_session_for
from tests.web.test_stepup import actor_of, contain_account


def _account(runtime: Runtime, username: str) -> Account:
    with runtime.session_factory() as session:
        found = session.scalar(sa.select(Account).where(Account.username == username))
        assert found is not None
        session.expunge(found)
        return found


def _open_clerk(runtime: Runtime, hospital: Hospital) -> tuple[Account, Person, Person]:
    admin1 = make_person(runtime, "admin.one", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    admin2 = make_person(runtime, "admin.two", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    created = create_staff_account(
        runtime,
        actor=actor_of(admin1, Role.SYSTEM_ADMINISTRATOR),
        username="desk.new",
        display_name="New Clerk",
        role="front_desk",
        facility_id=str(hospital.facility_id),
        reason="new admissions clerk",
    )
    approve_role_grant(runtime, actor=actor_of(admin2, Role.SYSTEM_ADMINISTRATOR), grant_id=created.grant.id)
    return _account(runtime, "desk.new"), admin1, admin2


def test_an_opened_account_is_on_probation_for_seven_days_a_seeded_one_is_not(
    sqlite_runtime: Runtime, hospital: Hospital
) -> None:
    clerk, _admin1, _admin2 = _open_clerk(sqlite_runtime, hospital)
    now = clock.now()
    assert lifecycle.on_probation(clerk, now)
    assert lifecycle.on_probation(clerk, now + dt.timedelta(days=6, hours=23))
    assert not lifecycle.on_probation(clerk, now + dt.timedelta(days=7))
    assert not lifecycle.on_probation(_account(sqlite_runtime, hospital.physician.username), now)


@pytest.fixture
def officers(sqlite_runtime: Runtime, hospital: Hospital) -> tuple[Person, Person]:
    fid = hospital.facility_id
    return (
        make_person(sqlite_runtime, "sec.olga", roles=(Role.SECURITY_OFFICER,), facility_id=fid),
        make_person(sqlite_runtime, "sec.paul", roles=(Role.SECURITY_OFFICER,), facility_id=fid),
    )


def _ask_restore(client: TestClient, runtime: Runtime, officer: Person, ref: str) -> int:
    client.cookies.clear()
    csrf = open_session_for(client, runtime, officer)
    prove(client, runtime)
    form = {"actor_ref": ref, "reason": "spoke with the owner, who was on shift", "csrf_token": csrf}
    response = client.post("/security/restore", data=form)
    return response.status_code


def _approve_restore(client: TestClient, runtime: Runtime, officer: Person) -> int:
    client.cookies.clear()
    csrf = open_session_for(client, runtime, officer)
    prove(client, runtime)
    page = client.get("/security").text
    request_id = page.split("/security/restore/")[1].split("/approve")[0]
    return client.post(f"/security/restore/{request_id}/approve", data={"csrf_token": csrf}).status_code


def test_contained_on_probation_stays_suspended_until_the_owner_re_enrols_in_person(
    client: TestClient,
    sqlite_runtime: Runtime,
    hospital: Hospital,
    officers: tuple[Person, Person],
    movable_clock: clock.MovableClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clerk, _a1, _a2 = _open_clerk(sqlite_runtime, hospital)
    movable_clock.advance(dt.timedelta(days=2))
    ref = contain_account(sqlite_runtime, clerk.id, clerk.username)
    # Two officers with fresh passkey proofs still cannot restore it: the owner comes first.
    client.cookies.clear()
    csrf = open_session_for(client, sqlite_runtime, officers[0])
    prove(client, sqlite_runtime)
    page = client.post(
        "/security/restore",
        data={"actor_ref": ref, "reason": "spoke with the owner, who was on shift", "csrf_token": csrf},
    )
    assert page.status_code == 403 and "re-enrols in person" in page.text
    console = client.get("/security").text
    assert "its owner re-enrols in person first" in console
    assert 'action="/security/restore"' not in console  # no form that could only be refused
    with sqlite_runtime.session_factory() as session:
        denied = session.scalars(
            sa.select(AuditEvent.outcome).where(AuditEvent.kind == AuditKind.RESTORE_REQUESTED.value)
        ).all()
    assert denied == ["denied"]

    # The owner stands at the desk; the operator re-enrols them (reason stated, audited).
    assert run_cli(sqlite_runtime, monkeypatch, "users", "re-enrol", "desk.new", "--reason", "short")[0] == 2
    assert run_cli(sqlite_runtime, monkeypatch, "users", "re-enrol", "nobody", "--reason", "x" * 20)[0] == 2
    code, out = run_cli(
        sqlite_runtime,
        monkeypatch,
        "users",
        "re-enrol",
        "desk.new",
        "--reason",
        "owner came to the security office, ID card checked",
    )
    assert code == 0, out
    assert "first password:" in out and "authenticator key:" in out
    renewed = _account(sqlite_runtime, "desk.new")
    assert renewed.status == "suspended"  # still: the officers restore it
    assert renewed.must_change_password and renewed.must_replace_second_factor
    assert renewed.password_hash != clerk.password_hash
    with sqlite_runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).where(TotpDevice.account_id == clerk.id)) == 1
        live = session.scalar(
            sa.select(sa.func.count()).where(
                AuthSession.account_id == clerk.id, AuthSession.revoked_at.is_(None)
            )
        )
        assert live == 0
        event = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.kind == AuditKind.ACCOUNT_REENROLLED.value)
        ).one()
    assert event.username.startswith("system:cli") and "ID card checked" in json.loads(event.detail)["reason"]
    assert "first password" not in event.detail and renewed.password_hash not in event.detail

    # Now the usual two officers restore it, and a new probation begins.
    assert _ask_restore(client, sqlite_runtime, officers[0], ref) == 303
    assert _approve_restore(client, sqlite_runtime, officers[1]) == 303
    restored = _account(sqlite_runtime, "desk.new")
    assert restored.status == "active"
    assert restored.probation_ends_at is not None
    assert abs(restored.probation_ends_at - (clock.now() + lifecycle.PROBATION)) < dt.timedelta(minutes=1)


def test_a_restored_account_contained_again_within_7_days_needs_re_enrolment_too(
    client: TestClient,
    sqlite_runtime: Runtime,
    hospital: Hospital,
    officers: tuple[Person, Person],
    movable_clock: clock.MovableClock,
) -> None:
    doctor = hospital.physician  # a long-standing account: no probation
    ref = contain_account(sqlite_runtime, doctor.account_id, doctor.username)
    assert _ask_restore(client, sqlite_runtime, officers[0], ref) == 303  # no re-enrolment needed
    assert _approve_restore(client, sqlite_runtime, officers[1]) == 303
    assert lifecycle.on_probation(_account(sqlite_runtime, doctor.username), clock.now())
    movable_clock.advance(dt.timedelta(days=3))
    contain_account(sqlite_runtime, doctor.account_id, doctor.username)
    assert _ask_restore(client, sqlite_runtime, officers[0], ref) == 403
    # Contained again only after the probation ended: the usual restore.
    movable_clock.advance(dt.timedelta(days=5))
    assert not lifecycle.on_probation(_account(sqlite_runtime, doctor.username), clock.now())
    with sqlite_runtime.session_factory.begin() as session:
        from carnet.detection.models import ActorState

        session.get_one(ActorState, ref).contained_at = clock.now()
    assert _ask_restore(client, sqlite_runtime, officers[0], ref) == 303


def test_the_probation_rule_holds_below_the_pages_in_detection_services(
    sqlite_runtime: Runtime,
    hospital: Hospital,
    officers: tuple[Person, Person],
    movable_clock: clock.MovableClock,
) -> None:
    """A caller that is not the console (a script, a future API) meets the same rule."""
    from carnet.detection import services
    from carnet.kernel.errors import Forbidden

    clerk, _a1, _a2 = _open_clerk(sqlite_runtime, hospital)
    movable_clock.advance(dt.timedelta(days=1))
    ref = contain_account(sqlite_runtime, clerk.id, clerk.username)
    olga = actor_of(officers[0], Role.SECURITY_OFFICER)
    with pytest.raises(Forbidden, match="re-enrols in person"):
        services.request_restore(
            sqlite_runtime, officer=olga, actor_ref=ref, reason="owner verified by phone"
        )
    with sqlite_runtime.session_factory() as session:
        outcomes = session.scalars(
            sa.select(AuditEvent.outcome).where(AuditEvent.kind == AuditKind.RESTORE_REQUESTED.value)
        ).all()
    assert outcomes == ["denied"]
    assert _account(sqlite_runtime, "desk.new").status == "suspended"
