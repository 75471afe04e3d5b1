"""Every break-the-glass start becomes an alert a security officer reads.

Called in the break-the-glass transaction itself, so an emergency access and its alert commit
together or not at all. The sentence names who, which patient id and the structured reason;
the free-text justification stays in the review list (carnet.access.breakglass), never here.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.access.actor import Actor, ActorKind
from carnet.access.breakglass import take_pending_alerts
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.detection.interfaces import Level, Rule
from carnet.detection.models import Alert
from carnet.identity.models import Account


def alert_break_glass(session: Session, *, audit: AuditWriter, limit: int = 100) -> list[Alert]:
    """Raise one alert per pending break-the-glass access visible in the session's scope, and
    mark them alerted. One alert each (no merging): each names a different emergency."""
    alerts: list[Alert] = []
    for access in take_pending_alerts(session, limit=limit):
        account_id = uuid.UUID(access.account_id)
        username = session.scalar(select(Account.username).where(Account.id == account_id)) or "?"
        actor = Actor(kind=ActorKind.STAFF, username=username, roles=frozenset(), account_id=account_id)
        sentence = (
            f"{username} broke the glass on patient {access.patient_id} "
            f"(reason: {access.reason_code.replace('_', ' ')}) at "
            f"{access.started_at:%Y-%m-%d %H:%M} UTC, until {access.expires_at:%H:%M} UTC: "
            "review the justification in the break-the-glass list."
        )
        alert = Alert(
            id=uuid.uuid4(),
            actor_ref=actor.actor_ref,
            account_id=account_id,
            username=username[:150],
            rule=Rule.BREAK_GLASS.value,
            level=int(Level.RECORD),
            sentence=sentence[:1000],
            status="open",
            created_at=access.started_at,
            last_seen_at=access.started_at,
            occurrences=1,
        )
        session.add(alert)
        audit.append(
            session,
            AuditRecord(
                kind=AuditKind.DETECTION_ALERT,
                outcome=Outcome.SUCCESS,
                actor=actor,
                resource_type="Alert",
                resource_ids=(str(alert.id), access.id),
                patient_ids=[uuid.UUID(access.patient_id)],
                policy_reason=sentence[:500],
                detail={"rule": Rule.BREAK_GLASS.value, "level": Level.RECORD.name.lower()},
            ),
        )
        alerts.append(alert)
    session.flush()
    return alerts
