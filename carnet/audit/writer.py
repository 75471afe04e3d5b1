"""Appends audit events to the hash chain in the caller's transaction.

Ordering across workers: every append first updates the single chain-head row. On PostgreSQL
that takes the row's lock until commit; on SQLite it takes the database write lock. So two
transactions can never read the same head and fork the chain, and a rolled-back transaction
leaves no gap (its head update rolls back with it).
"""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from carnet.audit.chain import GENESIS_HASH, link
from carnet.audit.interfaces import AuditRecord
from carnet.audit.models import AuditChainHead, AuditEvent, AuditEventPatient
from carnet.kernel import clock

HEAD_ID = 1


class SqlAuditWriter:
    """The audit trail in the application's own database (see carnet.audit.interfaces)."""

    def append(self, session: Session, record: AuditRecord) -> int:
        seq, prev_hash = self._advance_head(session)
        actor = record.actor
        recorded_at = clock.now().astimezone(dt.UTC)
        fields = {
            "seq": seq,
            "recorded_at": _utc_micro(recorded_at),
            "kind": record.kind.value,
            "outcome": record.outcome.value,
            "actor_ref": actor.actor_ref,
            "actor_kind": actor.kind.value,
            "account_id": str(actor.account_id) if actor.account_id else None,
            "username": actor.username,
            "roles": ",".join(sorted(r.value for r in actor.roles)),
            "session_id": str(actor.session_id) if actor.session_id else None,
            "client_id": actor.client_id,
            "address": actor.address,
            "user_agent": (actor.user_agent or "")[:300] or None,
            "purpose_of_use": actor.purpose_of_use.value,
            "resource_type": record.resource_type,
            "resource_ids": json.dumps(list(record.resource_ids)),
            "patient_ids": json.dumps(sorted({str(p) for p in record.patient_ids})),
            "query": (record.query or "")[:500] or None,
            "policy_reason": (record.policy_reason or "")[:500] or None,
            "break_glass_reason": (record.break_glass_reason or "")[:1000] or None,
            "detail": json.dumps(dict(sorted(record.detail.items())), ensure_ascii=False),
        }
        digest = link(prev_hash, fields)
        row = dict(fields)
        row["account_id"] = actor.account_id
        row["session_id"] = actor.session_id
        row["recorded_at"] = recorded_at
        session.execute(insert(AuditEvent).values(**row, prev_hash=prev_hash, hash=digest))
        patients = sorted(set(record.patient_ids))
        if patients:
            session.execute(insert(AuditEventPatient), [{"seq": seq, "patient_id": p} for p in patients])
        session.execute(update(AuditChainHead).where(AuditChainHead.id == HEAD_ID).values(hash=digest))
        return seq

    def _advance_head(self, session: Session) -> tuple[int, str]:
        for _ in range(3):
            result = session.execute(
                update(AuditChainHead)
                .where(AuditChainHead.id == HEAD_ID)
                .values(seq=AuditChainHead.seq + 1)
                .returning(AuditChainHead.seq, AuditChainHead.hash)
            ).first()
            if result is not None:
                return int(result[0]), str(result[1])
            try:
                with session.begin_nested():
                    session.add(AuditChainHead(id=HEAD_ID, seq=0, hash=GENESIS_HASH))
            except IntegrityError:
                continue  # another worker created it first
        raise RuntimeError("audit chain head could not be initialised")


def _utc_micro(moment: dt.datetime) -> str:
    """Microsecond UTC ISO text: what both databases store and give back unchanged."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def last_event(session: Session) -> AuditEvent | None:
    return session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(1)).first()
