"""Containment: suspend the account, revoke its sessions and tokens, alert, audit — at once.

Containment runs in its own transaction, after the offending request's transaction has rolled
back (its data is never returned), so it survives that rollback. The database row is the truth
for every worker; a Redis flag, when configured, makes the refusal immediate everywhere even
before that transaction commits.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.detection.interfaces import Finding, Level, Rule
from carnet.detection.models import ActorState, Alert
from carnet.identity.models import AccessToken, Account, ApiClient, RefreshToken

log = logging.getLogger("carnet.detection")

CONTAINED = "contained"
ACTIVE = "active"


class ContainmentFlags(Protocol):
    """A fast, shared 'this actor is contained' flag (the database row stays the truth)."""

    def set(self, actor_ref: str, reason: str) -> None: ...

    def get(self, actor_ref: str) -> str | None: ...

    def clear(self, actor_ref: str) -> None: ...


class MemoryContainmentFlags:
    """This process only: enough for one worker, and a fallback when a write failed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flags: dict[str, str] = {}

    def set(self, actor_ref: str, reason: str) -> None:
        with self._lock:
            self._flags[actor_ref] = reason

    def get(self, actor_ref: str) -> str | None:
        return self._flags.get(actor_ref)  # one dict read: atomic, no lock needed

    def clear(self, actor_ref: str) -> None:
        with self._lock:
            self._flags.pop(actor_ref, None)


class RedisContainmentFlags:
    def __init__(self, client: Any, *, prefix: str = "carnet:det") -> None:
        self._redis = client
        self._prefix = prefix

    @property
    def client(self) -> Any:
        return self._redis

    def key(self, actor_ref: str) -> str:
        return f"{self._prefix}:contained:{actor_ref}"

    _key = key

    def set(self, actor_ref: str, reason: str) -> None:
        self._redis.set(self._key(actor_ref), reason.encode())

    def get(self, actor_ref: str) -> str | None:
        value = self._redis.get(self._key(actor_ref))
        return None if value is None else bytes(value).decode()

    def clear(self, actor_ref: str) -> None:
        self._redis.delete(self._key(actor_ref))


def contained_message(reason: str, contact: str) -> str:
    return (
        f"This account is suspended by carnet's exfiltration detection: {reason} "
        f"Its sessions and tokens are revoked. To restore it, call {contact}."
    )


def state_of(session: Session, actor_ref: str) -> ActorState | None:
    return session.get(ActorState, actor_ref)


def contain(
    session: Session,
    *,
    actor: Actor,
    findings: list[Finding],
    audit: AuditWriter,
    at: dt.datetime,
) -> str:
    """Contain `actor` in the caller's (dedicated) transaction. Returns the plain reason."""
    reason = " ".join(f.sentence for f in findings if f.level is Level.CONTAIN)[:1000]
    state = session.get(ActorState, actor.actor_ref, with_for_update=True)
    if state is None:
        state = ActorState(actor_ref=actor.actor_ref, account_id=actor.account_id, status=ACTIVE)
        session.add(state)
    already = state.status == CONTAINED
    state.status = CONTAINED
    state.reason = reason
    state.contained_at = at
    sessions_revoked = tokens_revoked = 0
    if actor.account_id is not None:
        session.execute(
            update(Account)
            .where(Account.id == actor.account_id)
            .values(status="suspended", status_reason=("contained by detection: " + reason)[:500])
        )
        sessions_revoked = _revoke_sessions(session, actor=actor, audit=audit, at=at)
        # The apps acting for this person stop too: their access and refresh tokens end.
        tokens_revoked = session.execute(
            update(AccessToken)
            .where(AccessToken.account_id == actor.account_id, AccessToken.revoked_at.is_(None))
            .values(revoked_at=at)
        ).rowcount  # type: ignore[attr-defined]
        session.execute(
            update(RefreshToken)
            .where(RefreshToken.account_id == actor.account_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=at)
        )
    if actor.client_id is not None and actor.account_id is None:
        # A client acting for itself is suspended; an app acting for a person is not (the
        # person is contained above, and the app keeps serving everyone else).
        client_pk = session.scalar(select(ApiClient.id).where(ApiClient.client_id == actor.client_id))
        if client_pk is not None:
            session.execute(update(ApiClient).where(ApiClient.id == client_pk).values(status="suspended"))
            tokens_revoked = session.execute(
                update(AccessToken)
                .where(AccessToken.client_pk == client_pk, AccessToken.revoked_at.is_(None))
                .values(revoked_at=at)
            ).rowcount  # type: ignore[attr-defined]
    for finding in findings:
        raise_alert(session, actor=actor, finding=finding, at=at)
    if not already:
        audit.append(
            session,
            AuditRecord(
                kind=AuditKind.CONTAINMENT,
                outcome=Outcome.SUCCESS,
                actor=actor,
                resource_type="Account" if actor.account_id else "Client",
                resource_ids=(str(actor.account_id or actor.client_id or actor.username),),
                policy_reason=reason[:500],
                detail={
                    "by": "detection",
                    "rules": ",".join(sorted({f.rule.value for f in findings if f.level is Level.CONTAIN})),
                    "sessions_revoked": str(sessions_revoked),
                    "tokens_revoked": str(tokens_revoked),
                },
            ),
        )
    return reason


def _revoke_sessions(session: Session, *, actor: Actor, audit: AuditWriter, at: dt.datetime) -> int:
    """Every session of the account, through identity's own revocation (audited there)."""
    from carnet.identity.sessions import revoke

    assert actor.account_id is not None
    return revoke(
        session,
        account_id=actor.account_id,
        session_id=None,
        reason="contained by exfiltration detection",
        actor=actor,
        audit=audit,
    )


def raise_alert(
    session: Session, *, actor: Actor, finding: Finding, at: dt.datetime, merge_hours: int = 24
) -> tuple[Alert, bool]:
    """Open an alert, or update the open one of the same rule for this actor (no alert storms).
    Returns the alert and whether it is new."""
    since = at - dt.timedelta(hours=merge_hours)
    alert = session.scalars(
        select(Alert)
        .where(
            Alert.actor_ref == actor.actor_ref,
            Alert.rule == finding.rule.value,
            Alert.status == "open",
            Alert.last_seen_at >= since,
        )
        .order_by(Alert.last_seen_at.desc())
        .limit(1)
    ).first()
    if alert is not None:
        alert.occurrences += 1
        alert.last_seen_at = at
        if finding.level >= alert.level:
            alert.level = int(finding.level)
            alert.sentence = finding.sentence[:1000]
        return alert, False
    alert = Alert(
        id=uuid.uuid4(),
        actor_ref=actor.actor_ref,
        account_id=actor.account_id,
        username=actor.username[:150],
        rule=finding.rule.value,
        level=int(finding.level),
        sentence=finding.sentence[:1000],
        status="open",
        created_at=at,
        last_seen_at=at,
        occurrences=1,
    )
    session.add(alert)
    if finding.level >= Level.STEP_UP or finding.rule is Rule.CANARY:
        log.warning(
            "detection alert: %s %s level=%s", actor.actor_ref, finding.rule.value, finding.level.name
        )
    return alert, True
