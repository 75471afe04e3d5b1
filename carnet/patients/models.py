"""Patient tables. Identifying fields are ciphertexts (`*_ct`) with keyed blind indexes (`*_bi`).

Only carnet.phi may import this module (import-linter contract in pyproject.toml).
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin


class VersionedMixin:
    version_id: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class Patient(IdMixin, VersionedMixin, Base):
    __tablename__ = "patients"

    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"), index=True)
    ins_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    ins_bi: Mapped[bytes | None] = mapped_column(LargeBinary(16), index=True)
    family_ct: Mapped[bytes] = mapped_column(LargeBinary)
    family_bi: Mapped[bytes] = mapped_column(LargeBinary(16))
    given_ct: Mapped[bytes] = mapped_column(LargeBinary)
    given_bi: Mapped[bytes] = mapped_column(LargeBinary(16), index=True)
    birth_date_ct: Mapped[bytes] = mapped_column(LargeBinary)
    birth_date_bi: Mapped[bytes] = mapped_column(LargeBinary(16), index=True)
    gender: Mapped[str] = mapped_column(String(10))  # FHIR administrative gender
    address_ct: Mapped[bytes | None] = mapped_column(LargeBinary)  # JSON, encrypted as a whole
    phone_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    phone_bi: Mapped[bytes | None] = mapped_column(LargeBinary(16), index=True)
    email_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    email_bi: Mapped[bytes | None] = mapped_column(LargeBinary(16), index=True)
    designated_physician_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("practitioners.id"), index=True
    )
    # The patient opposes access from facilities other than the managing one (honoured everywhere).
    opposes_other_facilities: Mapped[bool] = mapped_column(default=False)
    active: Mapped[bool] = mapped_column(default=True)
    # Set when this record was merged into another (a duplicate of the same person).
    merged_into_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("patients.id"))
    # The FHIR Patient as received (JSON, encrypted): what a reader of every field gets; None
    # when registered in carnet's own forms. Follows the amendments carnet makes (received.py).
    received_ct: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (
        Index("ix_patients_family_birth", "family_bi", "birth_date_bi"),
        # So a kept record finds the duplicates it replaces. Partial: merged records are rare,
        # and an index of every NULL tempted PostgreSQL, on stale statistics after a bulk load,
        # to answer "merged_into_id IS NULL" (every search) from it: 81 ms instead of 13 ms.
        Index(
            "ix_patients_merged_into_id",
            "merged_into_id",
            postgresql_where=text("merged_into_id IS NOT NULL"),
            sqlite_where=text("merged_into_id IS NOT NULL"),
        ),
    )


class PatientNameKey(Base):
    """A keyed prefix blind index of one word of a patient's family or given name
    (carnet.crypto.blind: BlindIndexer.name_prefix_keys): a name search finds its candidates
    here and decrypts only them. Kept in step with the patient's names by every writer."""

    __tablename__ = "patient_name_keys"

    key: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    # Row-level security scopes it by facility, as the patient row it indexes.
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))

    __table_args__ = (Index("ix_patient_name_keys_patient", "patient_id"),)


class CareRelationship(IdMixin, Base):
    """Why a practitioner may see a patient: care team membership, referral, designated physician."""

    __tablename__ = "care_relationships"

    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    practitioner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("practitioners.id"))
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # care_team, referral
    start_at: Mapped[dt.datetime]
    end_at: Mapped[dt.datetime | None]
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))

    # A practitioner's care list (practitioner_id alone, the leading column) and one patient's
    # relationship to them (both: the guarded read's first pipeline), whatever the planner's
    # statistics (migration 0013_readcpu; it was practitioner_id alone).
    __table_args__ = (Index("ix_care_relationships_practitioner_patient", "practitioner_id", "patient_id"),)


class ResourceVersion(IdMixin, Base):
    """Every version of every patient-data resource, encrypted: amend, never overwrite."""

    __tablename__ = "resource_versions"

    resource_type: Mapped[str] = mapped_column(String(40))
    resource_id: Mapped[uuid.UUID]
    version_id: Mapped[int]
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    recorded_at: Mapped[dt.datetime]
    author_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    action: Mapped[str] = mapped_column(String(10))  # create, update, delete
    snapshot_ct: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (
        Index("ix_resource_versions_resource", "resource_type", "resource_id", "version_id", unique=True),
    )


class Consent(IdMixin, VersionedMixin, Base):
    """A patient's privacy decision (FHIR Consent), kept when withdrawn.

    One kind today, `oppose-other-facilities`: while one is active the patient's
    `opposes_other_facilities` flag is set, and the policy hides them from every facility but the
    managing one. Withdrawing it (status inactive) clears the flag when no other is active.
    """

    __tablename__ = "consents"

    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), index=True)
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(12))  # active, inactive
    recorded_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    recorded_at: Mapped[dt.datetime]
    withdrawn_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"))
    withdrawn_at: Mapped[dt.datetime | None]


class ExportFile(IdMixin, Base):
    """An asynchronous bulk export (FHIR Bulk Data kick-off) of one approved export request:
    its NDJSON output, encrypted, downloaded once by the requester, then erased."""

    __tablename__ = "export_files"

    export_request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("export_requests.id"), unique=True)
    # Who started it and alone may poll and download: a staff account, or an API client.
    account_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    client_id: Mapped[str | None] = mapped_column(String(100))
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    # pending (a kick-off waiting for its request's approval), running, completed, then
    # downloaded, expired or cancelled; or failed
    status: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[dt.datetime]
    completed_at: Mapped[dt.datetime | None]
    downloaded_at: Mapped[dt.datetime | None]
    patient_count: Mapped[int | None]
    failure: Mapped[str | None] = mapped_column(String(200))  # why it failed (never data)
    ndjson_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    # A Bulk Data kick-off's `_since` (patients changed since then) and its URL, for the manifest.
    since: Mapped[dt.datetime | None]
    request_url: Mapped[str | None] = mapped_column(String(500))
    # A multi-type Bulk Data job: JSON {type: lines} of the files not yet downloaded (`ndjson_ct`
    # then holds JSON {type: ndjson}); None for carnet's own single-file export.
    outputs: Mapped[str | None] = mapped_column(String(2000))
