"""Audit events, hash-chained in lanes. Each lane's head row serialises the appends in that lane."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, ForeignKey, Integer, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base

SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class AuditEvent(Base):
    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(SEQ_TYPE, primary_key=True, autoincrement=False)
    recorded_at: Mapped[dt.datetime]
    kind: Mapped[str] = mapped_column(String(60), index=True)
    outcome: Mapped[str] = mapped_column(String(10))
    actor_ref: Mapped[str] = mapped_column(String(80), index=True)
    actor_kind: Mapped[str] = mapped_column(String(10))
    account_id: Mapped[uuid.UUID | None]
    username: Mapped[str] = mapped_column(String(150))
    roles: Mapped[str] = mapped_column(String(200))
    session_id: Mapped[uuid.UUID | None]
    client_id: Mapped[str | None] = mapped_column(String(100))
    address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))
    purpose_of_use: Mapped[str] = mapped_column(String(12))
    resource_type: Mapped[str | None] = mapped_column(String(40))
    resource_ids: Mapped[str] = mapped_column(Text)  # JSON list
    patient_ids: Mapped[str] = mapped_column(Text)  # JSON list
    query: Mapped[str | None] = mapped_column(String(500))
    policy_reason: Mapped[str | None] = mapped_column(String(500))
    break_glass_reason: Mapped[str | None] = mapped_column(String(1000))
    detail: Mapped[str] = mapped_column(Text)  # JSON object
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # The lane (chain) the event belongs to: prev_hash is the hash of the previous event in it.
    lane: Mapped[int] = mapped_column(SmallInteger, server_default="1")
    # The seq of the previous event in the same lane (NULL for a lane's first event and for
    # events older than lanes). Not covered by the hash: it only tells verify where a gap is.
    prev_seq: Mapped[int | None] = mapped_column(SEQ_TYPE)


class AuditEventPatient(Base):
    """One row per (event, patient): the patient's access log and breach reports use it."""

    __tablename__ = "audit_event_patients"

    seq: Mapped[int] = mapped_column(SEQ_TYPE, ForeignKey("audit_events.seq"), primary_key=True)
    patient_id: Mapped[uuid.UUID] = mapped_column(primary_key=True, index=True)


class AuditChainHead(Base):
    """One row per lane (id = lane, 1..LANES): the seq and hash of the lane's last event (0 and
    the genesis hash while it has none). Its row lock orders the appends in that lane."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(SEQ_TYPE)
    hash: Mapped[str] = mapped_column(String(64))
