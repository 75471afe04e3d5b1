"""Identity vigilance: merges one at a time per facility, registrations and identity changes serialised
on the identity they write (its blind keys), no duplicate registration."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select, text

from carnet.crypto.blind import IndexKind
from carnet.kernel.errors import Conflict
from carnet.patients.models import Patient
from carnet.phi.kernel import GuardedTx


def identity_lock(tx: GuardedTx, facility_id: uuid.UUID) -> None:
    """One identity change at a time per facility (PostgreSQL; SQLite serialises every gate
    transaction): two merges crossing the same records would otherwise lock them in opposite
    orders. Taken before any patient row is locked, as `_check_duplicate` does."""
    if tx.session.get_bind().dialect.name == "postgresql":
        tx.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"carnet:patient-identity:{facility_id}"},
        )


def check_duplicate(
    tx: GuardedTx, facility_id: uuid.UUID, values: dict[str, Any], exclude: uuid.UUID | None
) -> None:
    blind = tx.keyring.blind
    birth = values.get("birth_date")
    birth_text = birth.isoformat() if isinstance(birth, dt.date) else birth
    if tx.session.get_bind().dialect.name == "postgresql":
        # Two clerks registering the same person at once would both find no duplicate: the
        # check and the commit are serialised on the identity's blind keys (its INS, its names
        # and birth date), so unrelated registrations run side by side. The facility's identity
        # lock is taken shared first: a merge (identity_lock, exclusive) waits for them all.
        keys = [f"carnet:patient-identity:{facility_id}"]
        if values.get("ins"):
            keys.append(f"ins:{blind.index(IndexKind.IDENTIFIER, values['ins']).hex()}")
        if values.get("family") and birth_text and values.get("given"):
            identity = (
                blind.index(IndexKind.FAMILY, values["family"])
                + blind.index(IndexKind.GIVEN, values["given"])
                + blind.index(IndexKind.BIRTH_DATE, birth_text)
            )
            keys.append(f"names:{identity.hex()}")
        tx.session.execute(
            text("SELECT pg_advisory_xact_lock_shared(hashtextextended(:key, 0))"), {"key": keys[0]}
        )
        for key in sorted(f"carnet:patient-identity:{facility_id}:{k}" for k in keys[1:]):
            # Always in the same order, so two registrations never wait on each other in a cycle.
            tx.session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})
    query = select(Patient.id).where(Patient.facility_id == facility_id, Patient.merged_into_id.is_(None))
    if exclude is not None:
        query = query.where(Patient.id != exclude)
    if values.get("ins") and tx.session.scalar(
        query.where(Patient.ins_bi == blind.index(IndexKind.IDENTIFIER, values["ins"]))
    ):
        raise Conflict("a patient with this INS is already registered: search for them instead")
    if values.get("family") and birth_text and values.get("given"):
        same = query.where(
            Patient.family_bi == blind.index(IndexKind.FAMILY, values["family"]),
            Patient.given_bi == blind.index(IndexKind.GIVEN, values["given"]),
            Patient.birth_date_bi == blind.index(IndexKind.BIRTH_DATE, birth_text),
        )
        if tx.session.scalar(same):
            raise Conflict(
                "a patient with the same names and birth date is already registered: search for them instead"
            )
