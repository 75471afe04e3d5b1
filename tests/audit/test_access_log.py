"""The patient's access log: who (name, role), when, what, why; break-the-glass marked."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from carnet.access.actor import Actor, ActorKind
from carnet.audit.access_log import access_log
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.identity.models import Account
from carnet.kernel.clock import MovableClock
from carnet.kernel.errors import InvalidInput
from carnet.runtime import Runtime
from tests.audit.helpers import DOCTOR, EMERGENCY, append_events

SYSTEM = Actor(kind=ActorKind.SYSTEM, username="system:import", roles=frozenset())


def test_a_patient_sees_who_opened_their_record_and_why(
    runtime: Runtime, movable_clock: MovableClock
) -> None:
    me, someone_else = uuid.uuid4(), uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    with runtime.session_factory.begin() as session:
        session.add(
            Account(
                id=DOCTOR.account_id,
                username=DOCTOR.username,
                display_name="Dr Gregory House",
                kind="staff",
                password_hash="x",
                created_at=now,
                password_changed_at=now,
            )
        )
    movable_clock.set(dt.datetime(2026, 1, 10, 9, tzinfo=dt.UTC))
    append_events(runtime, 1, patients=[me])
    append_events(runtime, 1, patients=[someone_else])
    movable_clock.set(dt.datetime(2026, 2, 10, 3, tzinfo=dt.UTC))
    with runtime.session_factory.begin() as session:
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.BREAK_GLASS_START,
                outcome=Outcome.SUCCESS,
                actor=EMERGENCY,
                patient_ids=[me],
                break_glass_reason="unconscious, arrived by ambulance",
            ),
        )
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.PHI_EXPORT,
                outcome=Outcome.SUCCESS,
                actor=SYSTEM,
                patient_ids=[me, someone_else],
            ),
        )

    with runtime.session_factory() as session:
        log = access_log(session, patient_id=me)
        recent = access_log(session, patient_id=me, since=dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
        last_only = access_log(session, patient_id=me, limit=1)
        with pytest.raises(InvalidInput):
            access_log(session, patient_id=me, limit=100_000)

    assert [e.seq for e in log] == [4, 3, 1]  # newest first, nobody else's events
    system, glass, opened = log
    assert opened.who == "Dr Gregory House" and opened.roles == ("physician",)
    assert opened.action == "opened your record" and opened.purpose_of_use == "TREAT"
    assert opened.at - dt.datetime(2026, 1, 10, 9, tzinfo=dt.UTC) < dt.timedelta(seconds=5)
    assert not opened.break_glass
    assert glass.break_glass and glass.break_glass_reason == "unconscious, arrived by ambulance"
    assert glass.who == "dr.cuddy"  # no account row: the username recorded at the time
    assert system.who == "carnet (automatic processing)" and system.action == "exported your record"
    assert [e.seq for e in recent] == [4, 3]
    assert [e.seq for e in last_only] == [4]
