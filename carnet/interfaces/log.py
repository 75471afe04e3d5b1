"""The message log as integration staff read it: per interface, by control id or status; ids
and carnet's reasons only, no patient data."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.interfaces.models import Interface, InterfaceMessage
from carnet.kernel.errors import Forbidden, InvalidInput, NotFound
from carnet.runtime import Runtime

LOG_LIMIT = 500


@dataclass(frozen=True)
class LogLine:
    received_at: dt.datetime
    control_id: str
    message_type: str
    status: str
    ack_code: str
    reason: str | None
    patient_ids: list[str]
    replays: int


def search_log(
    session: Session,
    *,
    interface: str,
    control_id: str | None = None,
    status: str | None = None,
    limit: int = 50,
) -> list[LogLine]:
    if status not in (None, "accepted", "rejected"):
        raise InvalidInput("status is accepted or rejected")
    if not 1 <= limit <= LOG_LIMIT:
        raise InvalidInput(f"limit is 1 to {LOG_LIMIT}")
    interface_id = session.scalar(select(Interface.id).where(Interface.name == interface))
    if interface_id is None:
        raise NotFound("no interface with this name")
    query = select(InterfaceMessage).where(InterfaceMessage.interface_id == interface_id)
    if control_id:
        query = query.where(InterfaceMessage.control_id == control_id.strip())
    if status:
        query = query.where(InterfaceMessage.status == status)
    rows = session.scalars(query.order_by(InterfaceMessage.received_at.desc()).limit(limit))
    return [
        LogLine(
            received_at=r.received_at,
            control_id=r.control_id,
            message_type=r.message_type,
            status=r.status,
            ack_code=r.ack_code,
            reason=r.reason,
            patient_ids=r.patient_ids.split(),
            replays=r.replays,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class LogPage:
    interfaces: list[str]
    interface: str | None
    lines: list[LogLine]


def read_log(
    runtime: Runtime,
    *,
    actor: Actor,
    interface: str | None,
    control_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> LogPage:
    """The message log for integration staff: refused (and audited) to anyone else; the reading
    itself is audited, with what was looked for (the interface, a control id), never a result."""
    query = f"interface={(interface or '')[:60]};control_id={(control_id or '')[:40]};status={status or ''}"
    if Role.INTEGRATION not in actor.roles or actor.account_id is None:
        with runtime.session_factory.begin() as session:
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.INTERFACE_LOG_READ,
                    outcome=Outcome.DENIED,
                    actor=actor,
                    resource_type="InterfaceMessage",
                    query=query,
                    policy_reason="only integration staff read the interfaces' message log",
                ),
            )
        raise Forbidden("only integration staff read the interfaces' message log")
    with runtime.session_factory.begin() as session:
        names = list(session.scalars(select(Interface.name).order_by(Interface.name)))
        chosen = interface if interface in names else (names[0] if names else None)
        lines = (
            search_log(session, interface=chosen, control_id=control_id, status=status or None, limit=limit)
            if chosen
            else []
        )
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.INTERFACE_LOG_READ,
                outcome=Outcome.SUCCESS,
                actor=actor,
                resource_type="InterfaceMessage",
                query=query,
            ),
        )
    return LogPage(interfaces=names, interface=chosen, lines=lines)
