"""Reading the audit trail over the API: security officers search it as FHIR AuditEvents; a
patient reads their own access log. Each read is itself audited, refusals included."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select

from carnet.access.actor import Actor, ActorKind
from carnet.access.permissions import Permission, permissions_of
from carnet.audit.access_log import MAX_LIMIT, AccessLogEntry, access_log
from carnet.audit.fhir import to_fhir
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.audit.models import AuditEvent, AuditEventPatient
from carnet.kernel.errors import Forbidden, InvalidInput
from carnet.runtime import Runtime

MAX_COUNT = 100


def _record(runtime: Runtime, actor: Actor, outcome: Outcome, query: str, reason: str | None) -> None:
    with runtime.session_factory.begin() as session:
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.AUDIT_EVENTS_READ,
                outcome=outcome,
                actor=actor,
                resource_type="AuditEvent",
                query=query[:500],
                policy_reason=reason,
            ),
        )


def search_events(
    runtime: Runtime,
    *,
    actor: Actor,
    patient_id: uuid.UUID | None = None,
    since: dt.datetime | None = None,
    kind: str | None = None,
    count: int = 50,
    page: int = 1,
) -> tuple[list[dict[str, Any]], bool]:
    """Security officers only: AuditEvents newest first, bounded pages; (events, has_more)."""
    query = f"patient={'yes' if patient_id else 'no'};kind={kind or ''};count={count};page={page}"
    if Permission.AUDIT_READ not in permissions_of(actor.roles):
        _record(runtime, actor, Outcome.DENIED, query, "missing permission audit:event:read")
        raise Forbidden("only a security officer reads the audit trail")
    if not 1 <= count <= MAX_COUNT or not 1 <= page <= 1000:
        raise InvalidInput(f"_count must be between 1 and {MAX_COUNT}, _page between 1 and 1000")
    stmt = select(AuditEvent).order_by(AuditEvent.seq.desc())
    if patient_id is not None:
        stmt = stmt.join(AuditEventPatient, AuditEventPatient.seq == AuditEvent.seq).where(
            AuditEventPatient.patient_id == patient_id
        )
    if since is not None:
        stmt = stmt.where(AuditEvent.recorded_at >= since)
    if kind is not None:
        stmt = stmt.where(AuditEvent.kind == kind)
    with runtime.session_factory() as session:
        rows = list(session.scalars(stmt.offset((page - 1) * count).limit(count + 1)))
        events = [to_fhir(e) for e in rows[:count]]
    _record(runtime, actor, Outcome.SUCCESS, query, "security officer")
    return events, len(rows) > count


def own_access_log(runtime: Runtime, *, actor: Actor, count: int = 50) -> list[AccessLogEntry]:
    """A patient's own access log (who opened my record, when, why)."""
    if actor.kind != ActorKind.PATIENT or actor.patient_id is None:
        _record(runtime, actor, Outcome.DENIED, "access-log", "not a patient account")
        raise Forbidden("the access log is read by the patient themself")
    # Up to the log's own bound: the portal groups events into accesses (a chart opened is several).
    if not 1 <= count <= MAX_LIMIT:
        raise InvalidInput(f"_count must be between 1 and {MAX_LIMIT}")
    with runtime.session_factory() as session:
        entries = access_log(session, patient_id=actor.patient_id, limit=count)
    _record(runtime, actor, Outcome.SUCCESS, "access-log", "own access log")
    return entries
