"""Access-widening needs a fresh passkey proof by the person acting, in that session.

Every access-widening endpoint (web forms and JSON) is tried four ways: with a stolen session
(the cookie and its CSRF token, nothing else), with a proof older than 5 minutes, with a proof
made in another session of the same person, and with a fresh proof of this session. Only the
last goes through; each refusal changes nothing, is audited (account:step-up:refused) and is
counted by detection. The passkey ceremony itself runs in Chromium: test_stepup_browser.py.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from carnet.access.actor import Actor, ActorKind
from carnet.access.exports import request_export
from carnet.access.grants import request_role_grant
from carnet.access.models import BreakGlassAccess, ExportRequest, RoleGrant
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.detection import containment, services
from carnet.detection.interfaces import Finding, Level, Rule
from carnet.detection.models import DetectionEvent, RestoreRequest
from carnet.identity.models import Account, ApiClient
from carnet.identity.stepup import Action
from carnet.kernel import clock
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from tests import factories
from tests.proofs import prove
from tests.web.conftest import Hospital, Person, make_person, open_session_for


def actor_of(person: Person, role: Role) -> Actor:
    return Actor(
        kind=ActorKind.STAFF,
        username=person.username,
        roles=frozenset({role}),
        account_id=person.account_id,
        facility_id=person.facility_id,
        second_factor_at=clock.now(),
    )


def contain_account(runtime: Runtime, account_id: uuid.UUID, username: str) -> str:
    actor = Actor(kind=ActorKind.STAFF, username=username, roles=frozenset(), account_id=account_id)
    finding = Finding(rule=Rule.VOLUME, level=Level.CONTAIN, sentence="too many patients in an hour.")
    with runtime.session_factory.begin() as session:
        containment.contain(session, actor=actor, findings=[finding], audit=runtime.audit, at=clock.now())
    return actor.actor_ref


def _count(runtime: Runtime, query: Any) -> int:
    with runtime.session_factory() as session:
        return int(session.scalar(query) or 0)


@dataclass
class Case:
    action: Action
    person: Person
    path: str
    form: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None  # a JSON endpoint
    content_type: str = "application/json"
    ok: int = 303
    done: Callable[[], bool] = lambda: False


def _people(runtime: Runtime, hospital: Hospital) -> dict[str, Person]:
    fid = hospital.facility_id
    return {
        "admin1": make_person(runtime, "admin.one", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None),
        "admin2": make_person(runtime, "admin.two", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None),
        "so1": make_person(runtime, "sec.olga", roles=(Role.SECURITY_OFFICER,), facility_id=fid),
        "so2": make_person(runtime, "sec.paul", roles=(Role.SECURITY_OFFICER,), facility_id=fid),
    }


def _account_open(rt: Runtime, h: Hospital, p: dict[str, Person]) -> Case:
    name = "desk.minted"
    form = {"username": name, "display_name": "Minted Clerk", "role": "front_desk"}
    form |= {"facility_id": str(h.facility_id), "reason": "new admissions clerk"}
    return Case(
        Action.ACCOUNT_OPEN,
        p["admin1"],
        "/admin/accounts",
        form,
        ok=200,
        done=lambda: _count(rt, sa.select(sa.func.count()).where(Account.username == name)) == 1,
    )


def _grant_request(rt: Runtime, h: Hospital, p: dict[str, Person]) -> Case:
    newcomer = make_person(rt, "nurse.new", roles=(), facility_id=h.facility_id)
    form = {"account_id": str(newcomer.account_id), "role": "nurse", "facility_id": str(h.facility_id)}
    form["reason"] = "hired on ward 3"
    return Case(
        Action.ROLE_GRANT_REQUEST,
        p["admin1"],
        "/admin/grants",
        form,
        done=lambda: (
            _count(rt, sa.select(sa.func.count()).where(RoleGrant.account_id == newcomer.account_id)) == 1
        ),
    )


def _grant_approve(rt: Runtime, h: Hospital, p: dict[str, Person]) -> Case:
    newcomer = make_person(rt, "nurse.new", roles=(), facility_id=h.facility_id)
    grant = request_role_grant(
        rt,
        actor=actor_of(p["admin1"], Role.SYSTEM_ADMINISTRATOR),
        account_id=str(newcomer.account_id),
        role="nurse",
        facility_id=str(h.facility_id),
        reason="hired on ward 3",
    )
    active = sa.select(sa.func.count()).where(
        RoleGrant.id == uuid.UUID(grant.id), RoleGrant.status == "active"
    )
    return Case(
        Action.ROLE_GRANT_APPROVE,
        p["admin2"],
        f"/admin/grants/{grant.id}/approve",
        done=lambda: _count(rt, active) == 1,
    )


def _restore_request(rt: Runtime, h: Hospital, p: dict[str, Person]) -> Case:
    ref = contain_account(rt, h.physician.account_id, h.physician.username)
    return Case(
        Action.RESTORE_REQUEST,
        p["so1"],
        "/security/restore",
        {"actor_ref": ref, "reason": "called the physician, who was on a night shift"},
        done=lambda: _count(rt, sa.select(sa.func.count()).select_from(RestoreRequest)) == 1,
    )


def _restore_approve(rt: Runtime, h: Hospital, p: dict[str, Person]) -> Case:
    ref = contain_account(rt, h.physician.account_id, h.physician.username)
    asked = services.request_restore(
        rt,
        officer=actor_of(p["so1"], Role.SECURITY_OFFICER),
        actor_ref=ref,
        reason="verified in person today",
    )
    restored = sa.select(sa.func.count()).where(
        Account.id == h.physician.account_id, Account.status == "active"
    )
    return Case(
        Action.RESTORE_APPROVE,
        p["so2"],
        f"/security/restore/{asked.id}/approve",
        done=lambda: _count(rt, restored) == 1,
    )


def _break_glass_review(rt: Runtime, h: Hospital, p: dict[str, Person]) -> Case:
    doctor = factories.make_physician(rt, h.facility_id)
    access = Gate(rt, doctor).break_glass(
        patient_id=h.their_patient, reason="emergency", justification="Unconscious, no relative here"
    )
    reviewed = sa.select(sa.func.count()).where(BreakGlassAccess.reviewed_at.is_not(None))
    del access
    return Case(
        Action.BREAK_GLASS_REVIEW,
        p["so1"],
        "",  # filled in below: the access id is read from the console
        {"note": "called the ER: justified"},
        done=lambda: _count(rt, reviewed) == 1,
    )


def _export_approve(rt: Runtime, h: Hospital, p: dict[str, Person]) -> Case:
    doctor = factories.make_physician(rt, h.facility_id)
    asked = request_export(rt, actor=doctor, purpose="quality review of my patients", scope="care")
    approved = sa.select(sa.func.count()).where(
        ExportRequest.id == uuid.UUID(asked.id), ExportRequest.status == "approved"
    )
    return Case(
        Action.EXPORT_APPROVE,
        p["so1"],
        f"/security/exports/{asked.id}/approve",
        done=lambda: _count(rt, approved) == 1,
    )


def _fhir_export_approve(rt: Runtime, h: Hospital, p: dict[str, Person]) -> Case:
    case = _export_approve(rt, h, p)
    export_id = case.path.split("/")[3]
    body = {"resourceType": "Parameters", "parameter": [{"name": "exportId", "valueString": export_id}]}
    return Case(
        Action.EXPORT_APPROVE,
        p["so1"],
        "/fhir/$export-approve",
        body=body,
        content_type="application/fhir+json",
        ok=200,
        done=case.done,
    )


def _client_register(rt: Runtime, h: Hospital, p: dict[str, Person]) -> Case:
    key = {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"}
    key["y"] = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
    body = {"clientId": "lab-system", "name": "Lab", "jwks": {"keys": [key]}, "scope": "system/Patient.read"}
    return Case(
        Action.API_CLIENT_REGISTER,
        p["admin1"],
        "/oauth/clients",
        body=body,
        ok=201,
        done=lambda: _count(rt, sa.select(sa.func.count()).select_from(ApiClient)) == 1,
    )


CASES = {
    "account-open": _account_open,
    "role-grant-request": _grant_request,
    "role-grant-approve": _grant_approve,
    "restore-request": _restore_request,
    "restore-approve": _restore_approve,
    "break-glass-review": _break_glass_review,
    "export-approve": _export_approve,
    "fhir-export-approve": _fhir_export_approve,
    "api-client-register": _client_register,
}


def _setup(name: str, client: TestClient, runtime: Runtime, hospital: Hospital) -> tuple[Case, str]:
    case = CASES[name](runtime, hospital, _people(runtime, hospital))
    csrf = open_session_for(client, runtime, case.person)
    if case.action is Action.BREAK_GLASS_REVIEW:
        page = client.get("/security").text
        case.path = (
            "/security/break-glass/" + page.split("/security/break-glass/")[1].split("/review")[0] + "/review"
        )
    return case, csrf


def _send(client: TestClient, case: Case, csrf: str) -> Any:
    if case.body is not None:
        return client.post(
            case.path,
            content=json.dumps(case.body),
            headers={"X-CSRF-Token": csrf, "Content-Type": case.content_type},
        )
    return client.post(case.path, data=case.form | {"csrf_token": csrf})


def _refusals(runtime: Runtime) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        return list(
            session.scalars(
                sa.select(AuditEvent)
                .where(AuditEvent.kind == AuditKind.STEP_UP_REFUSED.value)
                .order_by(AuditEvent.seq)
            )
        )


def _assert_refused(response: Any, case: Case, runtime: Runtime, reason: str) -> None:
    assert response.status_code in (401, 403), response.text
    if case.body is None:
        assert "needs your passkey" in response.text  # the page says what to do
    assert not case.done()
    refusals = _refusals(runtime)
    assert len(refusals) == 1
    assert refusals[0].outcome == "denied" and refusals[0].username == case.person.username
    assert refusals[0].policy_reason == reason
    assert json.loads(refusals[0].resource_ids)[0] == case.action.value
    with runtime.session_factory() as session:
        counted = session.scalars(
            sa.select(DetectionEvent.key).where(
                DetectionEvent.actor_ref == f"account:{case.person.account_id}"
            )
        ).all()
    assert f"step-up-refused:{case.action.value}" in counted


@pytest.mark.parametrize("name", CASES)
def test_a_stolen_session_alone_does_nothing(
    name: str, client: TestClient, sqlite_runtime: Runtime, hospital: Hospital
) -> None:
    case, csrf = _setup(name, client, sqlite_runtime, hospital)
    _assert_refused(_send(client, case, csrf), case, sqlite_runtime, "no proof in this session")


@pytest.mark.parametrize("name", CASES)
def test_a_proof_older_than_five_minutes_does_nothing(
    name: str,
    client: TestClient,
    sqlite_runtime: Runtime,
    hospital: Hospital,
    movable_clock: clock.MovableClock,
) -> None:
    case, csrf = _setup(name, client, sqlite_runtime, hospital)
    prove(client, sqlite_runtime)
    movable_clock.advance(dt.timedelta(minutes=5, seconds=1))
    _assert_refused(_send(client, case, csrf), case, sqlite_runtime, "proof older than 5 minutes")


@pytest.mark.parametrize("name", CASES)
def test_a_proof_made_in_another_session_does_nothing(
    name: str, client: TestClient, sqlite_runtime: Runtime, hospital: Hospital
) -> None:
    case, _csrf = _setup(name, client, sqlite_runtime, hospital)
    prove(client, sqlite_runtime)  # the person's own session, proven
    client.cookies.clear()
    stolen = open_session_for(client, sqlite_runtime, case.person)  # another session of theirs
    _assert_refused(_send(client, case, stolen), case, sqlite_runtime, "no proof in this session")


@pytest.mark.parametrize("name", CASES)
def test_a_fresh_proof_of_this_session_lets_it_through(
    name: str, client: TestClient, sqlite_runtime: Runtime, hospital: Hospital
) -> None:
    case, csrf = _setup(name, client, sqlite_runtime, hospital)
    prove(client, sqlite_runtime)
    response = _send(client, case, csrf)
    assert response.status_code == case.ok, response.text
    assert case.done()
    assert _refusals(sqlite_runtime) == []


# -- the attacks of issue 15, over HTTP, with stolen cookies only ---------------------------------
def test_account_factory_mints_nothing_with_two_stolen_administrator_sessions(
    sqlite_runtime: Runtime, hospital: Hospital
) -> None:
    from carnet.app import create_app

    people = _people(sqlite_runtime, hospital)
    # A grant an honest administrator asked for, waiting for the second one.
    newcomer = make_person(sqlite_runtime, "nurse.real", roles=(), facility_id=hospital.facility_id)
    grant = request_role_grant(
        sqlite_runtime,
        actor=actor_of(people["admin1"], Role.SYSTEM_ADMINISTRATOR),
        account_id=str(newcomer.account_id),
        role="nurse",
        facility_id=str(hospital.facility_id),
        reason="hired on ward 3",
    )
    accounts_before = _count(sqlite_runtime, sa.select(sa.func.count()).select_from(Account))
    active = sa.select(sa.func.count()).where(RoleGrant.status == "active")
    roles_before = _count(sqlite_runtime, active)
    app = create_app(sqlite_runtime)
    with (
        TestClient(app, base_url="http://localhost:8000", follow_redirects=False) as one,
        TestClient(app, base_url="http://localhost:8000", follow_redirects=False) as two,
    ):
        csrf1 = open_session_for(one, sqlite_runtime, people["admin1"])
        csrf2 = open_session_for(two, sqlite_runtime, people["admin2"])
        for n in range(10):
            form = {"username": f"desk.fake{n}", "display_name": f"Fake {n}", "role": "front_desk"}
            form |= {"facility_id": str(hospital.facility_id), "reason": "new clerk", "csrf_token": csrf1}
            page = one.post("/admin/accounts", data=form)
            # Refused (step-up), or once detection has counted enough refusals, contained.
            assert page.status_code == 403 and "new-password" not in page.text
        assert two.post(f"/admin/grants/{grant.id}/approve", data={"csrf_token": csrf2}).status_code == 403
    assert _count(sqlite_runtime, sa.select(sa.func.count()).select_from(Account)) == accounts_before
    assert _count(sqlite_runtime, active) == roles_before
    refusals = _refusals(sqlite_runtime)
    assert {r.username for r in refusals} == {"admin.one", "admin.two"}
    with sqlite_runtime.session_factory() as session:
        counted = session.scalar(
            sa.select(sa.func.count()).where(DetectionEvent.key.startswith("step-up-refused:"))
        )
    assert counted == len(refusals)


def test_restore_loop_restores_nothing_with_two_stolen_officer_sessions(
    sqlite_runtime: Runtime, hospital: Hospital
) -> None:
    from carnet.app import create_app

    people = _people(sqlite_runtime, hospital)
    ref = contain_account(sqlite_runtime, hospital.physician.account_id, hospital.physician.username)
    app = create_app(sqlite_runtime)
    with (
        TestClient(app, base_url="http://localhost:8000", follow_redirects=False) as one,
        TestClient(app, base_url="http://localhost:8000", follow_redirects=False) as two,
    ):
        csrf1 = open_session_for(one, sqlite_runtime, people["so1"])
        csrf2 = open_session_for(two, sqlite_runtime, people["so2"])
        for _ in range(3):
            asked = one.post(
                "/security/restore",
                data={"actor_ref": ref, "reason": "the physician called, all fine", "csrf_token": csrf1},
            )
            assert asked.status_code == 403
        # A request an honest officer made is not approved by a stolen session either.
        honest = services.request_restore(
            sqlite_runtime,
            officer=actor_of(people["so1"], Role.SECURITY_OFFICER),
            actor_ref=ref,
            reason="verified in person today",
        )
        assert (
            two.post(f"/security/restore/{honest.id}/approve", data={"csrf_token": csrf2}).status_code == 403
        )
    suspended = sa.select(Account.status).where(Account.id == hospital.physician.account_id)
    with sqlite_runtime.session_factory() as session:
        assert session.scalar(suspended) == "suspended"
        assert session.scalars(sa.select(RestoreRequest.status)).all() == ["pending"]
    assert len(_refusals(sqlite_runtime)) == 4


def test_the_web_forms_that_widen_access_declare_the_proof() -> None:
    """A renamed or duplicated route would escape the cases above: each is found, with its proof."""
    from fastapi.routing import APIRoute

    from carnet.fhir.operations.export import router as fhir_exports
    from carnet.identity.views import oauth_router
    from carnet.web import desk, security

    def needs_proof(route: APIRoute) -> bool:
        stack = list(route.dependant.dependencies)
        while stack:
            dep = stack.pop()
            if dep.call is not None and dep.call.__qualname__ == "proven.<locals>.dependency":
                return True
            stack.extend(dep.dependencies)
        return False

    routers = (desk.router, security.router, oauth_router, fhir_exports)
    routes = {
        r.path: r
        for router in routers
        for r in router.routes
        if isinstance(r, APIRoute) and "POST" in r.methods
    }
    widening = {
        "/admin/accounts",
        "/admin/grants",
        "/admin/grants/{grant_id}/approve",
        "/security/restore",
        "/security/restore/{request_id}/approve",
        "/security/break-glass/{access_id}/review",
        "/security/exports/{export_id}/approve",
    }
    assert {p for p in widening if p in routes and needs_proof(routes[p])} == widening
    narrowing = {"/admin/grants/{grant_id}/reject", "/security/restore/{request_id}/reject"}
    assert not any(needs_proof(routes[p]) for p in narrowing)
    assert {"/oauth/clients", "/fhir/$export-approve"} <= set(routes)  # JSON: require() in the body
