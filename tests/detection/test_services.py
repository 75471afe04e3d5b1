"""The security officer's work: alerts, timeline, acknowledge, false positive, two-person restore."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.detection import services
from carnet.detection.models import ActorState
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.kernel.errors import AccountContained, Conflict, Forbidden, InvalidInput
from carnet.runtime import Runtime
from tests.detection.helpers import expose, expose_as_owner, make_actor, new_patients

MORNING = dt.datetime(2026, 3, 3, 9, 0, tzinfo=dt.UTC)


def _audit(runtime: Runtime, kind: AuditKind) -> list[tuple[str, str]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            sa.select(AuditEvent.username, AuditEvent.outcome)
            .where(AuditEvent.kind == kind.value)
            .order_by(AuditEvent.seq)
        )
        return [(u, o) for u, o in rows]


def test_officers_handle_alerts_and_restore_with_two_people(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    nurse = make_actor(runtime, "nurse.wanders", Role.NURSE)
    first = make_actor(runtime, "so.first", Role.SECURITY_OFFICER)
    second = make_actor(runtime, "so.second", Role.SECURITY_OFFICER)
    strangers = new_patients(9)
    nurse = expose_as_owner(runtime, nurse, strangers[:4], outside_care=strangers[:4])
    with pytest.raises(AccountContained):
        expose(runtime, nurse, strangers[4:8], outside_care=strangers[4:8])

    alerts = services.list_alerts(runtime, officer=first)
    assert [(a.username, a.rule, a.level) for a in alerts] == [("nurse.wanders", "outside-care", "contain")]
    assert "8 different patients outside their care in the last hour" in alerts[0].sentence
    detail = services.get_alert(runtime, officer=first, alert_id=alerts[0].id)
    assert detail.contained
    # The timeline shows the first request's exposures (the contained one rolled back) and the containment.
    assert [(e.source, e.patients) for e in detail.timeline if e.source == "exposure"] == [("exposure", 4)]
    assert any(e.what.startswith(AuditKind.CONTAINMENT.value) for e in detail.timeline)

    services.acknowledge_alert(runtime, officer=first, alert_id=alerts[0].id, note="called the nurse")
    with pytest.raises(Conflict):
        services.mark_false_positive(
            runtime, officer=second, alert_id=alerts[0].id, note="covering a colleague"
        )
    assert services.list_alerts(runtime, officer=first) == []

    request = services.request_restore(
        runtime, officer=first, actor_ref=nurse.actor_ref, reason="verified by phone: covering ward B tonight"
    )
    with pytest.raises(Forbidden, match="second security officer"):
        services.approve_restore(runtime, officer=first, request_id=request.id)
    services.approve_restore(runtime, officer=second, request_id=request.id)
    with runtime.session_factory() as session:
        account = session.get(Account, nurse.account_id)
        state = session.get(ActorState, nurse.actor_ref)
    assert account is not None and account.status == "active" and account.status_reason is None
    assert state is not None and state.status == "active"
    # Restored: the windows start afresh, so the old counts do not contain again at once.
    expose(runtime, nurse, strangers[8:], outside_care=strangers[8:])
    assert _audit(runtime, AuditKind.RESTORE_REQUESTED) == [("so.first", "success")]
    assert _audit(runtime, AuditKind.ACCOUNT_RESTORED) == [("so.second", "success")]
    assert _audit(runtime, AuditKind.DETECTION_ALERT_ACKNOWLEDGED) == [("so.first", "success")]


def test_only_security_officers_and_refusals_are_audited(runtime: Runtime) -> None:
    admin = make_actor(runtime, "admin.curious", Role.SYSTEM_ADMINISTRATOR)
    doctor = make_actor(runtime, "dr.curious", Role.PHYSICIAN)
    with pytest.raises(Forbidden):
        services.list_alerts(runtime, officer=admin)
    with pytest.raises(Forbidden):
        services.actor_timeline(
            runtime,
            officer=doctor,
            actor_ref=admin.actor_ref,
            since=clock.now() - dt.timedelta(days=1),
            until=clock.now(),
        )
    with pytest.raises(Forbidden):
        services.request_restore(
            runtime, officer=doctor, actor_ref=doctor.actor_ref, reason="let me back in please"
        )
    assert _audit(runtime, AuditKind.DETECTION_ALERTS_READ) == [
        ("admin.curious", "denied"),
        ("dr.curious", "denied"),
    ]
    assert _audit(runtime, AuditKind.RESTORE_REQUESTED) == [("dr.curious", "denied")]


def test_bad_officer_input_is_refused_and_changes_nothing(sqlite_runtime: Runtime) -> None:
    officer = make_actor(sqlite_runtime, "so.only", Role.SECURITY_OFFICER)
    other = make_actor(sqlite_runtime, "dr.fine", Role.PHYSICIAN)
    with pytest.raises(InvalidInput):
        services.list_alerts(sqlite_runtime, officer=officer, status="closed")
    with pytest.raises(Exception, match="not contained"):
        services.request_restore(
            sqlite_runtime, officer=officer, actor_ref=other.actor_ref, reason="nothing to restore here"
        )
    with sqlite_runtime.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(ActorState)) == 0
