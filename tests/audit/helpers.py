"""Shared helpers for the audit tests: actors and a quick way to append events."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from carnet.access.actor import Actor, ActorKind, PurposeOfUse
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.runtime import Runtime

DOCTOR = Actor(
    kind=ActorKind.STAFF,
    username="dr.house",
    roles=frozenset({Role.PHYSICIAN}),
    account_id=uuid.UUID("00000000-0000-4000-8000-000000000001"),
    session_id=uuid.UUID("00000000-0000-4000-8000-0000000000aa"),
    address="10.0.0.7",
    user_agent="Firefox/128",
)
EMERGENCY = Actor(
    kind=ActorKind.STAFF,
    username="dr.cuddy",
    roles=frozenset({Role.PHYSICIAN}),
    account_id=uuid.UUID("00000000-0000-4000-8000-000000000002"),
    purpose_of_use=PurposeOfUse.EMERGENCY,
)


def append_events(runtime: Runtime, count: int, *, patients: Sequence[uuid.UUID] = ()) -> list[int]:
    seqs = []
    with runtime.session_factory.begin() as session:
        for i in range(count):
            seqs.append(
                runtime.audit.append(
                    session,
                    AuditRecord(
                        kind=AuditKind.PHI_READ,
                        outcome=Outcome.SUCCESS,
                        actor=DOCTOR,
                        resource_type="Patient",
                        resource_ids=[str(p) for p in patients],
                        patient_ids=list(patients),
                        query=f"_id&n{i}",
                        detail={"i": str(i), "note": "é ü ✓"},
                    ),
                )
            )
    return seqs
