"""Name search through keyed prefix blind indexes (carnet.crypto.blind), for the gate.

Every writer of a patient's names keeps `patient_name_keys` in step (`name_key_rows` for bulk
writes, `replace_name_keys` for one patient); a name search narrows its candidates with
`name_candidates` and applies `name_matches` to the decrypted names of those candidates only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, LargeBinary, bindparam, delete, insert, select
from sqlalchemy.orm import Session

from carnet.crypto.blind import BlindIndexer, IndexKind
from carnet.patients.models import Patient, PatientNameKey


def name_key_rows(
    blind: BlindIndexer,
    *,
    patient_id: uuid.UUID,
    facility_id: uuid.UUID,
    family: str | None,
    given: str | None,
) -> list[dict[str, Any]]:
    """The `patient_name_keys` rows of one patient's names (a key shared by both names once)."""
    keys = blind.name_prefix_keys(IndexKind.FAMILY, family) | blind.name_prefix_keys(IndexKind.GIVEN, given)
    return [{"key": k, "patient_id": patient_id, "facility_id": facility_id} for k in sorted(keys)]


def replace_name_keys(
    session: Session,
    blind: BlindIndexer,
    *,
    patient_id: uuid.UUID,
    facility_id: uuid.UUID,
    family: str | None,
    given: str | None,
) -> None:
    """Index one patient's current names, dropping what indexed the previous ones."""
    session.flush()  # the patient row exists before the keys that reference it
    session.execute(delete(PatientNameKey).where(PatientNameKey.patient_id == patient_id))
    rows = name_key_rows(blind, patient_id=patient_id, facility_id=facility_id, family=family, given=given)
    if rows:
        session.execute(insert(PatientNameKey), rows)


def name_candidates(
    blind: BlindIndexer, *, family: str | None, given: str | None
) -> list[ColumnElement[bool]] | None:
    """SQL criteria on Patient that every patient matching the name terms meets (one indexed
    look-up per term), or None when no term can be looked up (each is a single word shorter
    than the prefix): then only the caller's bounded scan can answer."""
    keys = name_keys(blind, family=family, given=given)
    if not keys:
        return None
    return [_keyed(key) for key in keys.values()]


def name_keys(blind: BlindIndexer, *, family: str | None, given: str | None) -> dict[str, bytes]:
    """The prefix key of each term that can be looked up, by the name `bound_name_candidates`
    binds it under (`family_key`, `given_key`); empty when none can."""
    keys: dict[str, bytes] = {}
    for kind, term, name in ((IndexKind.FAMILY, family, "family_key"), (IndexKind.GIVEN, given, "given_key")):
        if not term:
            continue
        key = blind.name_query_key(kind, term)
        if key is not None:
            keys[name] = key
    return keys


def bound_name_candidates(names: Iterable[str]) -> list[ColumnElement[bool]]:
    """`name_candidates` with the keys as bound parameters, for the keys `names` (the keys of
    `name_keys`' answer): a statement built once binds each search's keys."""
    return [_keyed(bindparam(name, type_=LargeBinary())) for name in names]


def _keyed(key: Any) -> ColumnElement[bool]:
    return Patient.id.in_(select(PatientNameKey.patient_id).where(PatientNameKey.key == key))


def missing_name_keys(session: Session, *, after: uuid.UUID | None, limit: int) -> list[Patient]:
    """Patients with no name key yet (written before the index existed), by id after `after`."""
    indexed = select(PatientNameKey.patient_id).where(PatientNameKey.patient_id == Patient.id).exists()
    query = select(Patient).where(~indexed)
    if after is not None:
        query = query.where(Patient.id > after)
    return list(session.scalars(query.order_by(Patient.id).limit(limit)))
