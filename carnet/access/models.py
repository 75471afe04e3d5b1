from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin


class RoleGrant(IdMixin, Base):
    """An account holds a role at a facility. Patient-data roles need a second approver."""

    __tablename__ = "role_grants"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    role: Mapped[str] = mapped_column(String(30))
    facility_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("facilities.id"))
    status: Mapped[str] = mapped_column(String(12))  # pending, active, rejected, revoked
    requested_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    requested_at: Mapped[dt.datetime]
    approved_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    decided_at: Mapped[dt.datetime | None]
    reason: Mapped[str | None] = mapped_column(String(500))

    __table_args__ = (Index("ix_role_grants_account_status", "account_id", "status"),)
