"""Every encrypted column, in one place: key rotation, key status and the dump test read it.

A test (tests/crypto/test_encrypted_columns.py) fails when a model grows a `*_ct` column that is
not listed here, so nothing is forgotten by re-encryption. Each ciphertext is bound to its table,
its field (the column without `_ct`) and its row id, and encrypted under its facility's data key;
`facility` says where that facility is found for the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, ColumnElement, Select, Table, select

from carnet.coverage.models import CardReading, Coverage
from carnet.db.base import Base
from carnet.interventions.models import Intervention
from carnet.patients.models import ExportFile, Patient, ResourceVersion
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

CIPHERTEXT_SUFFIX = "_ct"


@dataclass(frozen=True)
class EncryptedTable:
    """A table's ciphertext columns and how to find each row's facility."""

    model: type[Base]
    columns: tuple[str, ...]
    # The row's own facility_id column, or the parent's reached through `parent_key`.
    facility_model: type[Base] | None = None
    parent_key: str | None = None

    @property
    def table(self) -> Table:
        table = self.model.__table__
        assert isinstance(table, Table)
        return table

    @property
    def name(self) -> str:
        return self.table.name

    def column(self, name: str) -> Column[bytes]:
        return self.table.c[name]

    def facility_column(self) -> ColumnElement[Any]:
        owner = self.facility_model or self.model
        table = owner.__table__
        assert isinstance(table, Table)
        column: ColumnElement[Any] = table.c["facility_id"]
        return column

    def select_rows(self, *, after: object | None, limit: int) -> Select[Any]:
        """Rows by id order (keyset paging): id, facility id, then each ciphertext column."""
        t = self.table
        stmt = select(t.c.id, self.facility_column(), *(t.c[c] for c in self.columns))
        if self.facility_model is not None and self.parent_key is not None:
            parent = self.facility_model.__table__
            assert isinstance(parent, Table)
            stmt = stmt.select_from(t.join(parent, t.c[self.parent_key] == parent.c.id))
        if after is not None:
            stmt = stmt.where(t.c.id > after)
        return stmt.order_by(t.c.id).limit(limit)


def aad_field(column: str) -> str:
    """The name a ciphertext column is bound to in its associated data: `family_ct` -> `family`."""
    return column.removesuffix(CIPHERTEXT_SUFFIX)


ENCRYPTED_TABLES: Sequence[EncryptedTable] = (
    EncryptedTable(
        Patient,
        (
            "ins_ct",
            "family_ct",
            "given_ct",
            "birth_date_ct",
            "address_ct",
            "phone_ct",
            "email_ct",
            "received_ct",
        ),
    ),
    EncryptedTable(ResourceVersion, ("snapshot_ct",)),
    EncryptedTable(Appointment, ("reason_ct",)),
    EncryptedTable(NoteVersion, ("text_ct",), facility_model=ClinicalNote, parent_key="note_id"),
    EncryptedTable(DiagnosticReport, ("conclusion_ct", "received_ct")),
    EncryptedTable(Observation, ("received_ct",)),
    EncryptedTable(Condition, ("received_ct",)),
    EncryptedTable(Allergy, ("received_ct", "reaction_ct")),
    EncryptedTable(Encounter, ("received_ct",)),
    EncryptedTable(Prescription, ("received_ct",)),
    EncryptedTable(Intervention, ("received_ct",)),
    EncryptedTable(ServiceRequest, ("note_ct", "received_ct")),
    EncryptedTable(Coverage, ("member_id_ct", "received_ct")),
    EncryptedTable(CardReading, ("card_serial_ct", "payload_ct")),
    EncryptedTable(ExportFile, ("ndjson_ct",)),
)


def encrypted_columns() -> list[tuple[str, str]]:
    """(table, column) for every registered ciphertext column."""
    return [(t.name, c) for t in ENCRYPTED_TABLES for c in t.columns]
