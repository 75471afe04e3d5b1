"""Invoice numbering: in order, without gaps, one number at a time per facility."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, text

from carnet.billing.models import Invoice
from carnet.kernel.errors import NotFound
from carnet.org.models import Facility
from carnet.phi.kernel import NOT_FOUND, GuardedTx


def invoice_number(tx: GuardedTx, facility_id: uuid.UUID) -> str:
    """The facility's next invoice number of the year, F<FINESS>-<year>-<sequence>: numbered
    in order without gaps, as French invoicing rules ask; one number at a time per facility."""
    if tx.session.get_bind().dialect.name == "postgresql":
        # SQLite already holds its one write lock (BEGIN IMMEDIATE); PostgreSQL orders two
        # clerks issuing at once here, until the commit, so both cannot take the same number.
        tx.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"carnet:invoice-number:{facility_id}"},
        )
    finess = tx.session.scalar(select(Facility.finess).where(Facility.id == facility_id))
    if finess is None:
        raise NotFound(NOT_FOUND)
    prefix = f"F{finess}-{tx.now.year:04d}-"
    last = tx.session.scalar(
        select(func.max(Invoice.number)).where(
            Invoice.facility_id == facility_id, Invoice.number.like(prefix + "%")
        )
    )
    sequence = int(last.removeprefix(prefix)) + 1 if last and last.removeprefix(prefix).isdigit() else 1
    return f"{prefix}{sequence:07d}"
