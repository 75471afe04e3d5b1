"""Run an access-administration action in one transaction with its audit event.

A refusal or an error rolls the transaction back, then is audited in its own transaction:
even a failed attempt leaves a trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.access.context import AccessContext, resolve
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.kernel import clock
from carnet.kernel.errors import (
    AccountContained,
    AuthenticationRequired,
    CarnetError,
    Forbidden,
    NotFound,
    StepUpRequired,
)
from carnet.runtime import Runtime

T = TypeVar("T")

DENIALS = (Forbidden, NotFound, AuthenticationRequired, AccountContained, StepUpRequired)


def run_audited(
    runtime: Runtime,
    actor: Actor,
    kind: AuditKind,
    action: Callable[[Session, AccessContext], tuple[T, AuditRecord]],
    *,
    resource_type: str | None = None,
) -> T:
    try:
        with runtime.session_factory.begin() as session:
            ctx = resolve(session, actor, now=clock.now(), contact=runtime.settings.security_contact)
            result, record = action(session, ctx)
            runtime.audit.append(session, record)
        return result
    except DENIALS as exc:
        _audit_failure(runtime, actor, kind, Outcome.DENIED, exc, resource_type)
        raise
    except Exception as exc:
        _audit_failure(runtime, actor, kind, Outcome.ERROR, exc, resource_type)
        raise


def _audit_failure(
    runtime: Runtime,
    actor: Actor,
    kind: AuditKind,
    outcome: Outcome,
    exc: BaseException,
    resource_type: str | None,
) -> None:
    # Our own errors carry safe messages; anything else is reduced to its type name.
    reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, CarnetError) else type(exc).__name__
    with runtime.session_factory.begin() as session:
        runtime.audit.append(
            session,
            AuditRecord(
                kind=kind, outcome=outcome, actor=actor, resource_type=resource_type, policy_reason=reason
            ),
        )
