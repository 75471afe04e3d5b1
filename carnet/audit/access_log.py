"""The patient's access log: who looked at my record, when, what, and why.

It is patient data (it says who treats whom), so only the gate calls it, for the patient
themself or a security officer. It reads the audit trail and offers no way to change it: staff
cannot hide their own entries; only the audited retention purge ever removes events.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.access.actor import ActorKind, PurposeOfUse
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent, AuditEventPatient
from carnet.identity.models import Account
from carnet.kernel.errors import InvalidInput

MAX_LIMIT = 500

# What the patient reads, in plain words, per kind of event.
ACTIONS: dict[str, str] = {
    AuditKind.PHI_READ: "opened your record",
    AuditKind.PHI_SEARCH: "found you in a search",
    AuditKind.PHI_LIST: "saw you in a list",
    AuditKind.PHI_HISTORY: "viewed the history of your record",
    AuditKind.PHI_CREATE: "added to your record",
    AuditKind.PHI_UPDATE: "changed your record",
    AuditKind.PHI_DELETE: "removed something from your record",
    AuditKind.PHI_MERGE: "merged a duplicate record of yours into one",
    AuditKind.PHI_UNMERGE: "separated two records merged by mistake",
    AuditKind.PHI_EXPORT: "exported your record",
    AuditKind.PHI_PRINT: "printed a document of your record",
    AuditKind.PHI_SYSTEM_ACCESS: "processed your record (system task)",
    AuditKind.BREAK_GLASS_START: "started an emergency access to your record",
}


@dataclass(frozen=True)
class AccessLogEntry:
    seq: int
    at: dt.datetime
    who: str  # display name (the account's, at the time of reading)
    roles: tuple[str, ...]
    actor_kind: str
    kind: str
    action: str
    resource_type: str | None
    outcome: str
    purpose_of_use: str
    break_glass: bool
    break_glass_reason: str | None
    account_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None


def access_log(
    session: Session, *, patient_id: uuid.UUID, since: dt.datetime | None = None, limit: int = 100
) -> list[AccessLogEntry]:
    """Newest first. `limit` is bounded: a log is read page by page, never dumped."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    stmt = (
        select(AuditEvent, Account.display_name)
        .join(AuditEventPatient, AuditEventPatient.seq == AuditEvent.seq)
        .outerjoin(Account, Account.id == AuditEvent.account_id)
        .where(AuditEventPatient.patient_id == patient_id)
        .order_by(AuditEvent.seq.desc())
        .limit(limit)
    )
    if since is not None:
        stmt = stmt.where(AuditEvent.recorded_at >= since)
    return [_entry(event, display_name) for event, display_name in session.execute(stmt)]


def _entry(event: AuditEvent, display_name: str | None) -> AccessLogEntry:
    break_glass = (
        event.purpose_of_use == PurposeOfUse.EMERGENCY.value
        or event.kind == AuditKind.BREAK_GLASS_START.value
        or event.break_glass_reason is not None
    )
    return AccessLogEntry(
        seq=event.seq,
        at=event.recorded_at,
        who=display_name or _fallback_name(event),
        roles=tuple(r for r in event.roles.split(",") if r),
        actor_kind=event.actor_kind,
        kind=event.kind,
        action=ACTIONS.get(event.kind, event.kind),
        resource_type=event.resource_type,
        outcome=event.outcome,
        purpose_of_use=event.purpose_of_use,
        break_glass=break_glass,
        break_glass_reason=event.break_glass_reason,
        account_id=event.account_id,
        session_id=event.session_id,
    )


def _fallback_name(event: AuditEvent) -> str:
    if event.actor_kind == ActorKind.SYSTEM.value:
        return "carnet (automatic processing)"
    if event.actor_kind == ActorKind.CLIENT.value and event.client_id:
        return f"application {event.client_id}"
    return event.username


# One opening of a chart reads each of its sections through the gate, one audit event each: the
# patient sees them as one access. Events of one person, one session, one purpose and one kind
# of action, none of another's in between and within this window, are one access.
VISIT_WINDOW = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class AccessVisit:
    """One access as the patient reads it: who, in which role, why, when, what they saw."""

    at: dt.datetime  # when it began
    last_at: dt.datetime
    who: str
    roles: tuple[str, ...]
    actor_kind: str
    kind: str
    action: str
    resource_types: tuple[str, ...]  # what was seen or changed, in the order first met
    events: int  # audit events behind this row (each verifiable in the chain)
    outcome: str
    purpose_of_use: str
    break_glass: bool
    break_glass_reason: str | None
    own: bool  # the patient's own views (the portal), labelled as theirs


def _visit_key(e: AccessLogEntry) -> tuple[object, ...]:
    return (e.account_id, e.who, e.session_id, e.action, e.purpose_of_use, e.break_glass, e.outcome)


def group_visits(
    entries: list[AccessLogEntry], *, own_account_id: uuid.UUID | None, limit: int = 100
) -> list[AccessVisit]:
    """Newest first, as `access_log` returns them: one row per access, at most `limit` rows."""
    visits: list[AccessVisit] = []
    group: list[AccessLogEntry] = []

    def close() -> None:
        newest, oldest = group[0], group[-1]
        types: list[str] = []
        for e in reversed(group):
            if e.resource_type and e.resource_type not in types:
                types.append(e.resource_type)
        visits.append(
            AccessVisit(
                at=oldest.at,
                last_at=newest.at,
                who=newest.who,
                roles=newest.roles,
                actor_kind=newest.actor_kind,
                kind=newest.kind,
                action=newest.action,
                resource_types=tuple(types),
                events=len(group),
                outcome=newest.outcome,
                purpose_of_use=newest.purpose_of_use,
                break_glass=any(e.break_glass for e in group),
                break_glass_reason=next((e.break_glass_reason for e in group if e.break_glass_reason), None),
                own=own_account_id is not None
                and newest.account_id == own_account_id
                and newest.actor_kind == ActorKind.PATIENT.value,
            )
        )
        group.clear()

    for entry in entries:
        if group and (_visit_key(entry) != _visit_key(group[0]) or group[0].at - entry.at > VISIT_WINDOW):
            close()
            if len(visits) >= limit:
                return visits
        group.append(entry)
    if group and len(visits) < limit:
        close()
    return visits
