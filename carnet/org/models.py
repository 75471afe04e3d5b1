from __future__ import annotations

import uuid

from sqlalchemy import ForeignKey, String
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
    kind: Mapped[str] = mapped_column(String(20))  # ward, room, clinic
    active: Mapped[bool] = mapped_column(default=True)


class Practitioner(IdMixin, Base):
    __tablename__ = "practitioners"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"), index=True)
    rpps: Mapped[str] = mapped_column(String(11), unique=True)  # national practitioner identifier
    family: Mapped[str] = mapped_column(String(100))
    given: Mapped[str] = mapped_column(String(100))
    profession: Mapped[str] = mapped_column(String(40))  # physician, nurse
    specialty: Mapped[str | None] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(default=True)
