"""`carnet audit export`: audit events as JSON lines for a SIEM.

Patients appear only as pseudonymous ids. Free text that staff typed (a break-the-glass reason,
detail values) can name a patient, so it stays in carnet: the SIEM gets flags and keys instead.
A patient acting in the portal is likewise named by account id only, never by username.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, select

from carnet.access.actor import ActorKind, PurposeOfUse
from carnet.audit.models import AuditEvent
from carnet.kernel.errors import InvalidInput

# 2: each event's lane and prev_seq, so a SIEM can re-verify the chain lane by lane
# (prev_hash is the hash of the previous event in the same lane).
EXPORT_FORMAT = "carnet-audit-siem/2"


def parse_moment(value: str, *, name: str) -> dt.datetime:
    """An ISO 8601 date or date-time; naive means UTC."""
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"{name} is not an ISO 8601 date or date-time: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def export_events(engine: Engine, *, since: dt.datetime, until: dt.datetime | None = None) -> Iterator[str]:
    """One JSON line per event recorded in [since, until), oldest first."""
    if until is not None and until <= since:
        raise InvalidInput("--until must be later than --since")
    stmt = select(AuditEvent.__table__).where(AuditEvent.recorded_at >= since).order_by(AuditEvent.seq)
    if until is not None:
        stmt = stmt.where(AuditEvent.recorded_at < until)
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=2000).execute(stmt)
        for row in result.mappings():
            yield json.dumps(siem_record(row), separators=(",", ":"), ensure_ascii=False)


def siem_record(row: Any) -> dict[str, Any]:
    detail = json.loads(row["detail"] or "{}")
    is_patient = row["actor_kind"] == ActorKind.PATIENT.value
    return {
        "format": EXPORT_FORMAT,
        "seq": row["seq"],
        "time": row["recorded_at"].isoformat(timespec="microseconds"),
        "kind": row["kind"],
        "outcome": row["outcome"],
        "actor": {
            "ref": row["actor_ref"],
            "kind": row["actor_kind"],
            "account_id": str(row["account_id"]) if row["account_id"] else None,
            "username": None if is_patient else row["username"],
            "roles": [r for r in row["roles"].split(",") if r],
            "session_id": str(row["session_id"]) if row["session_id"] else None,
            "client_id": row["client_id"],
            "address": row["address"],
            "user_agent": row["user_agent"],
        },
        "purpose_of_use": row["purpose_of_use"],
        "break_glass": row["purpose_of_use"] == PurposeOfUse.EMERGENCY.value
        or row["break_glass_reason"] is not None,
        "resource_type": row["resource_type"],
        "resource_ids": json.loads(row["resource_ids"] or "[]"),
        "patient_ids": json.loads(row["patient_ids"] or "[]"),
        "query": row["query"],
        "policy_reason": row["policy_reason"],
        "detail_keys": sorted(detail),
        "lane": row["lane"],
        "prev_seq": row["prev_seq"],
        "prev_hash": row["prev_hash"],
        "hash": row["hash"],
    }
