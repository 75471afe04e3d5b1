"""A small hospital for the web tests: staff with passwords and TOTP, patients in and out of care."""

from __future__ import annotations

import datetime as dt
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyotp
import pytest
from fastapi.testclient import TestClient

from carnet.access.models import RoleGrant
from carnet.access.roles import Role
from carnet.app import create_app
from carnet.identity import service, totp
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests import factories

PASSWORD = "violet tram escapes quietly"
ORIGIN = "http://localhost:8000"


@dataclass
class Person:
    account_id: uuid.UUID
    username: str
    password: str
    totp_secret: str
    practitioner_id: uuid.UUID | None
    facility_id: uuid.UUID | None

    def code(self) -> str:
        return pyotp.TOTP(self.totp_secret).at(clock.now())


def make_person(
    runtime: Runtime,
    username: str,
    *,
    roles: tuple[Role, ...],
    facility_id: uuid.UUID | None,
    practitioner_id: uuid.UUID | None = None,
    patient_id: uuid.UUID | None = None,
    display_name: str | None = None,
) -> Person:
    secret = totp.new_secret()
    kind = "patient" if Role.PATIENT in roles else "staff"
    with runtime.session_factory.begin() as session:
        account_id = service.create_account(
            session,
            username=username,
            display_name=display_name or username.title(),
            kind=kind,  # type: ignore[arg-type]
            password=PASSWORD,
            totp_secret=secret,
            facility_id=facility_id,
            practitioner_id=practitioner_id,
            patient_id=patient_id,
        )
        for role in roles if kind == "staff" else ():
            privileged = role == Role.SYSTEM_ADMINISTRATOR  # officers review their facilities
            session.add(
                RoleGrant(
                    account_id=account_id,
                    role=role.value,
                    facility_id=facility_id if not privileged else None,
                    status="active",
                    requested_at=clock.now(),
                    decided_at=clock.now(),
                )
            )
    return Person(account_id, username, PASSWORD, secret, practitioner_id, facility_id)


@dataclass
class Hospital:
    facility_id: uuid.UUID
    physician: Person
    other_physician: Person
    front_desk: Person
    patient_person: Person
    my_patient: str
    their_patient: str


@pytest.fixture
def hospital(sqlite_runtime: Runtime, movable_clock: clock.MovableClock) -> Hospital:
    runtime = sqlite_runtime
    facility = factories.make_facility(runtime)
    doc_id = factories.make_practitioner(runtime, facility)
    other_id = factories.make_practitioner(runtime, facility)
    physician = make_person(
        runtime, "dr.house", roles=(Role.PHYSICIAN,), facility_id=facility, practitioner_id=doc_id
    )
    other = make_person(
        runtime, "dr.other", roles=(Role.PHYSICIAN,), facility_id=facility, practitioner_id=other_id
    )
    desk = make_person(runtime, "desk.anna", roles=(Role.FRONT_DESK,), facility_id=facility)
    mine = factories.register_patient(
        runtime,
        facility,
        family="<script>alert(1)</script>",
        given='Zoé "l\'Éclair"',
        birth_date=dt.date(1980, 2, 29),
        ins="180022912345678",
    )
    theirs = factories.register_patient(
        runtime, facility, family="Durand", given="Paul", ins="170011234567890"
    )
    factories.link_care(runtime, patient_id=mine.id, practitioner_id=doc_id, facility_id=facility)
    factories.link_care(runtime, patient_id=theirs.id, practitioner_id=other_id, facility_id=facility)
    portal = make_person(
        runtime, "patient.zoe", roles=(Role.PATIENT,), facility_id=facility, patient_id=uuid.UUID(mine.id)
    )
    return Hospital(facility, physician, other, desk, portal, mine.id, theirs.id)


@pytest.fixture
def client(sqlite_runtime: Runtime, hospital: Hospital) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_runtime), base_url=ORIGIN, follow_redirects=False) as c:
        yield c


def login(client: TestClient, person: Person) -> str:
    """Sign in the way the login page does; returns the CSRF token (also in the cookie)."""
    response = client.post(
        "/auth/login",
        json={"username": person.username, "password": person.password, "otp": person.code()},
        headers={"Origin": ORIGIN},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["csrfToken"])


def open_session_for(client: TestClient, runtime: Runtime, person: Person) -> str:
    """A session as a passkey login leaves it (privileged accounts cannot use TOTP outside a demo);
    the passkey ceremony itself is exercised in the browser tests."""
    from carnet.identity import sessions

    with runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=person.account_id,
            privileged=True,
            second_factor_method="webauthn",
            address="testclient",
            user_agent="pytest",
        )
    client.cookies.set("carnet_session", issued.token)
    client.cookies.set("carnet_csrf", issued.csrf_token)
    return issued.csrf_token


CHROMIUM = "/usr/bin/chromium"  # Debian's (make chromium)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
            locale="en-GB",
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()
