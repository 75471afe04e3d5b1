"""The exposure ledger: who saw which patient's identifying data, when, through what."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, String
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

    __table_args__ = (
        Index("ix_exposures_actor_at", "actor_ref", "at"),
        Index("ix_exposures_patient", "patient_id"),
    )


class CanaryPatient(IdMixin, Base):
    """A honeytoken patient: looks like any other, and no one has a reason to open it."""

    __tablename__ = "canary_patients"

    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), unique=True)
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"), index=True)
    created_at: Mapped[dt.datetime]
