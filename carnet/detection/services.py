"""The security officer's work: alerts with their explanation and the actor's timeline,
acknowledge, mark a false positive, and restore a contained account (two officers: one asks,
another approves). Every call is audited, refusals included.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.audit.models import AuditEvent
from carnet.detection.containment import ACTIVE, CONTAINED
from carnet.detection.interfaces import Level
from carnet.detection.ledger import SqlExposureLedger
from carnet.detection.models import ActorState, Alert, DetectionEvent, Exposure, RestoreRequest
from carnet.identity import lifecycle
from carnet.identity.models import Account, ApiClient
from carnet.kernel import clock
from carnet.kernel.errors import Conflict, Forbidden, InvalidInput, NotFound
from carnet.runtime import Runtime

OPEN, ACKNOWLEDGED, FALSE_POSITIVE = "open", "acknowledged", "false_positive"
ALERT_STATUSES = (OPEN, ACKNOWLEDGED, FALSE_POSITIVE)
TIMELINE_LIMIT = 500


@dataclass(frozen=True)
class AlertView:
    id: uuid.UUID
    actor_ref: str
    username: str
    rule: str
    level: str
    sentence: str
    status: str
    created_at: dt.datetime
    last_seen_at: dt.datetime
    occurrences: int
    note: str | None


@dataclass(frozen=True)
class TimelineEntry:
    """One thing the actor did, without patient data: what, through which resource, how many."""

    at: dt.datetime
    source: str  # exposure, audit, detection
    what: str
    resource_type: str | None
    patients: int


@dataclass(frozen=True)
class AlertDetail:
    alert: AlertView
    contained: bool
    timeline: list[TimelineEntry]


@dataclass(frozen=True)
class RestoreView:
    id: uuid.UUID
    actor_ref: str
    status: str
    reason: str
    requested_at: dt.datetime


def _view(alert: Alert) -> AlertView:
    return AlertView(
        id=alert.id,
        actor_ref=alert.actor_ref,
        username=alert.username,
        rule=alert.rule,
        level=Level(alert.level).name.lower().replace("_", "-"),
        sentence=alert.sentence,
        status=alert.status,
        created_at=alert.created_at,
        last_seen_at=alert.last_seen_at,
        occurrences=alert.occurrences,
        note=alert.note,
    )


@contextmanager
def officer_transaction(
    runtime: Runtime, *, officer: Actor, kind: AuditKind, resource_ids: tuple[str, ...] = ()
) -> Iterator[Session]:
    """Refuse anyone but a security officer (the refusal is audited and committed), else open
    the transaction whose audit event the caller's work joins."""
    if Role.SECURITY_OFFICER not in officer.roles or officer.account_id is None:
        with runtime.session_factory.begin() as session:
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=kind,
                    outcome=Outcome.DENIED,
                    actor=officer,
                    resource_type="Alert",
                    resource_ids=resource_ids,
                    policy_reason="only a security officer handles detection alerts",
                ),
            )
        raise Forbidden("only a security officer may do this")
    with runtime.session_factory.begin() as session:
        yield session


def record_officer_action(
    runtime: Runtime,
    session: Session,
    *,
    officer: Actor,
    kind: AuditKind,
    resource_type: str,
    resource_ids: tuple[str, ...],
    detail: dict[str, str] | None = None,
) -> None:
    runtime.audit.append(
        session,
        AuditRecord(
            kind=kind,
            outcome=Outcome.SUCCESS,
            actor=officer,
            resource_type=resource_type,
            resource_ids=resource_ids,
            detail=detail or {},
        ),
    )


def _alert(session: Session, alert_id: uuid.UUID) -> Alert:
    alert = session.get(Alert, alert_id, with_for_update=True)
    if alert is None:
        raise NotFound("no such alert")
    return alert


