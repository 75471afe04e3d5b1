"""The message log as integration staff read it: per interface, by control id or status; ids
and carnet's reasons only, no patient data."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.interfaces.models import Interface, InterfaceMessage
from carnet.kernel.errors import InvalidInput, NotFound

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
