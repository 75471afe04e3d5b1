"""A patient record as the gate shows it: decrypted only for the fields opened, redacted."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import orjson
from sqlalchemy import select

from carnet.crypto.blind import IndexKind
from carnet.detection.interfaces import Channel
from carnet.patients.models import Patient
from carnet.phi.kernel import RT, GuardedTx
from carnet.phi.schemas import PatientView
from carnet.phi.steps import redact, sid


def patient_data(tx: GuardedTx, patient: Patient, fields: frozenset[str]) -> dict[str, Any]:
    """Decrypt only what the actor may see: what is not opened is not even decrypted."""
    # The row's loaded values as the ORM keeps them (each attribute read through its descriptor
    # is a Python call, 24 a read); one not loaded (expired, deferred) is read as usual.
    loaded = patient.__dict__
    row = {c: loaded[c] if c in loaded else getattr(patient, c) for c in _READ_COLUMNS}
    row_id = row["id"]
    data: dict[str, Any] = {
        "id": str(row_id),
        "updated_at": row["updated_at"],
        "facility_id": str(row["facility_id"]),
        "version_id": row["version_id"],
        "gender": row["gender"],
        "active": row["active"],
        "designated_physician_id": sid(row["designated_physician_id"]),
        "opposes_other_facilities": row["opposes_other_facilities"],
        "merged_into_id": sid(row["merged_into_id"]),
    }
    opened = [name for name in PATIENT_ENCRYPTED if name in fields]
    if opened:
        blobs = [
            (name, loaded[c] if (c := _CIPHER_COLUMNS[name]) in loaded else getattr(patient, c))
            for name in opened
        ]
        for name, plain in zip(opened, tx.dec_row("patients", row_id, blobs), strict=True):
            data[name] = address_view(plain) if name == "address" else plain
    if "received" in fields and patient.received_ct is not None:
        # Kept as received, for a reader of every field only (granted with all the others).
        kept = tx.dec(patient.received_ct, "patients", "received", row_id)
        data["received"] = None if kept is None else json.loads(kept)
    return data


def patient_view(tx: GuardedTx, patient: Patient, fields: frozenset[str]) -> PatientView:
    return redact(PatientView, patient_data(tx, patient, fields), fields)


def patient_columns(
    tx: GuardedTx, facility_id: uuid.UUID, patient_id: uuid.UUID, values: dict[str, Any]
) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for name, (column, kind) in PATIENT_ENCRYPTED.items():
        if name not in values:
            continue
        value = values[name]
        if isinstance(value, dt.date):
            value = value.isoformat()
        elif isinstance(value, dict):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        columns[column] = tx.enc(value, facility_id, "patients", name, patient_id)
        if kind is not None:
            columns[BI_COLUMNS[kind]] = tx.keyring.index(kind, value)
    return columns


def merged_into_this(tx: GuardedTx, patient_id: uuid.UUID) -> list[uuid.UUID]:
    """The records merged into this one, and those merged into them (at most 100)."""
    found: list[uuid.UUID] = []
    frontier = [patient_id]
    while frontier and len(found) < 100:
        frontier = [
            p
            for p in tx.session.scalars(
                select(Patient.id).where(Patient.merged_into_id.in_(frontier)).limit(100)
            )
            if p not in found and p != patient_id
        ]
        found.extend(frontier)
    return found[:100]


def with_replaces(tx: GuardedTx, patient: Patient, view: PatientView) -> PatientView:
    """The duplicates merged into this record (FHIR Patient.link type replaces), if shown."""
    if "replaces" not in view.visible:
        return view
    replaced = tx.session.scalars(
        select(Patient.id).where(Patient.merged_into_id == patient.id).order_by(Patient.id).limit(100)
    )
    return view.model_copy(update={"replaces": [str(r) for r in replaced] or None})


def written_patient(tx: GuardedTx, patient: Patient) -> PatientView:
    tx.relationships.clear()  # the write may have made (or ended) a relationship
    rels = tx.relationships_of([patient])
    fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.PATIENT)
    tx.expose([patient.id], Channel.WRITE, rels, fields)
    return patient_view(tx, patient, fields) if fields else PatientView(id=str(patient.id))


def address_view(stored: str | None) -> dict[str, str] | None:
    """A stored address (JSON, FHIR-shaped: `line` may be a list) as flat text fields.

    orjson reads the stored text in one call where `json.loads` makes ten; it is trusted only
    for an object of strings (then the same strings as json's), anything else it reads, or
    refuses, is read again by json as before (tests/phi/test_address_view.py)."""
    if stored is None:
        return None
    try:
        value = orjson.loads(stored)
    except (ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
        return _address_view(json.loads(stored))
    if type(value) is not dict:
        return _address_view(json.loads(stored))
    flat: dict[str, str] = {}
    for key, item in value.items():
        if type(item) is not str:
            return _address_view(json.loads(stored))
        if item:
            flat[key] = item
    return flat or None


def _address_view(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    flat: dict[str, str] = {}
    for key, item in value.items():
        text = ", ".join(str(x) for x in item if x) if isinstance(item, list) else str(item or "")
        if text:
            flat[str(key)] = text
    return flat or None


PATIENT_ENCRYPTED = {
    "ins": ("ins_ct", IndexKind.IDENTIFIER),
    "family": ("family_ct", IndexKind.FAMILY),
    "given": ("given_ct", IndexKind.GIVEN),
    "birth_date": ("birth_date_ct", IndexKind.BIRTH_DATE),
    "address": ("address_ct", None),
    "phone": ("phone_ct", IndexKind.PHONE),
    "email": ("email_ct", IndexKind.EMAIL),
}


# Each encrypted field's column.
_CIPHER_COLUMNS = {name: column for name, (column, _kind) in PATIENT_ENCRYPTED.items()}


BI_COLUMNS = {
    IndexKind.IDENTIFIER: "ins_bi",
    IndexKind.FAMILY: "family_bi",
    IndexKind.GIVEN: "given_bi",
    IndexKind.BIRTH_DATE: "birth_date_bi",
    IndexKind.PHONE: "phone_bi",
    IndexKind.EMAIL: "email_bi",
}


# The columns `patient_data` reads of every record (those of the fields opened besides).
_READ_COLUMNS = (
    "id",
    "updated_at",
    "facility_id",
    "version_id",
    "gender",
    "active",
    "designated_physician_id",
    "opposes_other_facilities",
    "merged_into_id",
)