# -- alerts ---------------------------------------------------------------------------------
def list_alerts(
    runtime: Runtime, *, officer: Actor, status: str | None = OPEN, limit: int = 100
) -> list[AlertView]:
    """Alerts, most severe and most recent first. `status` None lists every alert."""
    if status is not None and status not in ALERT_STATUSES:
        raise InvalidInput(f"alert status must be one of {', '.join(ALERT_STATUSES)}")
    limit = max(1, min(limit, 1000))
    with officer_transaction(runtime, officer=officer, kind=AuditKind.DETECTION_ALERTS_READ) as session:
        query = select(Alert).order_by(Alert.level.desc(), Alert.last_seen_at.desc()).limit(limit)
        if status is not None:
            query = query.where(Alert.status == status)
        alerts = [_view(a) for a in session.scalars(query)]
        record_officer_action(
            runtime,
            session,
            officer=officer,
            kind=AuditKind.DETECTION_ALERTS_READ,
            resource_type="Alert",
            resource_ids=tuple(str(a.id) for a in alerts),
            detail={"status": status or "any"},
        )
        return alerts


def get_alert(runtime: Runtime, *, officer: Actor, alert_id: uuid.UUID) -> AlertDetail:
    """An alert, whether its actor is contained, and the actor's timeline around it."""
    with officer_transaction(
        runtime, officer=officer, kind=AuditKind.DETECTION_ALERTS_READ, resource_ids=(str(alert_id),)
    ) as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            raise NotFound("no such alert")
        state = session.get(ActorState, alert.actor_ref)
        timeline = _timeline(
            session,
            actor_ref=alert.actor_ref,
            since=alert.created_at - dt.timedelta(hours=24),
            until=alert.last_seen_at + dt.timedelta(minutes=5),
        )
        record_officer_action(
            runtime,
            session,
            officer=officer,
            kind=AuditKind.DETECTION_ALERTS_READ,
            resource_type="Alert",
            resource_ids=(str(alert_id),),
        )
        return AlertDetail(
            alert=_view(alert), contained=state is not None and state.status == CONTAINED, timeline=timeline
        )


def acknowledge_alert(runtime: Runtime, *, officer: Actor, alert_id: uuid.UUID, note: str = "") -> AlertView:
    return _close_alert(
        runtime,
        officer=officer,
        alert_id=alert_id,
        note=note,
        status=ACKNOWLEDGED,
        kind=AuditKind.DETECTION_ALERT_ACKNOWLEDGED,
    )


def mark_false_positive(runtime: Runtime, *, officer: Actor, alert_id: uuid.UUID, note: str) -> AlertView:
    """A false positive needs a note saying why: it is how thresholds get tuned."""
    if len(note.strip()) < 4:
        raise InvalidInput("say why this alert is a false positive")
    return _close_alert(
        runtime,
        officer=officer,
        alert_id=alert_id,
        note=note,
        status=FALSE_POSITIVE,
        kind=AuditKind.DETECTION_ALERT_FALSE_POSITIVE,
    )


def _close_alert(
    runtime: Runtime, *, officer: Actor, alert_id: uuid.UUID, note: str, status: str, kind: AuditKind
) -> AlertView:
    with officer_transaction(runtime, officer=officer, kind=kind, resource_ids=(str(alert_id),)) as session:
        alert = _alert(session, alert_id)
        if alert.status != OPEN:
            raise Conflict(f"this alert is already {alert.status.replace('_', ' ')}")
        alert.status = status
        alert.handled_by = officer.account_id
        alert.handled_at = clock.now()
        alert.note = note.strip()[:500] or None
        record_officer_action(
            runtime,
            session,
            officer=officer,
            kind=kind,
            resource_type="Alert",
            resource_ids=(str(alert_id),),
            detail={"rule": alert.rule, "actor": alert.actor_ref},
        )
        return _view(alert)


# -- timeline -------------------------------------------------------------------------------
def actor_timeline(
    runtime: Runtime, *, officer: Actor, actor_ref: str, since: dt.datetime, until: dt.datetime
) -> list[TimelineEntry]:
    """What an actor did between two moments: exposures, audited actions, searches, refusals."""
    if until <= since:
        raise InvalidInput("the timeline's end must come after its start")
    with officer_transaction(
        runtime, officer=officer, kind=AuditKind.DETECTION_ALERTS_READ, resource_ids=(actor_ref,)
    ) as session:
        entries = _timeline(session, actor_ref=actor_ref, since=since, until=until)
        record_officer_action(
            runtime,
            session,
            officer=officer,
            kind=AuditKind.DETECTION_ALERTS_READ,
            resource_type="Timeline",
            resource_ids=(actor_ref,),
            detail={"since": since.isoformat(), "until": until.isoformat()},
        )
        return entries


