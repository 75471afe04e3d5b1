from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin
from carnet.patients.models import VersionedMixin


class Intervention(IdMixin, VersionedMixin, Base):
    """An immunization, a procedure, a medication administered or a medication statement.

    The columns are what policy, search and listing need (type, code with its system, status,
    when); the FHIR resource itself is kept whole, encrypted (`received_ct`): a read returns it."""

    __tablename__ = "interventions"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"))
    # Immunization, Procedure, MedicationAdministration, MedicationStatement (FHIR R4 names).
    resource_type: Mapped[str] = mapped_column(String(40))
    code_system: Mapped[str | None] = mapped_column(String(200))
    code: Mapped[str | None] = mapped_column(String(40))
    display: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(30))
    occurred_at: Mapped[dt.datetime | None]
    encounter_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("encounters.id"))
    recorded_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("practitioners.id"))
    received_ct: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_interventions_patient_type", "patient_id", "resource_type"),)
