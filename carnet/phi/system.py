"""The one elevated door: carnet itself acting on patient data (seeding, import, re-keying,
approved exports). Each use is audited with its stated reason, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.orm import Session

from carnet.access.actor import Actor, ActorKind, PurposeOfUse
from carnet.access.scope import ALL_FACILITIES, enter_scope
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.crypto.keyring import Keyring
from carnet.kernel.errors import InvalidInput
from carnet.runtime import Runtime


@dataclass
class SystemAccess:
    """An open, audited system transaction. Only carnet.phi modules receive one."""

    session: Session
    keyring: Keyring
    actor: Actor
    reason: str
    audit: AuditWriter


@contextmanager
def system_access(runtime: Runtime, *, reason: str, operator: str = "carnet") -> Iterator[SystemAccess]:
    """Open the elevated door for one transaction. `reason` is mandatory and audited."""
    reason = reason.strip()
    if len(reason) < 4:
        raise InvalidInput("elevated system access needs a stated reason")
    actor = Actor(
        kind=ActorKind.SYSTEM,
        username=f"system:{operator}",
        roles=frozenset(),
        purpose_of_use=PurposeOfUse.OPERATIONS,
    )
    with runtime.session_factory.begin() as session:
        # An explicit all-facilities scope: row-level security applies to the door too.
        enter_scope(session, ALL_FACILITIES)
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.PHI_SYSTEM_ACCESS,
                outcome=Outcome.SUCCESS,
                actor=actor,
                detail={"reason": reason[:500]},
            ),
        )
        yield SystemAccess(
            session=session, keyring=runtime.keyring, actor=actor, reason=reason, audit=runtime.audit
        )
