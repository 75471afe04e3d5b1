"""The patient's access log: one row per access (who, role, why, when, what), own views as theirs."""

from __future__ import annotations

import datetime as dt
import re
import uuid

from fastapi.testclient import TestClient
from sqlalchemy import select

from carnet.audit.access_log import AccessLogEntry, group_visits
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.kernel import clock
from carnet.runtime import Runtime
from tests.web.conftest import Hospital, login

T0 = dt.datetime(2026, 11, 29, 9, 0, tzinfo=dt.UTC)
DOCTOR, PATIENT = uuid.uuid4(), uuid.uuid4()
SESSION_1, SESSION_2 = uuid.uuid4(), uuid.uuid4()


def _entry(
    seq: int,
    seconds: int,
    *,
    account: uuid.UUID = DOCTOR,
    session: uuid.UUID = SESSION_1,
    action: str = "opened your record",
    resource: str = "Patient",
    kind: str = "staff",
    purpose: str = "TREAT",
) -> AccessLogEntry:
    return AccessLogEntry(
        seq=seq,
        at=T0 + dt.timedelta(seconds=seconds),
        who="Dr House" if account == DOCTOR else "Zoé",
        roles=("physician",) if account == DOCTOR else ("patient",),
        actor_kind=kind,
        kind="phi:resource:read",
        action=action,
        resource_type=resource,
        outcome="success",
        purpose_of_use=purpose,
        break_glass=False,
        break_glass_reason=None,
        account_id=account,
        session_id=session,
    )


def test_one_chart_opened_is_one_row_listing_what_was_seen() -> None:
    # Newest first, as the audit trail is read: eight sections of one chart, within seconds.
    types = ["Patient", "AllergyIntolerance", "Condition", "DocumentReference", "MedicationRequest"]
    entries = [_entry(100 - i, 8 - i, resource=types[i % len(types)]) for i in range(8)]
    [visit] = group_visits(entries, own_account_id=PATIENT)
    assert visit.events == 8 and visit.who == "Dr House" and visit.roles == ("physician",)
    assert visit.at == T0 + dt.timedelta(seconds=1) and visit.last_at == T0 + dt.timedelta(seconds=8)
    assert set(visit.resource_types) == set(types) and len(visit.resource_types) == len(types)
    assert not visit.own


def test_separate_accesses_stay_separate() -> None:
    entries = [
        _entry(9, 3000, session=SESSION_2),  # the next day's session
        _entry(8, 2000),  # the same session, but later than the window
        _entry(7, 12),
        _entry(6, 11, action="changed your record"),  # a write is its own row
        _entry(5, 10),
        _entry(4, 5, account=PATIENT, kind="patient", purpose="PATRQT"),  # between two of the doctor's
        _entry(3, 4, account=PATIENT, kind="patient", purpose="PATRQT"),
        _entry(2, 1),
    ]
    visits = group_visits(entries, own_account_id=PATIENT)
    assert [(v.who, v.action, v.events, v.own) for v in visits] == [
        ("Dr House", "opened your record", 1, False),
        ("Dr House", "opened your record", 1, False),
        ("Dr House", "opened your record", 1, False),
        ("Dr House", "changed your record", 1, False),
        ("Dr House", "opened your record", 1, False),
        ("Zoé", "opened your record", 2, True),
        ("Dr House", "opened your record", 1, False),
    ]
    assert len(group_visits(entries, own_account_id=PATIENT, limit=2)) == 2
    assert group_visits([], own_account_id=PATIENT) == []


def test_portal_access_log_in_the_browser_page(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    login(client, hospital.physician)
    chart = client.get(f"/patients/{hospital.my_patient}")
    assert chart.status_code == 200
    for section in ("allergies", "conditions", "notes", "prescriptions"):
        page = client.get(
            f"/patients/{hospital.my_patient}/sections/{section}", headers={"HX-Request": "true"}
        )
        assert page.status_code == 200
    client.cookies.clear()
    movable_clock.advance(dt.timedelta(minutes=1))
    login(client, hospital.patient_person)
    assert client.get("/portal").status_code == 200
    page = client.get("/portal/access-log", headers={"Accept-Language": "fr-FR"})
    assert page.status_code == 200
    rows = re.findall(r"<tr(?: class=\"own\")?>\s*<td>.*?</tr>", page.text, re.S)
    doctor_rows = [r for r in rows if hospital.physician.username.title() in r]
    assert len(doctor_rows) == 1, doctor_rows  # one chart opened, one row
    assert "Médecin" in doctor_rows[0] and "soins" in doctor_rows[0]
    assert "allergies" in doctor_rows[0] and "prescriptions" in doctor_rows[0]
    own = [r for r in rows if 'class="own"' in r]
    assert own and all("Vous" in r and "vous avez consulté votre propre dossier" in r for r in own)
    assert "physician" not in page.text and "(patient)" not in page.text


def test_the_access_log_is_the_patients_only_and_a_refusal_is_audited(
    client: TestClient, hospital: Hospital, sqlite_runtime: Runtime
) -> None:
    login(client, hospital.physician)
    assert client.get("/portal/access-log").status_code == 403
    with sqlite_runtime.session_factory() as session:
        refused = session.scalars(
            select(AuditEvent).where(
                AuditEvent.kind == AuditKind.AUDIT_EVENTS_READ.value,
                AuditEvent.outcome == "denied",
                AuditEvent.account_id == hospital.physician.account_id,
            )
        ).all()
    assert len(refused) == 1
