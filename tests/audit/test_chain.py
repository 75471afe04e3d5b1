"""The audit writer links every event to the previous one, on both databases."""

from __future__ import annotations

import json
import uuid

import sqlalchemy as sa

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.audit.chain import GENESIS_HASH, link
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.audit.models import AuditEvent, AuditEventPatient
from carnet.runtime import Runtime

ACTOR = Actor(
    kind=ActorKind.STAFF, username="dr.house", roles=frozenset({Role.PHYSICIAN}), account_id=uuid.uuid4()
)


def test_events_chain_and_roll_back_with_their_transaction(runtime: Runtime) -> None:
    patient = uuid.uuid4()
    with runtime.session_factory.begin() as session:
        for _ in range(3):
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.PHI_READ, outcome=Outcome.SUCCESS, actor=ACTOR, patient_ids=[patient]
                ),
            )
    # A transaction that fails leaves no event, and no gap in its lane. (On PostgreSQL the global
    # seq comes from a sequence: the rolled-back transaction's number is skipped.)
    try:
        with runtime.session_factory.begin() as session:
            runtime.audit.append(
                session, AuditRecord(kind=AuditKind.PHI_READ, outcome=Outcome.SUCCESS, actor=ACTOR)
            )
            raise RuntimeError("the access failed after auditing")
    except RuntimeError:
        pass
    with runtime.session_factory.begin() as session:
        runtime.audit.append(
            session, AuditRecord(kind=AuditKind.LOGOUT, outcome=Outcome.SUCCESS, actor=ACTOR)
        )

    with runtime.session_factory() as session:
        events = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).all()
        indexed = session.scalars(sa.select(AuditEventPatient.seq)).all()
    last = 5 if runtime.engine.dialect.name == "postgresql" else 4
    assert [e.seq for e in events] == [1, 2, 3, last]
    assert [e.lane for e in events] == [1, 1, 1, 1]  # alone, a transaction takes the lowest lane
    assert [e.prev_seq for e in events] == [None, 1, 2, 3]
    prev = GENESIS_HASH
    for event in events:
        fields = {
            c: getattr(event, c)
            for c in AuditEvent.__table__.columns.keys()  # noqa: SIM118 (ColumnCollection)
            if c not in ("prev_hash", "hash", "lane", "prev_seq")
        }
        fields["recorded_at"] = event.recorded_at.isoformat(timespec="microseconds")
        fields["account_id"] = str(event.account_id) if event.account_id else None
        fields["session_id"] = str(event.session_id) if event.session_id else None
        assert event.prev_hash == prev
        assert event.hash == link(prev, fields)
        prev = event.hash
    assert json.loads(events[0].patient_ids) == [str(patient)]
    assert sorted(indexed) == [1, 2, 3]


def test_awkward_text_links_the_same_in_python_and_in_the_database(runtime: Runtime) -> None:
    """On PostgreSQL one event is hashed by carnet_audit_link from the writer's bytes: tabs,
    newlines, backslashes, accents and NULLs must give the hash the verifier recomputes."""
    awkward = Actor(
        kind=ActorKind.STAFF,
        username="é\tà\\n\nß",
        roles=frozenset({Role.NURSE}),
        account_id=uuid.uuid4(),
        address=None,
        user_agent='Mozilla/5.0 \\ "quoted" \r\n',
    )
    with runtime.session_factory.begin() as session:
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.BREAK_GLASS_START,
                outcome=Outcome.SUCCESS,
                actor=awkward,
                resource_type="Patient",
                patient_ids=[uuid.uuid4(), uuid.uuid4()],
                query="family=O'Brien\tgiven=Zoë",
                break_glass_reason="urgence vitale\\nplus de détails\n",
                detail={"note": "tab\there", "empty": ""},
            ),
        )
    with runtime.session_factory() as session:
        event = session.scalars(sa.select(AuditEvent)).one()
        patients = session.scalars(sa.select(AuditEventPatient.patient_id)).all()
    fields = {
        c: getattr(event, c)
        for c in AuditEvent.__table__.columns.keys()  # noqa: SIM118 (ColumnCollection)
        if c not in ("prev_hash", "hash", "lane", "prev_seq")
    }
    fields["recorded_at"] = event.recorded_at.isoformat(timespec="microseconds")
    fields["account_id"] = str(event.account_id)
    fields["session_id"] = None
    assert event.username == "é\tà\\n\nß"
    assert event.prev_hash == GENESIS_HASH
    assert event.hash == link(GENESIS_HASH, fields)
    assert len(patients) == 2
