from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin


class RoleGrant(IdMixin, Base):
    """An account holds a role at a facility. Patient-data roles need a second approver."""

    __tablename__ = "role_grants"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    role: Mapped[str] = mapped_column(String(30))
    facility_id: Mapped[uuid.UUID | None] = mapped_column(Uuid(), ForeignKey("facilities.id"))
    status: Mapped[str] = mapped_column(String(12))  # pending, active, rejected, revoked
    requested_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    requested_at: Mapped[dt.datetime]
    approved_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    decided_at: Mapped[dt.datetime | None]
    reason: Mapped[str | None] = mapped_column(String(500))

    __table_args__ = (Index("ix_role_grants_account_status", "account_id", "status"),)


class WardAssignment(IdMixin, Base):
    """A nurse (by Practitioner) works a ward: the ward's current in-progress stays are in their care.

    Chosen over a per-patient list so a shift change is one row, not one row per patient.
    """

    __tablename__ = "ward_assignments"

    practitioner_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("practitioners.id"), index=True)
    location_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("locations.id"), index=True)
    facility_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("facilities.id"))
    start_at: Mapped[dt.datetime]
    end_at: Mapped[dt.datetime | None]


class BreakGlassAccess(IdMixin, Base):
    """One emergency access: one account, one patient, one hour. Listed for review.

    `alert_state` starts `pending`; carnet.detection raises the security officer alert and marks it.
    """

    __tablename__ = "break_glass_accesses"

    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id"), index=True)
    patient_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("patients.id"), index=True)
    facility_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("facilities.id"))
    reason_code: Mapped[str] = mapped_column(String(30))
    justification: Mapped[str] = mapped_column(String(1000))
    started_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]
    second_factor_at: Mapped[dt.datetime]
    audit_seq: Mapped[int | None]
    alert_state: Mapped[str] = mapped_column(String(12), default="pending")  # pending, alerted
    reviewed_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    reviewed_at: Mapped[dt.datetime | None]
    review_note: Mapped[str | None] = mapped_column(String(1000))

    __table_args__ = (Index("ix_break_glass_accesses_started", "started_at"),)


class ExportRequest(IdMixin, Base):
    """A bulk export asked for with a purpose, approved by a second person, usable once.

    Holds patient ids (for an explicit list) but no identifying data. `expires_at` bounds a
    pending request's wait, then an approved request's use.
    """

    __tablename__ = "export_requests"

    # The requester: a staff account, or (FHIR Bulk Data kick-off) a registered Backend Services
    # client acting for itself; exactly one of the two.
    requested_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    requested_by_client: Mapped[str | None] = mapped_column(String(100))
    facility_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("facilities.id"))
    purpose: Mapped[str] = mapped_column(String(1000))
    # True when the kick-off stated no purpose: the approver records it in the decision note.
    purpose_missing: Mapped[bool] = mapped_column(default=False)
    # The FHIR types asked for (space separated); None: Patient only (carnet's own operations).
    resource_types: Mapped[str | None] = mapped_column(String(500))
    scope: Mapped[str] = mapped_column(String(12))  # care, patients, facility
    patient_ids: Mapped[str | None] = mapped_column(String(40000))  # JSON list, scope "patients"
    status: Mapped[str] = mapped_column(String(12))  # pending, approved, rejected, expired, used
    requested_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    decided_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    decided_at: Mapped[dt.datetime | None]
    decision_note: Mapped[str | None] = mapped_column(String(1000))
    used_at: Mapped[dt.datetime | None]
    exported_count: Mapped[int | None]

    __table_args__ = (Index("ix_export_requests_status", "status"),)
