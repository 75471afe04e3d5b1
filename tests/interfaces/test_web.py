"""The integration staff's page: the message log by control id, ids only; anyone else refused
(and audited); a stolen cookie of integration staff reads no patient data either."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from carnet.access.roles import Role
from carnet.app import create_app
from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.interfaces.conftest import Hospital, make_hospital, serve
from tests.interfaces.helpers import Person, adt, msa, send
from tests.interfaces.records import log_line, rows
from tests.web.conftest import ORIGIN, login, make_person


@pytest.fixture
def fed(sqlite_runtime: Runtime) -> Iterator[Hospital]:
    hospital = make_hospital(sqlite_runtime)
    for port in serve(sqlite_runtime):
        answers = send(
            port,
            adt("A01", "WEB-1", Person(ipp="W1", family="SECRETNAME")),
            adt("A08", "WEB-2", Person(ipp="NOBODY")),
        )
        assert [msa(a)[1] for a in answers] == ["AA", "AE"]
    yield hospital


def test_integration_staff_search_the_log_and_see_ids_only(
    sqlite_runtime: Runtime, fed: Hospital, movable_clock: clock.MovableClock
) -> None:
    staff = make_person(sqlite_runtime, "int.ines", roles=(Role.INTEGRATION,), facility_id=fed.facility_id)
    doctor = make_person(sqlite_runtime, "dr.who", roles=(Role.PHYSICIAN,), facility_id=fed.facility_id)
    patient_id = log_line(sqlite_runtime, "WEB-1").patient_ids
    with TestClient(create_app(sqlite_runtime), base_url=ORIGIN, follow_redirects=False) as client:
        login(client, staff)
        page = client.get("/integration", params={"interface": "ADT"})
        assert page.status_code == 200
        assert "WEB-1" in page.text and "WEB-2" in page.text and patient_id in page.text
        assert "SECRETNAME" not in page.text
        one = client.get("/integration", params={"interface": "ADT", "control_id": "WEB-2"})
        assert (
            "WEB-2" in one.text
            and "WEB-1" not in one.text
            and "no patient with these identifiers" in one.text
        )
        assert client.get("/integration", params={"status": "bogus"}).status_code == 400
        client.cookies.clear()
        # An interface's account has no password: it cannot sign in.
        denied = client.post(
            "/auth/login",
            json={"username": "interface:ADT", "password": "anything at all", "otp": "123456"},
            headers={"Origin": ORIGIN},
        )
        assert denied.status_code == 401
        login(client, doctor)
        refused = client.get("/integration")
        assert refused.status_code == 403 and "WEB-1" not in refused.text
    events = rows(sqlite_runtime, AuditEvent, kind="interface:message-log:read")
    assert {(e.username, e.outcome) for e in events} >= {("int.ines", "success"), ("dr.who", "denied")}
    assert not any("SECRETNAME" in (e.query or "") for e in events)
