from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin
from carnet.patients.models import VersionedMixin


class Appointment(IdMixin, VersionedMixin, Base):
    __tablename__ = "appointments"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    practitioner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("practitioners.id"))
    location_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("locations.id"))
    start_at: Mapped[dt.datetime]
    end_at: Mapped[dt.datetime]
    # FHIR Appointment.status: booked, arrived, fulfilled, cancelled, noshow, entered-in-error
    status: Mapped[str] = mapped_column(String(20))
    reason_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    cancel_reason: Mapped[str | None] = mapped_column(String(200))
    booked_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))

    __table_args__ = (
        Index("ix_appointments_practitioner_start", "practitioner_id", "start_at"),
        Index("ix_appointments_facility_start", "facility_id", "start_at"),
    )


class Encounter(IdMixin, VersionedMixin, Base):
    """A stay or visit. An in-progress inpatient stay gives its ward's nurses a care relationship."""

    __tablename__ = "encounters"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    kind: Mapped[str] = mapped_column(String(12))  # inpatient, outpatient, emergency
    status: Mapped[str] = mapped_column(String(20))  # planned, in-progress, finished, cancelled
    start_at: Mapped[dt.datetime]
    end_at: Mapped[dt.datetime | None]
    location_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("locations.id"), index=True)
    attending_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("practitioners.id"), index=True)
    # The FHIR Encounter as received (JSON, encrypted): what a read returns; None when the stay
    # was opened through carnet (admission), then rendered from the columns.
    received_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The bed of the stay (a Location of kind bed in its ward): None while it waits for one.
    # A finished stay keeps its last bed; only a stay in progress holds it (the index below).
    bed_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("locations.id"))
    # The beds the stay has been in, with their periods (JSON, carnet/records/beds.py): what a
    # transfer keeps of the bed before, as FHIR Encounter.location[] does. No patient data.
    bed_history: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_encounters_status_location", "status", "location_id"),
        # One bed, one stay in progress: two desks admitting to the same bed at once cannot
        # both commit (the domain refuses first with a clear message; this is the last word).
        Index(
            "uq_encounters_bed_in_progress",
            "bed_id",
            unique=True,
            sqlite_where=text("status = 'in-progress' AND bed_id IS NOT NULL"),
            postgresql_where=text("status = 'in-progress' AND bed_id IS NOT NULL"),
        ),
    )
