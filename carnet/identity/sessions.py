"""Server-side sessions. The `auth_sessions` table is the truth, read on every request, so a
revocation written by any worker cuts the session on every worker at the next request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.identity.models import Account, AuthSession
from carnet.identity.service import record_event, roles_of
from carnet.kernel import clock

IDLE_PRIVILEGED = dt.timedelta(minutes=15)
IDLE_DEFAULT = dt.timedelta(minutes=60)
ABSOLUTE = dt.timedelta(hours=12)
# last_seen_at is written at most this often: fewer writes, idle timeout exact to a minute.
TOUCH_EVERY = dt.timedelta(seconds=60)
STEP_UP_FRESHNESS = dt.timedelta(minutes=5)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedSession:
    """What the client receives once: the tokens themselves are never stored."""

    session_id: uuid.UUID
    token: str
    csrf_token: str
    enrollment_only: bool


def roles_fingerprint(roles: frozenset[str]) -> str:
    return ",".join(sorted(str(r) for r in roles))[:300]


def idle_timeout(privileged: bool) -> dt.timedelta:
    return IDLE_PRIVILEGED if privileged else IDLE_DEFAULT


def open_session(
    session: Session,
    *,
    account_id: uuid.UUID,
    privileged: bool,
    second_factor_method: str | None,
    enrollment_only: bool = False,
    roles: frozenset[str] | None = None,
    address: str | None,
    user_agent: str | None,
) -> IssuedSession:
    """A new session with a new random id (never one the client proposed: no fixation).

    `roles` are those the account holds now (read from its grants when not given).
    """
    if roles is None:
        account = session.get_one(Account, account_id)
        roles = frozenset(r.value for r in roles_of(session, account=account))
    now = clock.now()
    token = secrets.token_urlsafe(32)
    csrf_token = secrets.token_urlsafe(32)
    row = AuthSession(
        token_digest=digest(token),
        csrf_digest=digest(csrf_token),
        account_id=account_id,
        created_at=now,
        last_seen_at=now,
        idle_timeout_seconds=int(idle_timeout(privileged).total_seconds()),
        absolute_expires_at=now + ABSOLUTE,
        second_factor_at=now if second_factor_method else None,
        second_factor_method=second_factor_method,
        enrollment_only=enrollment_only,
        roles_at_login=roles_fingerprint(roles),
        address=address,
        user_agent=(user_agent or "")[:300] or None,
    )
    session.add(row)
    session.flush()
    return IssuedSession(
        session_id=row.id, token=token, csrf_token=csrf_token, enrollment_only=enrollment_only
    )


def is_live(row: AuthSession, *, privileged: bool | None = None) -> bool:
    """False when revoked, idle too long or past 12 h.

    `privileged` is the account's standing now: privileged roles get the shorter idle timeout.
    """
    if row.revoked_at is not None:
        return False
    now = clock.now()
    idle = dt.timedelta(seconds=row.idle_timeout_seconds)
    if privileged is not None:
        idle = min(idle, idle_timeout(privileged))
    return now < row.absolute_expires_at and now - row.last_seen_at < idle


def find_live(session: Session, *, token: str, privileged: bool | None = None) -> AuthSession | None:
    """The live session for a cookie token, or None (unknown, revoked, idle or past 12 h)."""
    row = session.scalar(select(AuthSession).where(AuthSession.token_digest == digest(token)))
    return row if row is not None and is_live(row, privileged=privileged) else None


def touch_due(row: AuthSession) -> bool:
    return clock.now() - row.last_seen_at >= TOUCH_EVERY


def touch(session: Session, row: AuthSession) -> None:
    """Record that the session was used now (for the idle timeout), at most once a minute."""
    now = clock.now()
    if now - row.last_seen_at >= TOUCH_EVERY:
        session.execute(
            update(AuthSession)
            .where(AuthSession.id == row.id, AuthSession.last_seen_at < now)
            .values(last_seen_at=now)
        )
        row.last_seen_at = now


def csrf_matches(row: AuthSession, presented: str | None) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(row.csrf_digest, digest(presented))


def mark_second_factor(session: Session, *, session_id: uuid.UUID, method: str) -> dt.datetime:
    now = clock.now()
    session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id)
        .values(second_factor_at=now, second_factor_method=method)
    )
    return now


def revoke(
    session: Session,
    *,
    account_id: uuid.UUID,
    session_id: uuid.UUID | None,
    reason: str,
    actor: Actor,
    audit: AuditWriter,
) -> int:
    """Revoke one session of an account, or all of them (session_id None); returns how many.

    Audited in the caller's transaction and added to the account's security history.
    """
    now = clock.now()
    query = (
        update(AuthSession)
        .where(AuthSession.account_id == account_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason[:200])
    )
    if session_id is not None:
        query = query.where(AuthSession.id == session_id)
    count = session.execute(query).rowcount  # type: ignore[attr-defined]
    if count:
        audit.append(
            session,
            AuditRecord(
                kind=AuditKind.SESSION_REVOKED,
                outcome=Outcome.SUCCESS,
                actor=actor,
                resource_type="Account",
                resource_ids=(str(account_id),),
                detail={
                    "reason": reason[:200],
                    "sessions": str(count),
                    "scope": "one" if session_id else "all",
                },
            ),
        )
        record_event(
            session,
            account_id=account_id,
            kind=AuditKind.SESSION_REVOKED,
            address=actor.address,
            user_agent=actor.user_agent,
            detail=f"{count} session(s): {reason}"[:300],
        )
    return int(count)


def list_live(session: Session, *, account_id: uuid.UUID) -> list[AuthSession]:
    now = clock.now()
    rows = session.scalars(
        select(AuthSession)
        .where(
            AuthSession.account_id == account_id,
            AuthSession.revoked_at.is_(None),
            AuthSession.absolute_expires_at > now,
        )
        .order_by(AuthSession.created_at.desc())
    ).all()
    return [r for r in rows if now - r.last_seen_at < dt.timedelta(seconds=r.idle_timeout_seconds)]
