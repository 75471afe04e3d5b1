"""An interface's registration, its message log and its links to carnet's records.

No patient data in clear here: the log keeps control ids, types, statuses, reasons written by
carnet and carnet's own (pseudonymous) ids; a sender's identifiers (its patient, visit and order
numbers) are kept only as keyed digests (the blind-index key), to find the record again.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from carnet.db.base import Base, IdMixin


class Interface(IdMixin, Base):
    """A registered sending system: who it is (MSH-3/MSH-4), where it connects from, what it
    may send and how much. It acts through its own account (kind `interface`, role interface)."""

    __tablename__ = "interfaces"

    name: Mapped[str] = mapped_column(String(60), unique=True)  # the sender's MSH-3
    sending_facility: Mapped[str] = mapped_column(String(60))  # its MSH-4
    facility_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("facilities.id"), index=True)
    account_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("accounts.id"), unique=True)
    message_types: Mapped[str] = mapped_column(String(300))  # space separated, e.g. "ADT^A01 ORU^R01"
    source_addresses: Mapped[str] = mapped_column(Text, default="")  # space separated networks
    client_cert_sha256: Mapped[str | None] = mapped_column(String(64))  # TLS client certificate
    per_minute: Mapped[int] = mapped_column(Integer)  # the registered volume
    timezone: Mapped[str] = mapped_column(String(60), default="Europe/Paris")  # of naive HL7 times
    status: Mapped[str] = mapped_column(String(12), default="active")
    created_at: Mapped[dt.datetime]


class InterfaceMessage(IdMixin, Base):
    """One message received: accepted (AA), rejected (AE/AR) with carnet's reason, or a replay."""

    __tablename__ = "interface_messages"
    __table_args__ = (
        # Idempotency: one accepted (or rejected) message per control id and interface.
        UniqueConstraint("interface_id", "control_id", name="uq_interface_messages_control"),
        Index("ix_interface_messages_received", "interface_id", "received_at"),
    )

    interface_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("interfaces.id"))
    control_id: Mapped[str] = mapped_column(String(40))  # MSH-10
    digest: Mapped[str] = mapped_column(String(64))  # keyed digest of the whole message (replays)
    message_type: Mapped[str] = mapped_column(String(20))  # MSH-9, e.g. ADT^A01
    received_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(String(10))  # accepted, rejected
    ack_code: Mapped[str] = mapped_column(String(2))  # AA, AE, AR
    reason: Mapped[str | None] = mapped_column(String(500))
    patient_ids: Mapped[str] = mapped_column(Text, default="")  # carnet ids, space separated
    replays: Mapped[int] = mapped_column(Integer, default=0)


class InterfaceLink(IdMixin, Base):
    """A sender's identifier (patient number, visit number, order and result) and the carnet
    record it names, per facility."""

    __tablename__ = "interface_links"
    __table_args__ = (UniqueConstraint("facility_id", "kind", "key_digest", name="uq_interface_links_key"),)

    facility_id: Mapped[uuid.UUID] = mapped_column(Uuid(), ForeignKey("facilities.id"))
    kind: Mapped[str] = mapped_column(String(12))  # patient, visit, report, result
    key_digest: Mapped[str] = mapped_column(String(64))  # keyed digest of the sender's identifier
    target_id: Mapped[uuid.UUID] = mapped_column(Uuid())
    # A result's reference range and abnormal flags (OBX-7, OBX-8), kept as sent.
    reference_range: Mapped[str | None] = mapped_column(String(60))
    abnormal_flags: Mapped[str | None] = mapped_column(String(20))
