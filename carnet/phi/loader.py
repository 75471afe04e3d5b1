"""Bulk encrypted writes of seed and import data, through the one elevated door.

The caller hands plaintext rows per table; the loader encrypts each identifying field under the
row's facility key (bound to table, column and row id, as everywhere in carnet), computes the blind
indexes, and inserts in dependency order inside the caller's `SystemAccess` transaction, which
audited the access and its reason. Plaintext field names are the column names without `_ct`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from sqlalchemy import Table, insert

from carnet.billing.models import Invoice, InvoiceLine, Payment
from carnet.coverage.models import CardReading, Coverage
from carnet.crypto.blind import IndexKind
from carnet.crypto.keyring import Keyring
from carnet.db.base import Base
from carnet.detection.models import CanaryPatient
from carnet.interventions.models import Intervention
from carnet.kernel.errors import InvalidInput
from carnet.org.models import DirectoryEntry
from carnet.patients.models import CareRelationship, Consent, Patient, PatientNameKey, ResourceVersion
from carnet.patients.names import name_key_rows
from carnet.phi.system import SystemAccess
from carnet.prescriptions.models import Prescription
from carnet.records.models import (
    Allergy,
    ClinicalNote,
    Condition,
    DiagnosticReport,
    NoteVersion,
    Observation,
    ServiceRequest,
)
from carnet.scheduling.models import Appointment, Encounter


@dataclass(frozen=True)
class _Field:
    """One encrypted column: plaintext key `name` -> `<name>_ct` (+ `<name>_bi` when indexed)."""

    name: str
    index: IndexKind | None = None
    as_json: bool = False


@dataclass(frozen=True)
class _Table:
    model: type[Base]
    encrypted: tuple[_Field, ...] = ()
    # Keys the loader needs (the facility that owns the key) but the table does not have.
    transient: tuple[str, ...] = ()


# Insertion order follows the foreign keys.
TABLES: Mapping[str, _Table] = {
    # Another system's practitioners, roles, organizations, locations (no patient data).
    "directory_entries": _Table(DirectoryEntry),
    "patients": _Table(
        Patient,
        (
            _Field("ins", IndexKind.IDENTIFIER),
            _Field("family", IndexKind.FAMILY),
            _Field("given", IndexKind.GIVEN),
            _Field("birth_date", IndexKind.BIRTH_DATE),
            _Field("address", as_json=True),
            _Field("phone", IndexKind.PHONE),
            _Field("email", IndexKind.EMAIL),
            _Field("received", as_json=True),
        ),
    ),
    # Keyed prefixes of each patient's names, derived here from the plaintext (never passed in).
    "patient_name_keys": _Table(PatientNameKey),
    # Version 1 of each seeded patient, as the gate snapshots a registration (history starts here).
    "resource_versions": _Table(ResourceVersion, (_Field("snapshot", as_json=True),)),
    "canary_patients": _Table(CanaryPatient),
    "care_relationships": _Table(CareRelationship),
    "consents": _Table(Consent),
    "encounters": _Table(Encounter, (_Field("received", as_json=True),)),
    "appointments": _Table(Appointment, (_Field("reason"),)),
    "clinical_notes": _Table(ClinicalNote),
    "note_versions": _Table(NoteVersion, (_Field("text"),), transient=("facility_id",)),
    "allergies": _Table(Allergy, (_Field("received", as_json=True),)),
    "conditions": _Table(Condition, (_Field("received", as_json=True),)),
    # Another system's lab orders (imported: kept whole), before the results that name them.
    "service_requests": _Table(ServiceRequest, (_Field("received", as_json=True),)),
    "diagnostic_reports": _Table(DiagnosticReport, (_Field("conclusion"), _Field("received", as_json=True))),
    "observations": _Table(Observation, (_Field("received", as_json=True),)),
    "prescriptions": _Table(Prescription, (_Field("received", as_json=True),)),
    "interventions": _Table(Intervention, (_Field("received", as_json=True),)),
    "coverages": _Table(Coverage, (_Field("member_id"), _Field("received", as_json=True))),
    "card_readings": _Table(CardReading, (_Field("card_serial"), _Field("payload", as_json=True))),
    "invoices": _Table(Invoice),
    "invoice_lines": _Table(InvoiceLine, transient=("facility_id",)),
    "payments": _Table(Payment, transient=("facility_id",)),
}


@dataclass
class SeedBatch:
    """Plaintext rows per table name (a key of TABLES). Every row carries its `id`."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, table: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append(row)

    def count(self, table: str) -> int:
        return len(self.rows.get(table, ()))


