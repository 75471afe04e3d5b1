from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin


class Facility(IdMixin, Base):
    __tablename__ = "facilities"

    name: Mapped[str] = mapped_column(String(200))
    finess: Mapped[str] = mapped_column(String(9), unique=True)  # French national facility number
    city: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(default=True)


class Location(IdMixin, Base):
    __tablename__ = "locations"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))  # ward, room, bed, clinic
    active: Mapped[bool] = mapped_column(default=True)
    # What it is part of: a bed of a room (or of a ward), a room of a ward (FHIR Location.partOf).
    part_of_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("locations.id"), index=True)


class Practitioner(IdMixin, Base):
    __tablename__ = "practitioners"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"), index=True)
    rpps: Mapped[str] = mapped_column(String(11), unique=True)  # national practitioner identifier
    family: Mapped[str] = mapped_column(String(100))
    given: Mapped[str] = mapped_column(String(100))
    profession: Mapped[str] = mapped_column(String(40))  # physician, nurse
    specialty: Mapped[str | None] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(default=True)


class DirectoryEntry(IdMixin, Base):
    """A Practitioner, PractitionerRole, Organization or Location of another system, as an
    import received it (FHIR JSON), when carnet's own directory did not match its identifier:
    what the imported records reference. No patient data."""

    __tablename__ = "directory_entries"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    resource_type: Mapped[str] = mapped_column(String(40))
    identifier_system: Mapped[str | None] = mapped_column(String(200))
    identifier_value: Mapped[str | None] = mapped_column(String(100))
    resource: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime]

    __table_args__ = (
        Index(
            "ix_directory_entries_identifier",
            "facility_id",
            "resource_type",
            "identifier_system",
            "identifier_value",
        ),
    )
