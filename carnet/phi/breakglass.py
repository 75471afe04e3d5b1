"""Break-the-glass: emergency access to one patient for one hour; run only by the gate kernel."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import update

from carnet.access.models import BreakGlassAccess
from carnet.access.permissions import Permission
from carnet.access.policy import (
    BREAK_GLASS_DURATION,
    STEP_UP_FRESHNESS,
    BreakGlassReason,
    Relationship,
    decide,
)
from carnet.audit.interfaces import AuditKind
from carnet.detection.breakglass import alert_break_glass
from carnet.kernel.errors import InvalidInput, StepUpRequired
from carnet.kernel.ids import new_id
from carnet.phi.kernel import RT, GuardedTx, Refused, guarded
from carnet.phi.schemas import BreakGlassGrant


@guarded(AuditKind.BREAK_GLASS_START, RT.PATIENT, targeted=True)
def break_glass(
    tx: GuardedTx, /, *, patient_id: str, reason: BreakGlassReason | str, justification: str
) -> BreakGlassGrant:
    """Emergency access to ONE patient for one hour, after a fresh second factor.

    Ends the actor's previous break-the-glass (one patient at a time). Recorded for review
    (carnet.access.breakglass) with `alert_state` pending for detection to alert on.
    """
    tx.require(Permission.BREAK_GLASS)
    tx.check_scopes(RT.PATIENT)  # refuses any access token
    if tx.ctx.account_id is None:
        raise Refused("break-the-glass needs a staff account")
    proven = tx.actor.second_factor_at
    if proven is None or tx.now - proven > STEP_UP_FRESHNESS or proven > tx.now + dt.timedelta(minutes=1):
        raise StepUpRequired("break-the-glass needs a second factor proven in the last 5 minutes")
    try:
        code = BreakGlassReason(reason)
    except ValueError:
        raise InvalidInput(f"reason must be one of: {', '.join(r.value for r in BreakGlassReason)}") from None
    text = justification.strip()
    if len(text) < 10 or len(text) > 1000:
        raise InvalidInput("break-the-glass needs a justification of 10 to 1000 characters")
    patient = tx.patient(patient_id)
    rels = tx.relationships_of([patient]).get(patient.id, frozenset())
    if not rels:
        raise Refused("patient outside the actor's facilities or restricted", [patient.id])
    # Would break-the-glass open anything at all for these roles? (Front desk: no.)
    if not decide(roles=tx.ctx.roles, resource=RT.PATIENT, relationships=[Relationship.BREAK_GLASS]).allowed:
        raise Refused("this role cannot break the glass", [patient.id])
    tx.session.execute(
        update(BreakGlassAccess)
        .where(
            BreakGlassAccess.account_id == tx.ctx.account_id,
            BreakGlassAccess.ended_at.is_(None),
            BreakGlassAccess.expires_at > tx.now,
        )
        .values(ended_at=tx.now)
    )
    access = BreakGlassAccess(
        id=new_id(),
        account_id=tx.ctx.account_id,
        patient_id=patient.id,
        facility_id=patient.facility_id,
        reason_code=code.value,
        justification=text,
        started_at=tx.now,
        expires_at=tx.now + BREAK_GLASS_DURATION,
        second_factor_at=proven,
        alert_state="pending",
    )
    tx.session.add(access)
    tx.session.flush()
    tx.resource_ids.append(str(access.id))
    # The officer's alert commits with the access itself (or neither does); the audit
    # event of this access names it.
    tx.resource_ids.extend(str(alert.id) for alert in alert_break_glass(tx.session))
    tx.break_glass_reason = f"{code.value}: {text}"
    tx.reasons.append("break-the-glass started")

    def link(seq: int) -> None:
        access.audit_seq = seq
        tx.session.flush()

    tx.after_audit.append(link)
    return BreakGlassGrant(
        id=str(access.id),
        patient_id=str(patient.id),
        reason_code=code.value,
        started_at=access.started_at,
        expires_at=access.expires_at,
    )
