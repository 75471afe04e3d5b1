"""Factories for identity tests: accounts with role grants and TOTP, an app client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyotp
import pytest
from fastapi.testclient import TestClient

from carnet.access.models import RoleGrant
from carnet.access.roles import Role
from carnet.app import create_app
from carnet.identity import service, totp
from carnet.kernel import clock
from carnet.runtime import Runtime

PASSWORD = "violet tram escapes quietly"


@dataclass
class Person:
    account_id: uuid.UUID
    username: str
    password: str
    totp_secret: str | None

    def code(self, *, offset_steps: int = 0) -> str:
        assert self.totp_secret is not None
        return pyotp.TOTP(self.totp_secret).at(clock.now(), counter_offset=offset_steps)


def make_person(
    runtime: Runtime,
    username: str,
    *,
    roles: tuple[Role, ...] = (Role.PHYSICIAN,),
    kind: str = "staff",
    with_totp: bool = True,
    practitioner_id: uuid.UUID | None = None,
) -> Person:
    secret = totp.new_secret() if with_totp else None
    with runtime.session_factory.begin() as session:
        account_id = service.create_account(
            session,
            username=username,
            display_name=username.title(),
            kind=kind,  # type: ignore[arg-type]
            password=PASSWORD,
            totp_secret=secret,
            practitioner_id=practitioner_id,
        )
        for role in roles if kind == "staff" else ():
            session.add(
                RoleGrant(
                    account_id=account_id,
                    role=role.value,
                    status="active",
                    requested_at=clock.now(),
                    decided_at=clock.now(),
                )
            )
    return Person(account_id=account_id, username=username, password=PASSWORD, totp_secret=secret)


@pytest.fixture
def client(sqlite_runtime: Runtime, movable_clock: clock.MovableClock) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as c:
        yield c


def login(client: TestClient, person: Person, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {"username": person.username, "password": person.password}
    if person.totp_secret is not None:
        body["otp"] = person.code()
    body.update(extra)
    response = client.post("/auth/login", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()
    client.headers["X-CSRF-Token"] = str(data["csrfToken"])
    return data
