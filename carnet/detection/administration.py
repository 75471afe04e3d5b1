"""Detection watches administration itself: accounts opened, roles requested and approved,
restores, export approvals, API clients registered and setting changes, per actor and per
installation, against their own baselines.

Every such action is audited, so detection reads it where it is written: `WatchedAuditWriter`
wraps the audit writer and hands each successful access-widening event to the ledger, in the
action's own transaction. A burst is an alert; twice the alert level contains the actors
involved and the accounts they opened or granted in the last day. The action that crosses the
containment level is refused (the containment raises inside its transaction, which rolls back).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.access.actor import Actor, ActorKind
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.audit.models import AuditEvent
from carnet.detection.config import DetectionConfig
from carnet.detection.interfaces import Finding, Level, Rule
from carnet.detection.models import RestoreRequest

if TYPE_CHECKING:
    from carnet.detection.ledger import SqlExposureLedger

INSTALLATION = "installation"
H1 = dt.timedelta(hours=1)
H24 = dt.timedelta(hours=24)

# What each watched audit kind is, in words, for the alert.
WATCHED: dict[AuditKind, str] = {
    AuditKind.ACCOUNT_CREATED: "account opened",
    AuditKind.ROLE_GRANT_REQUESTED: "role requested",
    AuditKind.ROLE_GRANT_APPROVED: "role approved",
    AuditKind.RESTORE_REQUESTED: "restore requested",
    AuditKind.ACCOUNT_RESTORED: "restore approved",
    AuditKind.PHI_EXPORT_APPROVED: "export approved",
    AuditKind.API_CLIENT_REGISTERED: "API client registered",
    AuditKind.BREAK_GLASS_REVIEWED: "break-glass reviewed",
    AuditKind.SETTING_CHANGED: "setting changed",
}


@dataclass(frozen=True)
class AdminCounts:
    actor_1h: int
    actor_24h: int
    installation_1h: int
    installation_24h: int


@dataclass(frozen=True)
class AdminBaseline:
    """The usual p95 of watched actions per active hour and day (0: no history)."""

    h1: int = 0
    h24: int = 0


class WatchedAuditWriter:
    """The audit writer, with every successful access-widening event shown to detection."""

    def __init__(self, inner: AuditWriter, ledger: SqlExposureLedger) -> None:
        self.inner = inner
        self.ledger = ledger

    def append(self, session: Session, record: AuditRecord) -> int:
        seq = self.inner.append(session, record)
        self.watch(session, record)
        return seq

    def watch(self, session: Session, record: AuditRecord) -> None:
        """Show `record`, just appended in `session`, to detection if it widens access."""
        widened = bool(record.resource_ids) or "account_id" in record.detail  # an act on someone
        watched = record.outcome is Outcome.SUCCESS and record.kind in WATCHED and widened
        if watched and record.actor.kind is ActorKind.STAFF:
            self.ledger.note_administration(session, record)


def subject_of(record: AuditRecord) -> str:
    """Whom the action widens access for: the account opened or granted a role (so opening an
    account and asking its first role, one act, count once), else what it acted on."""
    if record.kind is AuditKind.ACCOUNT_CREATED and record.resource_ids:
        return f"account:{record.resource_ids[0]}"
    if "account_id" in record.detail:
        return f"account:{record.detail['account_id']}"
    if record.kind is AuditKind.ACCOUNT_RESTORED and len(record.resource_ids) >= 2:
        return record.resource_ids[1]
    return f"{record.kind.value}:{','.join(record.resource_ids)[:200]}"


def event_key(record: AuditRecord) -> str:
    """Distinct per subject (the same act audited twice counts once)."""
    return hashlib.sha256(subject_of(record).encode()).hexdigest()[:32]


def installation_key(record: AuditRecord) -> str:
    """The installation's key names the actor, so a burst can name everyone involved."""
    return f"{record.actor.actor_ref}|{hashlib.sha256(event_key(record).encode()).hexdigest()[:12]}"[:80]


def actors_in(keys: Sequence[str]) -> list[str]:
    return sorted({k.partition("|")[0] for k in keys})


def thresholds(config: DetectionConfig, floor: int, usual: int) -> tuple[float, float]:
    alert = max(float(floor), config.baseline_factor * usual)
    return alert, alert * config.admin_contain_factor


