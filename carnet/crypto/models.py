"""Wrapped data-encryption keys. The key-encryption key never enters the database."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin


class DataKey(IdMixin, Base):
    __tablename__ = "crypto_data_keys"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"), index=True)
    version: Mapped[int]
    kek_id: Mapped[str] = mapped_column(String(64))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime]
