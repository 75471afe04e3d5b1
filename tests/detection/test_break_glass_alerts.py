"""Every break-the-glass start raises one alert the security officer reads: who, which patient
id, the structured reason; never the free-text justification."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from carnet.access.breakglass import list_break_glass
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.detection import services
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.kernel.errors import Forbidden, InvalidInput
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from tests import factories as f

SECRET_TEXT = "inconscient, famille injoignable"


@pytest.fixture(autouse=True)
def _office_hours(movable_clock: clock.MovableClock) -> None:
    """Break-the-glass in office hours: at night the off-hours rule would raise its own alert
    beside the one under test (these tests failed when run after 22:00 Paris time)."""
    movable_clock.set(dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC))  # a Tuesday, 10:00 in Paris


def test_break_glass_raises_exactly_one_alert_for_the_officer(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    first = f.register_patient(runtime, facility, family="Urgence")
    second = f.register_patient(runtime, facility, family="Autre")
    officer = f.make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility)
    gate = Gate(runtime, doctor)

    gate.break_glass(patient_id=first.id, reason="emergency", justification=SECRET_TEXT)
    alerts = services.list_alerts(runtime, officer=officer)
    assert len(alerts) == 1
    alert = alerts[0]
    with runtime.session_factory() as session:
        username = session.scalar(sa.select(Account.username).where(Account.id == doctor.account_id))
    assert (alert.rule, alert.actor_ref, alert.username, alert.status) == (
        "break-glass",
        f"account:{doctor.account_id}",
        username,
        "open",
    )
    assert f"{username} broke the glass" in alert.sentence and first.id in alert.sentence
    assert "emergency" in alert.sentence
    assert SECRET_TEXT not in alert.sentence and "Urgence" not in alert.sentence
    assert [b.alert_state for b in list_break_glass(runtime, actor=officer)] == ["alerted"]

    # A second emergency is a second alert (never merged into the first).
    gate.break_glass(patient_id=second.id, reason="patient_request", justification="à sa demande, au guichet")
    alerts = services.list_alerts(runtime, officer=officer)
    assert len(alerts) == 2 and second.id in alerts[0].sentence + alerts[1].sentence

    with runtime.session_factory() as session:
        started = list(
            session.scalars(
                sa.select(AuditEvent)
                .where(AuditEvent.kind == "access:break-glass:start")
                .order_by(AuditEvent.seq)
            )
        )
        read = session.scalars(
            sa.select(AuditEvent).where(
                AuditEvent.kind == "detection:alert:read",
                AuditEvent.actor_ref == f"account:{officer.account_id}",
            )
        ).all()
    # Each access's own audit event names the alert raised with it.
    assert [e.actor_ref for e in started] == [f"account:{doctor.account_id}"] * 2
    named = [set(json.loads(e.resource_ids)) for e in started]
    assert all(len(ids & {str(a.id) for a in alerts}) == 1 for ids in named)
    assert len(read) == 2


def test_refused_break_glass_raises_no_alert_and_only_officers_read_alerts(runtime: Runtime) -> None:
    facility = f.make_facility(runtime)
    doctor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility)
    officer = f.make_account(runtime, roles=[Role.SECURITY_OFFICER], facility_id=facility)
    with pytest.raises(InvalidInput):
        Gate(runtime, doctor).break_glass(
            patient_id=patient.id, reason="curiosity", justification=SECRET_TEXT
        )
    assert services.list_alerts(runtime, officer=officer) == []
    with pytest.raises(Forbidden):
        services.list_alerts(runtime, officer=doctor)
    with runtime.session_factory() as session:
        denied = session.scalars(
            sa.select(AuditEvent.outcome).where(
                AuditEvent.kind == "detection:alert:read",
                AuditEvent.actor_ref == f"account:{doctor.account_id}",
            )
        ).all()
    assert denied == ["denied"]