def judge(
    config: DetectionConfig,
    *,
    actor: Actor,
    what: str,
    counts: AdminCounts,
    actor_usual: AdminBaseline,
    installation_usual: AdminBaseline,
    repeated_restore: bool,
) -> tuple[Finding, bool] | None:
    """The finding for this action, and whether it concerns the whole installation's burst."""
    who = actor.username
    if repeated_restore:
        return (
            Finding(
                Rule.ADMINISTRATION,
                Level.CONTAIN,
                f"{who} took part in restoring an account that was already restored within "
                f"{config.restore_repeat_days} days and contained again: a restore loop.",
            ),
            False,
        )
    worst: tuple[Level, float, str, bool] | None = None
    checks = (
        (counts.actor_1h, config.admin_alert_1h, actor_usual.h1, "in the last hour", False),
        (counts.actor_24h, config.admin_alert_24h, actor_usual.h24, "in the last 24 hours", False),
        (
            counts.installation_1h,
            config.installation_admin_alert_1h,
            installation_usual.h1,
            "in the last hour",
            True,
        ),
        (
            counts.installation_24h,
            config.installation_admin_alert_24h,
            installation_usual.h24,
            "in the last 24 hours",
            True,
        ),
    )
    for seen, floor, usual, words, everyone in checks:
        alert, contain_at = thresholds(config, floor, usual)
        if seen < alert:
            continue
        level = Level.CONTAIN if seen >= contain_at else Level.RECORD
        usual_words = f" (usually about {usual})" if usual else ""
        subject = "the installation's administrators" if everyone else who
        sentence = (
            f"{subject} made {seen} access-widening changes (accounts opened, roles requested or "
            f"approved, restores, approvals) {words}{usual_words}, the last by {who}: {what}; "
            f"an alert from {int(alert)}, containment from {int(contain_at)}."
        )
        ratio = seen / alert
        if worst is None or (level, ratio) > (worst[0], worst[1]):
            worst = (level, ratio, sentence, everyone)
    if worst is None:
        return None
    return Finding(Rule.ADMINISTRATION, worst[0], worst[2]), worst[3]


def repeated_restore(session: Session, *, record: AuditRecord, at: dt.datetime, days: int) -> list[uuid.UUID]:
    """For an approved restore: the officers of every approved restore of the same actor within
    `days` when there are two or more (the loop's accomplices), else nothing."""
    if record.kind is not AuditKind.ACCOUNT_RESTORED or len(record.resource_ids) < 2:
        return []
    restored = record.resource_ids[1]
    rows = session.execute(
        select(RestoreRequest.requested_by, RestoreRequest.decided_by).where(
            RestoreRequest.actor_ref == restored,
            RestoreRequest.status == "approved",
            RestoreRequest.decided_at >= at - dt.timedelta(days=days),
        )
    ).all()
    if len(rows) < 2:
        return []
    return sorted({officer for row in rows for officer in row if officer is not None})


def opened_or_granted(session: Session, *, actor_refs: Sequence[str], since: dt.datetime) -> list[uuid.UUID]:
    """Accounts these actors opened, or asked or approved a role for, since `since`: what a
    burst produced, contained with the actors who made it."""
    kinds = [
        AuditKind.ACCOUNT_CREATED.value,
        AuditKind.ROLE_GRANT_REQUESTED.value,
        AuditKind.ROLE_GRANT_APPROVED.value,
    ]
    found: set[uuid.UUID] = set()
    rows = session.execute(
        select(AuditEvent.kind, AuditEvent.resource_ids, AuditEvent.detail).where(
            AuditEvent.actor_ref.in_(list(actor_refs)),
            AuditEvent.kind.in_(kinds),
            AuditEvent.outcome == Outcome.SUCCESS.value,
            AuditEvent.recorded_at >= since,
        )
    )
    for kind, resource_ids, detail in rows:
        candidates = []
        if kind == AuditKind.ACCOUNT_CREATED.value:
            candidates = list(json.loads(resource_ids or "[]"))[:1]
        else:
            candidates = [json.loads(detail or "{}").get("account_id", "")]
        for value in candidates:
            try:
                found.add(uuid.UUID(str(value)))
            except ValueError:
                continue
    return sorted(found)


def opened_by_staff(session: Session, *, account_id: uuid.UUID) -> bool:
    """Whether an administrator opened this account (an audited creation by a staff actor),
    rather than the seed or an import: only those are new staff on probation."""
    found = session.scalar(
        select(AuditEvent.seq)
        .where(
            AuditEvent.kind == AuditKind.ACCOUNT_CREATED.value,
            AuditEvent.actor_kind == ActorKind.STAFF.value,
            AuditEvent.outcome == Outcome.SUCCESS.value,
            AuditEvent.resource_ids.contains(str(account_id)),
        )
        .limit(1)
    )
    return found is not None
