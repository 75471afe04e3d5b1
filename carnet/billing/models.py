from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin
from carnet.patients.models import VersionedMixin


class Invoice(IdMixin, VersionedMixin, Base):
    __tablename__ = "invoices"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"), index=True)
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("encounters.id"))
    number: Mapped[str] = mapped_column(String(30), unique=True)
    status: Mapped[str] = mapped_column(String(20))  # draft, issued, balanced, cancelled
    issued_at: Mapped[dt.datetime | None]
    total_cents: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    cancel_reason: Mapped[str | None] = mapped_column(String(200))  # kept when cancelled

    # The billing worklist: a facility's issued invoices, oldest first.
    __table_args__ = (Index("ix_invoices_worklist", "facility_id", "status", "issued_at"),)


class InvoiceLine(IdMixin, Base):
    __tablename__ = "invoice_lines"

    invoice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("invoices.id"), index=True)
    code: Mapped[str] = mapped_column(String(20))  # CCAM / NGAP act code
    description: Mapped[str] = mapped_column(String(200))
    amount_cents: Mapped[int]


class Payment(IdMixin, Base):
    __tablename__ = "payments"

    invoice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("invoices.id"), index=True)
    amount_cents: Mapped[int]
    method: Mapped[str] = mapped_column(String(20))  # card, cash, transfer, insurer
    received_at: Mapped[dt.datetime]
    received_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