def _encrypt_rows(
    keyring: Keyring, table: str, spec: _Table, rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    encrypt = keyring.encrypt
    index = keyring.index
    for row in rows:
        values = dict(row)
        facility_id = values["facility_id"]
        row_id = values["id"]
        for f in spec.encrypted:
            plain = values.pop(f.name, None)
            if plain is not None and f.as_json:
                plain = orjson.dumps(plain, option=orjson.OPT_SORT_KEYS).decode()
            values[f"{f.name}_ct"] = encrypt(
                plain, facility_id=facility_id, table=table, column=f.name, row_id=row_id
            )
            if f.index is not None:
                values[f"{f.name}_bi"] = index(f.index, plain)
        for name in spec.transient:
            values.pop(name, None)
        out.append(values)
    return out


@dataclass(frozen=True)
class PreparedBatch:
    """A batch with its identifying fields already encrypted: rows ready to insert, per table."""

    rows: dict[str, list[dict[str, Any]]]

    def count(self, table: str) -> int:
        return len(self.rows.get(table, ()))


def prepare_batch(keyring: Keyring, batch: SeedBatch) -> PreparedBatch:
    """Encrypt a batch (CPU only, no database): a seeder may do it while the previous batch is written."""
    unknown = set(batch.rows) - set(TABLES)
    if unknown:
        raise InvalidInput(f"the loader does not write {', '.join(sorted(unknown))}")
    if batch.rows.get("patient_name_keys"):
        raise InvalidInput("the loader derives patient_name_keys from the patients it writes")
    prepared: dict[str, list[dict[str, Any]]] = {}
    blind = keyring.blind
    name_keys = [
        key_row
        for p in batch.rows.get("patients", ())
        for key_row in name_key_rows(
            blind,
            patient_id=p["id"],
            facility_id=p["facility_id"],
            family=p.get("family"),
            given=p.get("given"),
        )
    ]
    for table, spec in TABLES.items():
        rows = name_keys if table == "patient_name_keys" else batch.rows.get(table)
        if rows:
            prepared[table] = (
                _encrypt_rows(keyring, table, spec, rows) if spec.encrypted or spec.transient else rows
            )
    return PreparedBatch(prepared)


def write_batch(access: SystemAccess, batch: PreparedBatch) -> dict[str, int]:
    """Insert a prepared batch in the open system transaction; returns rows per table."""
    counts: dict[str, int] = {}
    for table, spec in TABLES.items():
        rows = batch.rows.get(table)
        if not rows:
            continue
        # Core insert of the table: one executemany per table, no ORM unit-of-work per row.
        access.session.execute(insert(cast(Table, spec.model.__table__)), rows)
        counts[table] = len(rows)
    access.session.flush()
    return counts


def load_batch(access: SystemAccess, batch: SeedBatch) -> dict[str, int]:
    """Encrypt and insert one batch in the open system transaction; returns rows per table."""
    return write_batch(access, prepare_batch(access.keyring, batch))


def decrypt_field(keyring: Keyring, *, table: str, column: str, row_id: uuid.UUID, blob: bytes | None) -> Any:
    """Open one stored field the loader wrote (JSON fields come back as objects)."""
    text = keyring.decrypt(blob, table=table, column=column, row_id=row_id)
    spec = TABLES.get(table)
    if text is not None and spec is not None and any(f.name == column and f.as_json for f in spec.encrypted):
        return json.loads(text)
    return text
