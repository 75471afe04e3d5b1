"""Realistic audit records for the audit benchmarks (their database: benchmarks._db)."""

from __future__ import annotations

import random
import uuid

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome


def records(count: int, seed: int = 7) -> list[AuditRecord]:
    """Reads, searches and lists by a few hundred staff over a few thousand patients."""
    rng = random.Random(seed)
    staff = [
        Actor(
            kind=ActorKind.STAFF,
            username=f"staff{i:04d}",
            roles=frozenset({rng.choice([Role.PHYSICIAN, Role.NURSE, Role.FRONT_DESK])}),
            account_id=uuid.UUID(int=rng.getrandbits(128)),
            session_id=uuid.UUID(int=rng.getrandbits(128)),
            address=f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
            user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        )
        for i in range(300)
    ]
    patients = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(5000)]
    kinds = [AuditKind.PHI_READ] * 6 + [AuditKind.PHI_SEARCH] * 2 + [AuditKind.PHI_LIST, AuditKind.PHI_UPDATE]
    out = []
    for _ in range(count):
        kind = rng.choice(kinds)
        subjects = rng.sample(patients, 5 if kind is AuditKind.PHI_LIST else 1)
        out.append(
            AuditRecord(
                kind=kind,
                outcome=Outcome.SUCCESS,
                actor=rng.choice(staff),
                resource_type="Patient",
                resource_ids=[str(p) for p in subjects],
                patient_ids=subjects,
                query="family&birthdate" if kind is AuditKind.PHI_SEARCH else None,
                policy_reason="care team",
            )
        )
    return out
