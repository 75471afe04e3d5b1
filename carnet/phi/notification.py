"""Contact details of patients who must be told of a breach (GDPR art. 34), through the elevated
door: the caller's SystemAccess audited the reason; this adds which patients were decrypted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.patients.models import Patient
from carnet.phi.system import SystemAccess

_CHUNK = 500


@dataclass(frozen=True)
class NotificationContact:
    patient_id: uuid.UUID
    family: str | None
    given: str | None
    birth_date: str | None
    address: str | None
    phone: str | None
    email: str | None


def notification_contacts(
    access: SystemAccess, *, patient_ids: Sequence[uuid.UUID], purpose: str
) -> dict[uuid.UUID, NotificationContact]:
    """Decrypt the identity and contact of each patient; unknown ids are simply absent."""
    wanted = sorted(set(patient_ids))
    contacts: dict[uuid.UUID, NotificationContact] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        for patient in access.session.scalars(select(Patient).where(Patient.id.in_(chunk))):

            def dec(blob: bytes | None, column: str, row: uuid.UUID = patient.id) -> str | None:
                return access.keyring.decrypt(blob, table="patients", column=column, row_id=row)

            contacts[patient.id] = NotificationContact(
                patient_id=patient.id,
                family=dec(patient.family_ct, "family"),
                given=dec(patient.given_ct, "given"),
                birth_date=dec(patient.birth_date_ct, "birth_date"),
                address=_one_line(dec(patient.address_ct, "address")),
                phone=dec(patient.phone_ct, "phone"),
                email=dec(patient.email_ct, "email"),
            )
    access.audit.append(
        access.session,
        AuditRecord(
            kind=AuditKind.PHI_READ,
            outcome=Outcome.SUCCESS,
            actor=access.actor,
            resource_type="Patient",
            patient_ids=sorted(contacts),
            detail={"purpose": purpose[:300], "fields": "name,birth_date,address,phone,email"},
        ),
    )
    return contacts


def _one_line(address: str | None) -> str | None:
    """Addresses are stored as FHIR-like JSON; a letter needs one line."""
    if address is None:
        return None
    try:
        value = json.loads(address)
    except ValueError:
        return address
    if not isinstance(value, dict):
        return address
    parts: list[str] = []
    for key in ("line", "postalCode", "city", "country"):
        item = value.get(key)
        if isinstance(item, list):
            parts.extend(str(x) for x in _flat(item) if x)
        elif item:
            parts.append(str(item))
    return ", ".join(parts) or address


def _flat(items: list[object]) -> list[object]:
    out: list[object] = []
    for item in items:
        out.extend(_flat(item) if isinstance(item, list) else [item])
    return out
