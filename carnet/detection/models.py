"""The exposure ledger: who saw which patient's identifying data, when, through what."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin


class Exposure(IdMixin, Base):
    __tablename__ = "exposures"

    actor_ref: Mapped[str] = mapped_column(String(80))
    patient_id: Mapped[uuid.UUID]
    channel: Mapped[str] = mapped_column(String(10))
    resource_type: Mapped[str] = mapped_column(String(40))
    at: Mapped[dt.datetime]
    audit_seq: Mapped[int | None]
    # The patient has no care relationship with the actor (as the gate decided).
    outside_care: Mapped[bool] = mapped_column(default=False)
    # Identifying fields that left, comma-separated, when the gate names them.
    fields: Mapped[str | None] = mapped_column(String(300))

    # Read by actor and time (detection, baselines, incident reports); never by patient alone
    # (migration 0013_readcpu dropped that index: a B-tree insert per exposure for no reader).
    __table_args__ = (Index("ix_exposures_actor_at", "actor_ref", "at"),)


class CanaryPatient(IdMixin, Base):
    """A honeytoken patient: looks like any other, and no one has a reason to open it."""

    __tablename__ = "canary_patients"

    patient_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("patients.id"), unique=True)
    facility_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("facilities.id"), index=True)
    created_at: Mapped[dt.datetime]


class DetectionEvent(IdMixin, Base):
    """A counted event that is not an exposure: a search, a denial, a refused step-up."""

    __tablename__ = "detection_events"

    actor_ref: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(20))
    # A digest or a resource type: never a search value.
    key: Mapped[str] = mapped_column(String(80))
    at: Mapped[dt.datetime]

    __table_args__ = (Index("ix_detection_events_actor_at", "actor_ref", "at"),)


class ActorState(Base):
    """Whether an actor (account or API client) is contained. Every worker reads this row."""

    __tablename__ = "detection_actor_states"

    actor_ref: Mapped[str] = mapped_column(String(80), primary_key=True)
    account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    status: Mapped[str] = mapped_column(String(12))  # active, contained
    reason: Mapped[str | None] = mapped_column(String(1000))
    contained_at: Mapped[dt.datetime | None]
    # Windows restart here: what was counted before a restore does not contain again.
    restored_at: Mapped[dt.datetime | None]


class Alert(IdMixin, Base):
    """What a security officer reads: which rule, how severe, and why in one sentence."""

    __tablename__ = "detection_alerts"

    actor_ref: Mapped[str] = mapped_column(String(80))
    account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    username: Mapped[str] = mapped_column(String(150))
    rule: Mapped[str] = mapped_column(String(30))
    level: Mapped[int]
    sentence: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(16))  # open, acknowledged, false_positive
    created_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime]
    occurrences: Mapped[int] = mapped_column(default=1)
    handled_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    handled_at: Mapped[dt.datetime | None]
    note: Mapped[str | None] = mapped_column(String(500))

    __table_args__ = (
        Index("ix_detection_alerts_status_created", "status", "created_at"),
        Index("ix_detection_alerts_actor_rule", "actor_ref", "rule"),
    )


class ExposureBaseline(Base):
    """Usual distinct-patient counts of an account (`account:<id>`) or a role (`role:<name>`)."""

    __tablename__ = "detection_baselines"

    subject: Mapped[str] = mapped_column(String(80), primary_key=True)
    m15: Mapped[int]
    h1: Mapped[int]
    h24: Mapped[int]
    off_hours_share: Mapped[float]
    computed_at: Mapped[dt.datetime]


class ActorAddress(Base):
    """Network addresses an actor has used: a new one is worth noting."""

    __tablename__ = "detection_addresses"

    actor_ref: Mapped[str] = mapped_column(String(80), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen_at: Mapped[dt.datetime]


class RestoreRequest(IdMixin, Base):
    """Restoring a contained account takes two security officers: one asks, another approves."""

    __tablename__ = "detection_restore_requests"

    actor_ref: Mapped[str] = mapped_column(String(80), index=True)
    account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    requested_by: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"))
    requested_at: Mapped[dt.datetime]
    reason: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(12))  # pending, approved, rejected
    decided_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    decided_at: Mapped[dt.datetime | None]
