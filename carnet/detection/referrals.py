"""Care relationships made by colleagues (referrals, care-team additions), as detection sees them.

A referral opens a patient's chart to the practitioner it names, so a stolen physician account
could hand its patients, one referral at a time, to an accomplice's account: each step is allowed,
the pattern is not usual. The gate counts, in the transaction that makes each one (it alone reads
the care tables), how many the actor made in the last 24 hours and how many anyone made naming the
same practitioner, and asks `judge_care_relationship`. Above a threshold a security officer gets an
alert (merged per actor and rule over a day, like every alert); access is not refused, since a
busy clinic may legitimately refer many patients to one specialist. The sentence names accounts,
a practitioner id and counts, never a patient.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.detection.config import DetectionConfig, get_detection_config
from carnet.detection.containment import raise_alert
from carnet.detection.interfaces import Finding, Level, Rule
from carnet.detection.models import Alert


def judge_care_relationship(
    session: Session,
    *,
    actor: Actor,
    practitioner_id: uuid.UUID,
    by_actor_24h: int,
    to_practitioner_24h: int,
    at: dt.datetime,
    config: DetectionConfig | None = None,
) -> Alert | None:
    """The alert this new care relationship raises (or updates), if any; in the caller's
    transaction, so the relationship and its alert commit together."""
    config = config or get_detection_config()
    if to_practitioner_24h >= config.care_relationships_to_one_practitioner_24h:
        sentence = (
            f"{to_practitioner_24h} patients were referred to (or put in the care team of) "
            f"Practitioner/{practitioner_id} in 24 hours, the latest by {actor.username}: check "
            "each has a clinical reason (a referral opens the patient's chart to that practitioner)."
        )
    elif by_actor_24h >= config.care_relationships_by_actor_24h:
        sentence = (
            f"{actor.username} referred {by_actor_24h} patients to colleagues (or added them to "
            "care teams) in 24 hours: check each has a clinical reason."
        )
    else:
        return None
    alert, _created = raise_alert(
        session,
        actor=actor,
        finding=Finding(Rule.CARE_RELATIONSHIPS, Level.RECORD, sentence),
        at=at,
        merge_hours=config.alert_merge_hours,
    )
    return alert