def _timeline(
    session: Session, *, actor_ref: str, since: dt.datetime, until: dt.datetime
) -> list[TimelineEntry]:
    entries: list[TimelineEntry] = []
    exposures = session.execute(
        select(Exposure.at, Exposure.channel, Exposure.resource_type, func.count(Exposure.patient_id))
        .where(Exposure.actor_ref == actor_ref, Exposure.at >= since, Exposure.at <= until)
        .group_by(Exposure.at, Exposure.channel, Exposure.resource_type)
        .order_by(Exposure.at.desc())
        .limit(TIMELINE_LIMIT)
    )
    for at, channel, resource_type, n in exposures:
        entries.append(TimelineEntry(at, "exposure", f"shown through {channel}", resource_type, int(n)))
    audited = session.execute(
        select(
            AuditEvent.recorded_at,
            AuditEvent.kind,
            AuditEvent.outcome,
            AuditEvent.resource_type,
            AuditEvent.patient_ids,
            AuditEvent.address,
        )
        .where(
            AuditEvent.actor_ref == actor_ref,
            AuditEvent.recorded_at >= since,
            AuditEvent.recorded_at <= until,
        )
        .order_by(AuditEvent.seq.desc())
        .limit(TIMELINE_LIMIT)
    )
    for at, kind, outcome, audited_type, patient_ids, address in audited:
        where = f" from {address}" if address else ""
        entries.append(
            TimelineEntry(
                at, "audit", f"{kind} ({outcome}){where}", audited_type, len(json.loads(patient_ids))
            )
        )
    events = session.execute(
        select(DetectionEvent.at, DetectionEvent.kind)
        .where(DetectionEvent.actor_ref == actor_ref, DetectionEvent.at >= since, DetectionEvent.at <= until)
        .order_by(DetectionEvent.at.desc())
        .limit(TIMELINE_LIMIT)
    )
    for at, kind in events:
        entries.append(TimelineEntry(at, "detection", kind, None, 0))
    entries.sort(key=lambda e: e.at)
    return entries[-TIMELINE_LIMIT:]


# -- restoring a contained account -----------------------------------------------------------
def request_restore(runtime: Runtime, *, officer: Actor, actor_ref: str, reason: str) -> RestoreView:
    """First officer: ask to restore a contained actor, saying why (e.g. verified with them)."""
    if len(reason.strip()) < 10:
        raise InvalidInput("say why the account can be restored (at least a sentence)")
    _refuse_while_reenrolment_due(
        runtime,
        officer=officer,
        kind=AuditKind.RESTORE_REQUESTED,
        target=actor_ref,
        blocked=lifecycle.restore_block(runtime, actor_ref=actor_ref),
    )
    with officer_transaction(
        runtime, officer=officer, kind=AuditKind.RESTORE_REQUESTED, resource_ids=(actor_ref,)
    ) as session:
        state = session.get(ActorState, actor_ref)
        if state is None or state.status != CONTAINED:
            raise NotFound("this actor is not contained")
        pending = session.scalar(
            select(RestoreRequest.id).where(
                RestoreRequest.actor_ref == actor_ref, RestoreRequest.status == "pending"
            )
        )
        if pending is not None:
            raise Conflict("a restore of this actor is already waiting for approval")
        assert officer.account_id is not None
        request = RestoreRequest(
            id=uuid.uuid4(),
            actor_ref=actor_ref,
            account_id=state.account_id,
            requested_by=officer.account_id,
            requested_at=clock.now(),
            reason=reason.strip()[:500],
            status="pending",
        )
        session.add(request)
        record_officer_action(
            runtime,
            session,
            officer=officer,
            kind=AuditKind.RESTORE_REQUESTED,
            resource_type="RestoreRequest",
            resource_ids=(str(request.id), actor_ref),
            detail={"reason": request.reason},
        )
        return RestoreView(request.id, actor_ref, request.status, request.reason, request.requested_at)


