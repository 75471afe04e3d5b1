"""An invoice as the gate shows it: its lines and payments, redacted."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select

from carnet.billing.models import Invoice, InvoiceLine, Payment
from carnet.phi.kernel import GuardedTx
from carnet.phi.schemas import InvoiceLineView, InvoiceView, PaymentView
from carnet.phi.steps import redact, sid

ALL_INVOICE_FIELDS = frozenset(InvoiceView.model_fields) - {"visible"}


def invoice_view(tx: GuardedTx, r: Invoice, fields: frozenset[str]) -> InvoiceView:
    return invoice_views(tx, [(r, fields)])[0]


def invoice_views(tx: GuardedTx, shown: Sequence[tuple[Invoice, frozenset[str]]]) -> list[InvoiceView]:
    """`invoice_view` of each invoice shown, their lines and payments read in one statement each
    (not two per invoice: a worklist page or a patient's invoices is one round trip, not 20)."""
    ids = [r.id for r, _fields in shown]
    lines: dict[uuid.UUID, list[InvoiceLineView]] = {i: [] for i in ids}
    payments: dict[uuid.UUID, list[PaymentView]] = {i: [] for i in ids}
    if ids:
        for line in tx.session.scalars(select(InvoiceLine).where(InvoiceLine.invoice_id.in_(ids))):
            lines[line.invoice_id].append(
                InvoiceLineView(code=line.code, description=line.description, amount_cents=line.amount_cents)
            )
        for p in tx.session.scalars(
            select(Payment).where(Payment.invoice_id.in_(ids)).order_by(Payment.received_at)
        ):
            payments[p.invoice_id].append(
                PaymentView(
                    id=str(p.id), amount_cents=p.amount_cents, method=p.method, received_at=p.received_at
                )
            )
    return [_view(r, fields, lines[r.id], payments[r.id]) for r, fields in shown]


def _view(
    r: Invoice, fields: frozenset[str], lines: list[InvoiceLineView], payments: list[PaymentView]
) -> InvoiceView:
    data = {
        "id": str(r.id),
        "updated_at": r.updated_at,
        "patient_id": str(r.patient_id),
        "number": r.number,
        "status": r.status,
        "issued_at": r.issued_at,
        "total_cents": r.total_cents,
        "currency": r.currency,
        "lines": lines,
        "version_id": r.version_id,
        "paid_cents": sum(p.amount_cents for p in payments),
        "payments": payments,
        "encounter_id": sid(r.encounter_id),
        "cancel_reason": r.cancel_reason,
    }
    return redact(InvoiceView, data, fields)
