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
from carnet.detection.interfaces import Level, Rule
from carnet.detection.models import Alert
from carnet.identity.models import Account


def alert_break_glass(session: Session, *, limit: int = 100) -> list[Alert]:
    """Raise one alert per pending break-the-glass access visible in the session's scope, and
    mark them alerted. One alert each (no merging): each names a different emergency. Not audited
    apart: the caller's audit event (access:break-glass:start) names the alerts it returns."""
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
        alerts.append(alert)
    session.flush()
    return alerts