def approve_restore(runtime: Runtime, *, officer: Actor, request_id: uuid.UUID) -> RestoreView:
    """Second officer: restore the account; its windows start afresh and a new probation
    begins. Never the requester, and never before an owner contained on probation re-enrolled."""
    _refuse_while_reenrolment_due(
        runtime,
        officer=officer,
        kind=AuditKind.ACCOUNT_RESTORED,
        target=str(request_id),
        blocked=lifecycle.restore_block_for_request(runtime, request_id=request_id),
    )
    with officer_transaction(
        runtime, officer=officer, kind=AuditKind.ACCOUNT_RESTORED, resource_ids=(str(request_id),)
    ) as session:
        request = _pending_request(session, request_id)
        if request.requested_by == officer.account_id:
            raise Forbidden("a second security officer must approve this restore")
        now = clock.now()
        request.status = "approved"
        request.decided_by = officer.account_id
        request.decided_at = now
        state = session.get(ActorState, request.actor_ref, with_for_update=True)
        if state is not None:
            state.status = ACTIVE
            state.restored_at = now
        account = session.get(Account, request.account_id) if request.account_id is not None else None
        if account is not None and account.status in ("suspended", "active"):
            account.status, account.status_reason = "active", None
            # Contained again within this probation: the owner re-enrols in person first.
            lifecycle.start_probation(account, now)
        if request.actor_ref.startswith("client:"):
            session.execute(
                update(ApiClient)
                .where(ApiClient.client_id == request.actor_ref.removeprefix("client:"))
                .values(status="active")
            )
        record_officer_action(
            runtime,
            session,
            officer=officer,
            kind=AuditKind.ACCOUNT_RESTORED,
            resource_type="RestoreRequest",
            resource_ids=(str(request.id), request.actor_ref),
            detail={"requested_by": str(request.requested_by), "reason": request.reason},
        )
        view = RestoreView(
            request.id, request.actor_ref, request.status, request.reason, request.requested_at
        )
    # After commit: clear the shared flag and counters so the next request is judged afresh.
    if isinstance(runtime.ledger, SqlExposureLedger):
        runtime.ledger.forget(actor_ref=view.actor_ref)
    return view


def _refuse_while_reenrolment_due(
    runtime: Runtime, *, officer: Actor, kind: AuditKind, target: str, blocked: str | None
) -> None:
    """The probation rule lives here, not in the pages that call it: an account contained while
    on probation is restored only after its owner re-enrolled in person (`blocked`, from
    carnet.identity.lifecycle, says why; the refusal is audited)."""
    if blocked is None:
        return
    with runtime.session_factory.begin() as session:
        runtime.audit.append(
            session,
            AuditRecord(
                kind=kind,
                outcome=Outcome.DENIED,
                actor=officer,
                resource_type="RestoreRequest",
                resource_ids=(target,),
                policy_reason=blocked,
            ),
        )
    raise Forbidden(blocked)


def reject_restore(runtime: Runtime, *, officer: Actor, request_id: uuid.UUID, note: str) -> RestoreView:
    with officer_transaction(
        runtime, officer=officer, kind=AuditKind.RESTORE_REJECTED, resource_ids=(str(request_id),)
    ) as session:
        request = _pending_request(session, request_id)
        request.status = "rejected"
        request.decided_by = officer.account_id
        request.decided_at = clock.now()
        record_officer_action(
            runtime,
            session,
            officer=officer,
            kind=AuditKind.RESTORE_REJECTED,
            resource_type="RestoreRequest",
            resource_ids=(str(request.id), request.actor_ref),
            detail={"note": note.strip()[:300]},
        )
        return RestoreView(
            request.id, request.actor_ref, request.status, request.reason, request.requested_at
        )


def _pending_request(session: Session, request_id: uuid.UUID) -> RestoreRequest:
    request = session.get(RestoreRequest, request_id, with_for_update=True)
    if request is None:
        raise NotFound("no such restore request")
    if request.status != "pending":
        raise Conflict(f"this restore request is already {request.status}")
    return request
