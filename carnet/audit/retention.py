"""Retention: audit events are kept at least the legal minimum, and purged only by an audited
command that leaves a signed anchor per lane (the lane's last purged event), so `carnet audit
verify` still proves what remains: each lane continues from its anchor.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from carnet.access.actor import Actor, ActorKind, PurposeOfUse
from carnet.audit.checkpoints import Checkpoint, Checkpointer, CheckpointType
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.audit.models import AuditEvent, AuditEventPatient
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput


@dataclass(frozen=True)
class PurgeResult:
    through_seq: int
    purged: int
    anchor_hash: str
    audit_seq: int


def retention_limit(now: dt.datetime, years: int) -> dt.datetime:
    """The oldest moment that may be purged: `years` calendar years ago (29 February -> 28)."""
    try:
        return now.replace(year=now.year - years)
    except ValueError:
        return now.replace(year=now.year - years, day=28)


def purge(
    *,
    session_factory: sessionmaker[Session],
    writer: AuditWriter,
    checkpointer: Checkpointer,
    before: dt.datetime,
    reason: str,
    retention_years: int,
    operator: str = "cli",
) -> PurgeResult | None:
    """Delete events recorded before `before`; None when there is nothing that old.

    Order matters for crash safety: the signed purge checkpoint (the anchor) is stored first,
    then the deletion and its own audit event commit together. A crash in between leaves the
    events in place, and verify checks them against the anchor.
    """
    reason = reason.strip()
    if len(reason) < 4:
        raise InvalidInput("a purge needs a stated reason")
    limit = retention_limit(clock.now(), retention_years)
    if before > limit:
        raise InvalidInput(
            f"refused: events younger than the legal minimum of {retention_years} years"
            f" (nothing after {limit.date().isoformat()}) may not be purged"
        )
    with session_factory() as session:
        through_seq = session.scalar(select(func.max(AuditEvent.seq)).where(AuditEvent.recorded_at < before))
        if through_seq is None:
            return None
        purged = (
            session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.seq <= through_seq))
            or 0
        )
        # Each lane's anchor: its last event at or below through_seq.
        last_per_lane = (
            select(AuditEvent.lane, func.max(AuditEvent.seq).label("seq"))
            .where(AuditEvent.seq <= through_seq)
            .group_by(AuditEvent.lane)
            .subquery()
        )
        anchors = tuple(
            (int(lane), int(seq), str(digest))
            for lane, seq, digest in session.execute(
                select(AuditEvent.lane, AuditEvent.seq, AuditEvent.hash)
                .join(last_per_lane, AuditEvent.seq == last_per_lane.c.seq)
                .order_by(AuditEvent.lane)
            )
        )
    anchor_hash = next(digest for _, seq, digest in anchors if seq == through_seq)
    checkpointer.publish(
        Checkpoint(
            type=CheckpointType.PURGE,
            head_seq=through_seq,
            head_hash=anchor_hash,
            count=purged,
            at=clock.now(),
            through_seq=through_seq,
            anchor_hash=anchor_hash,
            reason=reason[:500],
            lanes=anchors,
        )
    )
    actor = Actor(
        kind=ActorKind.SYSTEM,
        username=f"system:{operator}",
        roles=frozenset(),
        purpose_of_use=PurposeOfUse.OPERATIONS,
    )
    with session_factory.begin() as session:
        session.execute(delete(AuditEventPatient).where(AuditEventPatient.seq <= through_seq))
        session.execute(delete(AuditEvent).where(AuditEvent.seq <= through_seq))
        audit_seq = writer.append(
            session,
            AuditRecord(
                kind=AuditKind.AUDIT_PURGED,
                outcome=Outcome.SUCCESS,
                actor=actor,
                resource_type="AuditEvent",
                detail={
                    "reason": reason[:500],
                    "before": before.isoformat(),
                    "through_seq": str(through_seq),
                    "purged": str(purged),
                },
            ),
        )
    checkpointer.checkpoint()
    return PurgeResult(through_seq=through_seq, purged=purged, anchor_hash=anchor_hash, audit_seq=audit_seq)
