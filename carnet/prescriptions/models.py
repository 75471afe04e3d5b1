from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin
from carnet.patients.models import VersionedMixin


class Prescription(IdMixin, VersionedMixin, Base):
    __tablename__ = "prescriptions"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    # None for a prescription imported from another system: its resource names the prescriber.
    prescriber_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("practitioners.id"), index=True)
    encounter_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("encounters.id"))
    medication_code: Mapped[str] = mapped_column(String(40))  # CIP / ATC
    medication_display: Mapped[str] = mapped_column(String(200))
    substance_code: Mapped[str] = mapped_column(String(40))  # ATC class, matched against allergies
    dosage_text: Mapped[str] = mapped_column(String(500))
    # FHIR MedicationRequest.status: active, stopped, completed, entered-in-error
    status: Mapped[str] = mapped_column(String(20))
    authored_at: Mapped[dt.datetime]
    valid_until: Mapped[dt.datetime | None]
    renewed_from_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("prescriptions.id"))
    stop_reason: Mapped[str | None] = mapped_column(String(500))
    # Set when the prescriber confirmed despite a recorded allergy to the substance.
    allergy_override_reason: Mapped[str | None] = mapped_column(String(500))
    # The FHIR MedicationRequest as received (JSON, encrypted), imported from another system.
    received_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
