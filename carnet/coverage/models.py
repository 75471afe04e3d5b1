from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin
from carnet.patients.models import VersionedMixin


class Coverage(IdMixin, VersionedMixin, Base):
    __tablename__ = "coverages"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # AMO (statutory), AMC (complementary)
    payer: Mapped[str] = mapped_column(String(200))
    member_id_ct: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(20))  # active, cancelled
    period_start: Mapped[dt.datetime]
    period_end: Mapped[dt.datetime | None]
    # The FHIR Coverage as received (JSON, encrypted), imported from another system; None when
    # a health-card reading made it.
    received_ct: Mapped[bytes | None] = mapped_column(LargeBinary)


class CardReading(IdMixin, Base):
    """One reading of a health card (carte Vitale) at the front desk, kept forever."""

    __tablename__ = "card_readings"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    coverage_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("coverages.id"))
    read_at: Mapped[dt.datetime]
    read_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    card_serial_ct: Mapped[bytes] = mapped_column(LargeBinary)
    payload_ct: Mapped[bytes] = mapped_column(LargeBinary)  # the card's content as JSON
