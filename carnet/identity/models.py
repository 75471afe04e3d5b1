"""Accounts. Second factors, sessions and API clients are added by carnet.identity."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin


class Account(IdMixin, Base):
    __tablename__ = "accounts"

    username: Mapped[str] = mapped_column(String(150), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))  # staff, patient
    facility_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("facilities.id"), index=True)
    # For patient accounts: the patient they are. A patient sees their own record only.
    patient_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("patients.id"), unique=True)
    # For staff who are practitioners: their Practitioner (the `fhirUser` of /auth/me).
    practitioner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("practitioners.id"), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(12), default="active")  # active, suspended, disabled
    status_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime]
    password_changed_at: Mapped[dt.datetime]
