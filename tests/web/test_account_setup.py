"""An account an administrator opened: before its owner replaces the handed-over password and
key, its session reads nothing (pages, FHIR); the wrong path is refused and audited; after, the
administrator's copy opens nothing."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pyotp
import pytest
from fastapi.testclient import TestClient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError
from sqlalchemy import select

from carnet.access.accounts import create_staff_account
from carnet.access.actor import Actor, ActorKind
from carnet.access.grants import approve_role_grant
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.identity.models import AccountEvent
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.fhir.conftest import serve
from tests.web.conftest import ORIGIN, Hospital, Person, login, make_person

OWN = "granite ferry whistles at dawn"


def _admin(person: Person) -> Actor:
    return Actor(
        kind=ActorKind.STAFF,
        username=person.username,
        roles=frozenset({Role.SYSTEM_ADMINISTRATOR}),
        account_id=person.account_id,
        second_factor_at=clock.now(),
    )


def _opened(runtime: Runtime, hospital: Hospital, role: Role = Role.PHYSICIAN) -> Person:
    """An account opened by one administrator, its role approved by a second one."""
    one = make_person(runtime, "admin.one", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    two = make_person(runtime, "admin.two", roles=(Role.SYSTEM_ADMINISTRATOR,), facility_id=None)
    facility = None if role == Role.SECURITY_OFFICER else str(hospital.facility_id)
    new = create_staff_account(
        runtime,
        actor=_admin(one),
        username="dr.new",
        display_name="Doctor New",
        role=role,
        facility_id=facility,
        reason="joins the ward in December",
    )
    approve_role_grant(runtime, actor=_admin(two), grant_id=new.grant.id)
    return Person(
        account_id=uuid.UUID(new.account_id),
        username=new.username,
        password=new.initial_password,
        totp_secret=new.totp_secret,
        practitioner_id=None,
        facility_id=hospital.facility_id,
    )


def _events(runtime: Runtime, kind: AuditKind) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.kind == kind.value)))


def _history(runtime: Runtime, person: Person) -> list[tuple[str, str]]:
    with runtime.session_factory() as session:
        rows = session.scalars(select(AccountEvent).where(AccountEvent.account_id == person.account_id))
        return [(e.kind, e.outcome) for e in rows]


def test_before_the_setup_the_session_reads_nothing(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    newcomer = _opened(sqlite_runtime, hospital)
    answer = client.post(
        "/auth/login",
        json={"username": newcomer.username, "password": newcomer.password, "otp": newcomer.code()},
        headers={"Origin": ORIGIN},
    )
    assert answer.status_code == 200 and answer.json()["setupRequired"] is True
    csrf = answer.json()["csrfToken"]
    me = client.get("/auth/me")  # who am I: allowed
    assert me.status_code == 200 and me.json()["roles"] == ["physician"]
    for path in ("/home", "/day", f"/patients/{hospital.my_patient}", "/patients", "/desk/schedule"):
        page = client.get(path)
        assert page.status_code == 403, path
        assert "Finish setting up your account" in page.text and 'href="/account/setup"' in page.text
        assert "&lt;script&gt;" not in page.text and "Durand" not in page.text
    search = client.post("/patients", data={"csrf_token": csrf, "identifier": "170011234567890"})
    assert search.status_code == 403 and "Durand" not in search.text
    fragment = client.get(f"/patients/{hospital.my_patient}/sections/notes", headers={"HX-Request": "true"})
    assert fragment.status_code == 403 and fragment.headers["hx-redirect"] == "/account/setup"
    assert client.get("/account").headers["location"] == "/account/setup"
    refused = _events(sqlite_runtime, AuditKind.ACCOUNT_SETUP_REFUSED)
    assert len(refused) == 7 and {e.outcome for e in refused} == {"denied"}
    assert any(f"/patients/{hospital.my_patient}" in e.detail for e in refused)
    with sqlite_runtime.session_factory() as session:
        phi = session.scalars(select(AuditEvent).where(AuditEvent.kind.like("phi:%"))).all()
    assert all(e.account_id != newcomer.account_id for e in phi)  # the gate was never reached
    # The FHIR API answers with an OperationOutcome that says what to do (fhirpy, a real client).
    for url in serve(sqlite_runtime):
        token = client.cookies.get("carnet_session")
        fhir = SyncFHIRClient(f"{url}/fhir", extra_headers={"Cookie": f"carnet_session={token}"})
        with pytest.raises(AuthorizationError, match=r"OperationOutcome.*finish setting up your account"):
            fhir.reference("Patient", hospital.my_patient).to_resource()
        with pytest.raises(AuthorizationError, match=r"OperationOutcome.*finish setting up your account"):
            fhir.resources("Patient").search(identifier="170011234567890").fetch()
    assert len(_events(sqlite_runtime, AuditKind.ACCOUNT_SETUP_REFUSED)) == 9


def test_the_wrong_steps_are_refused_audited_and_change_nothing(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    newcomer = _opened(sqlite_runtime, hospital)
    csrf = login(client, newcomer)
    page = client.get("/account/setup")
    assert page.status_code == 200 and "Password you were handed" in page.text
    no_token = client.post(
        "/account/setup/password",
        data={"current_password": newcomer.password, "new_password": OWN, "repeat_password": OWN},
    )
    assert no_token.status_code == 403 and "security token" in no_token.text
    for current, new, repeat, why in (
        ("not the password at all", OWN, OWN, "not right"),
        (newcomer.password, OWN, OWN + "!", "not the same"),
        (newcomer.password, newcomer.password, newcomer.password, "other than the one you were handed"),
        (newcomer.password, "short", "short", "at least 12"),
    ):
        wrong = client.post(
            "/account/setup/password",
            data={
                "csrf_token": csrf,
                "current_password": current,
                "new_password": new,
                "repeat_password": repeat,
            },
        )
        assert wrong.status_code == 400 and why in wrong.text, why
        assert "Nothing was changed" in wrong.text and OWN not in wrong.text  # never echoed
    fresh = client.post("/account/setup/authenticator", data={"csrf_token": csrf})
    device = re.search(r'name="device_id" value="([^"]+)"', fresh.text)
    assert fresh.status_code == 200 and device
    bad_code = client.post(
        "/account/setup/authenticator/confirm",
        data={"csrf_token": csrf, "device_id": device.group(1), "code": "000000"},
    )
    assert bad_code.status_code == 400 and "does not match" in bad_code.text
    denied = [e for e in _events(sqlite_runtime, AuditKind.PASSWORD_CHANGED) if e.outcome == "denied"]
    assert len(denied) == 4
    assert [e.outcome for e in _events(sqlite_runtime, AuditKind.MFA_ENROLLED)] == ["denied"]
    history = _history(sqlite_runtime, newcomer)
    assert history.count(("account:password:changed", "denied")) == 4
    # Still held: the handed-over credentials still work, and still open nothing else.
    assert client.get("/home").status_code == 403
    # Setup pages are for handed-over accounts only.
    other = TestClient(client.app, base_url=ORIGIN, follow_redirects=False)
    csrf_doc = login(other, hospital.physician)
    assert other.get("/account/setup").headers["location"] == "/home"
    assert (
        other.post(
            "/account/setup/password",
            data={
                "csrf_token": csrf_doc,
                "current_password": "x",
                "new_password": OWN,
                "repeat_password": OWN,
            },
        ).status_code
        == 403
    )
    assert other.post("/account/setup/authenticator", data={"csrf_token": csrf_doc}).status_code == 403


def test_after_the_setup_the_administrators_copy_opens_nothing(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    newcomer = _opened(sqlite_runtime, hospital)
    csrf = login(client, newcomer)
    # The administrator also signs in with the copy they saw, before the owner finishes.
    movable_clock.advance(dt.timedelta(seconds=31))
    admin_copy = TestClient(client.app, base_url=ORIGIN, follow_redirects=False)
    login(admin_copy, newcomer)
    fresh = client.post("/account/setup/authenticator", data={"csrf_token": csrf})
    secret = re.search(r'id="new-secret">([^<]+)<', fresh.text)
    device = re.search(r'name="device_id" value="([^"]+)"', fresh.text)
    assert secret and device
    confirmed = client.post(
        "/account/setup/authenticator/confirm",
        data={
            "csrf_token": csrf,
            "device_id": device.group(1),
            "code": pyotp.TOTP(secret.group(1)).at(clock.now()),
        },
    )
    assert confirmed.headers["location"] == "/account/setup?factor=1"
    page = client.get(confirmed.headers["location"])
    assert (
        "the key you were handed no longer works" in page.text
        and "Show me a new authenticator key" not in page.text
    )
    done = client.post(
        "/account/setup/password",
        data={
            "csrf_token": csrf,
            "current_password": newcomer.password,
            "new_password": OWN,
            "repeat_password": OWN,
        },
    )
    assert done.status_code == 303 and done.headers["location"] == "/login?setup_done=1"
    assert "Your account is ready" in client.get("/login?setup_done=1").text
    assert client.get("/auth/me").status_code == 401
    assert admin_copy.get("/auth/me").status_code == 401  # the administrator's session ended too
    movable_clock.advance(dt.timedelta(seconds=31))
    for password, key in ((newcomer.password, newcomer.totp_secret), (OWN, newcomer.totp_secret)):
        refused = admin_copy.post(
            "/auth/login",
            json={
                "username": newcomer.username,
                "password": password,
                "otp": pyotp.TOTP(key).at(clock.now()),
            },
        )
        assert refused.status_code == 401
    mine = Person(newcomer.account_id, newcomer.username, OWN, secret.group(1), None, hospital.facility_id)
    csrf = login(client, mine)
    assert client.get("/account").status_code == 200  # no longer sent to the setup
    found = client.post("/patients", data={"csrf_token": csrf, "identifier": "170011234567890"})
    assert found.status_code == 200 and "Durand" in found.text  # the physician works
    history = _history(sqlite_runtime, newcomer)
    for expected in (
        ("account:password:changed", "success"),
        ("account:mfa:removed", "success"),
        ("account:setup:completed", "success"),
        ("account:session:revoked", "success"),
    ):
        assert expected in history
    assert [e.outcome for e in _events(sqlite_runtime, AuditKind.ACCOUNT_SETUP_COMPLETED)] == ["success"]


def test_a_privileged_account_must_choose_a_passkey(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    officer = _opened(sqlite_runtime, hospital, role=Role.SECURITY_OFFICER)
    csrf = login(client, officer)
    page = client.get("/account/setup")
    assert page.status_code == 200 and 'id="passkey-enrol"' in page.text
    assert "Show me a new authenticator key" not in page.text
    refused = client.post("/account/setup/authenticator", data={"csrf_token": csrf})
    assert refused.status_code == 403 and "passkey" in refused.text
    assert client.get("/security").status_code == 403


def test_choosing_the_factor_needs_a_recent_sign_in(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    newcomer = _opened(sqlite_runtime, hospital)
    csrf = login(client, newcomer)
    movable_clock.advance(dt.timedelta(minutes=6))
    stale = client.post("/account/setup/authenticator", data={"csrf_token": csrf})
    assert stale.status_code == 403 and "sign in again" in stale.text and 'id="new-secret"' not in stale.text
    options = client.post("/auth/webauthn/register-options", headers={"X-CSRF-Token": csrf})
    assert options.status_code == 401 and "sign in again" in options.text
    client.cookies.clear()
    movable_clock.advance(dt.timedelta(seconds=31))
    csrf = login(client, newcomer)
    fresh = client.post("/account/setup/authenticator", data={"csrf_token": csrf})
    assert fresh.status_code == 200 and 'id="new-secret"' in fresh.text
