"""What the security console lists besides alerts: contained accounts, restores waiting for a
second officer, and the audit chain's status. Security officers only; every read is audited."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select

from carnet.access.actor import Actor
from carnet.audit.interfaces import AuditKind
from carnet.detection.containment import CONTAINED
from carnet.detection.models import ActorState, RestoreRequest
from carnet.detection.services import RestoreView, officer_transaction, record_officer_action
from carnet.identity.models import Account
from carnet.kernel.errors import ConfigurationError
from carnet.runtime import Runtime

LIST_LIMIT = 200


@dataclass(frozen=True)
class ContainedView:
    actor_ref: str
    username: str
    reason: str
    contained_at: dt.datetime | None
    restore_pending: RestoreView | None


@dataclass(frozen=True)
class ChainStatus:
    intact: bool
    events: int
    checkpoints: int
    unanchored: int
    last_checkpoint: str | None
    problems: list[str]


def list_contained(runtime: Runtime, *, officer: Actor) -> list[ContainedView]:
    """Contained actors, newest first, each with the restore request waiting on it (if any)."""
    with officer_transaction(runtime, officer=officer, kind=AuditKind.DETECTION_ALERTS_READ) as session:
        rows = session.execute(
            select(ActorState, Account.username)
            .outerjoin(Account, Account.id == ActorState.account_id)
            .where(ActorState.status == CONTAINED)
            .order_by(ActorState.contained_at.desc())
            .limit(LIST_LIMIT)
        ).all()
        pending = {
            r.actor_ref: RestoreView(r.id, r.actor_ref, r.status, r.reason, r.requested_at)
            for r in session.scalars(select(RestoreRequest).where(RestoreRequest.status == "pending"))
        }
        found = [
            ContainedView(
                actor_ref=state.actor_ref,
                username=username or state.actor_ref,
                reason=state.reason or "",
                contained_at=state.contained_at,
                restore_pending=pending.get(state.actor_ref),
            )
            for state, username in rows
        ]
        record_officer_action(
            runtime,
            session,
            officer=officer,
            kind=AuditKind.DETECTION_ALERTS_READ,
            resource_type="ActorState",
            resource_ids=tuple(c.actor_ref for c in found),
        )
        return found


def chain_status(runtime: Runtime, *, officer: Actor) -> ChainStatus:
    """Verify the audit chain against its signed checkpoints now (what `carnet audit verify` does)."""
    from carnet.audit.checkpoints import CheckpointVerifier, open_store, public_path
    from carnet.audit.verify import verify

    with officer_transaction(runtime, officer=officer, kind=AuditKind.AUDIT_VERIFIED):
        pass  # refuses (and audits) anyone but a security officer before the work starts
    settings = runtime.settings
    key_path = public_path(settings.resolved_signing_key_file)
    if not key_path.exists():
        key_path = settings.resolved_signing_key_file
    if not key_path.exists():
        raise ConfigurationError("no audit signing key: run `carnet audit init-key`")
    report = verify(runtime.engine, store=open_store(settings), verifier=CheckpointVerifier.load(key_path))
    status = ChainStatus(
        intact=report.ok,
        events=report.events,
        checkpoints=report.checkpoints,
        unanchored=report.unanchored,
        last_checkpoint=report.last_checkpoint.describe() if report.last_checkpoint else None,
        problems=[p.describe() for p in report.problems[:50]],
    )
    with runtime.session_factory.begin() as session:
        record_officer_action(
            runtime,
            session,
            officer=officer,
            kind=AuditKind.AUDIT_VERIFIED,
            resource_type="AuditChain",
            resource_ids=(),
            detail={"intact": str(status.intact), "events": str(status.events)},
        )
    return status
