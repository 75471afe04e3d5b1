from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin
from carnet.patients.models import VersionedMixin


class ClinicalNote(IdMixin, VersionedMixin, Base):
    __tablename__ = "clinical_notes"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("encounters.id"))
    author_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("practitioners.id"))
    kind: Mapped[str] = mapped_column(String(40))  # LOINC document type code
    title: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="current")  # current, entered-in-error


class NoteVersion(IdMixin, Base):
    """Each text of a note; an amendment adds a version, never overwrites one."""

    __tablename__ = "note_versions"

    note_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("clinical_notes.id"), index=True)
    version: Mapped[int]
    text_ct: Mapped[bytes] = mapped_column(LargeBinary)
    author_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("practitioners.id"))
    recorded_at: Mapped[dt.datetime]
    amendment_reason: Mapped[str | None] = mapped_column(String(500))


class Allergy(IdMixin, VersionedMixin, Base):
    __tablename__ = "allergies"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    substance_code: Mapped[str] = mapped_column(String(40))  # ATC code of the substance class
    substance_display: Mapped[str] = mapped_column(String(200))
    criticality: Mapped[str] = mapped_column(String(20))  # low, high, unable-to-assess
    reaction_ct: Mapped[bytes | None] = mapped_column(LargeBinary)  # what happened, encrypted
    clinical_status: Mapped[str] = mapped_column(String(20), default="active")
    recorded_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("practitioners.id"))
    # The FHIR resource as received (JSON, encrypted): what a read returns; None when written
    # through the web UI or seeded, then rendered from the columns.
    received_ct: Mapped[bytes | None] = mapped_column(LargeBinary)


class Condition(IdMixin, VersionedMixin, Base):
    __tablename__ = "conditions"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    code: Mapped[str] = mapped_column(String(20))  # ICD-10
    display: Mapped[str] = mapped_column(String(200))
    clinical_status: Mapped[str] = mapped_column(String(20), default="active")
    # FHIR verificationStatus: confirmed, provisional, differential, unconfirmed, refuted, or
    # entered-in-error (a problem recorded by mistake: kept and readable, never deleted).
    verification_status: Mapped[str] = mapped_column(String(20), default="confirmed")
    onset_at: Mapped[dt.datetime | None]
    recorded_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("practitioners.id"))
    # The FHIR resource as received (JSON, encrypted): what a read returns; None when written
    # through the web UI or seeded, then rendered from the columns.
    received_ct: Mapped[bytes | None] = mapped_column(LargeBinary)


class ServiceRequest(IdMixin, VersionedMixin, Base):
    """A lab order (FHIR ServiceRequest): what a physician asked the laboratory to test. Its
    placer number (ORC-2/OBR-2 in HL7 v2) is how the lab's results find it again."""

    __tablename__ = "service_requests"
    __table_args__ = (UniqueConstraint("facility_id", "placer_number", name="uq_service_requests_placer"),)

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    encounter_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("encounters.id"))
    # None for another system's order (imported): its resource names its requester and numbers.
    requester_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("practitioners.id"))
    placer_number: Mapped[str | None] = mapped_column(String(40))
    category: Mapped[str] = mapped_column(String(20), default="laboratory")
    code: Mapped[str] = mapped_column(String(20))  # LOINC test or panel
    display: Mapped[str] = mapped_column(String(200))
    priority: Mapped[str] = mapped_column(String(10), default="routine")  # routine, urgent, asap, stat
    # active (ordered, results awaited or partial), completed (final results), revoked,
    # entered-in-error: FHIR request-status.
    status: Mapped[str] = mapped_column(String(20), default="active")
    authored_at: Mapped[dt.datetime]
    note_ct: Mapped[bytes | None] = mapped_column(LargeBinary)  # the clinical question, encrypted
    # The FHIR ServiceRequest as received (JSON, encrypted), imported from another system.
    received_ct: Mapped[bytes | None] = mapped_column(LargeBinary)


class DiagnosticReport(IdMixin, VersionedMixin, Base):
    __tablename__ = "diagnostic_reports"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    code: Mapped[str] = mapped_column(String(20))  # LOINC panel
    display: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    issued_at: Mapped[dt.datetime]
    conclusion_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    performer_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("practitioners.id"))
    # The FHIR resource as received (JSON, encrypted): what a read returns; None when written
    # through the web UI or seeded, then rendered from the columns.
    received_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The order it answers (FHIR basedOn), when there is one.
    order_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("service_requests.id"), index=True)


class Observation(IdMixin, VersionedMixin, Base):
    __tablename__ = "observations"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"))
    encounter_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("encounters.id"))
    report_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("diagnostic_reports.id"))
    category: Mapped[str] = mapped_column(String(20))  # vital-signs, laboratory
    code: Mapped[str] = mapped_column(String(20))  # LOINC
    display: Mapped[str] = mapped_column(String(200))
    value_number: Mapped[float | None]
    unit: Mapped[str | None] = mapped_column(String(20))
    value_text: Mapped[str | None] = mapped_column(String(200))
    effective_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(String(20), default="final")
    performer_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("practitioners.id"))
    # The FHIR resource as received (JSON, encrypted): what a read returns; None when written
    # through the web UI or seeded, then rendered from the columns.
    received_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The order it answers (FHIR basedOn); the laboratory's reference range as printed (OBX-7,
    # e.g. "3.5-5.0") and its abnormal flag (OBX-8, HL7 table 0078 = FHIR v2-0078 codes).
    order_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("service_requests.id"))
    reference_range: Mapped[str | None] = mapped_column(String(60))
    interpretation: Mapped[str | None] = mapped_column(String(10))

    __table_args__ = (Index("ix_observations_patient_effective", "patient_id", "effective_at"),)
