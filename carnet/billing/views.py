"""An invoice as the gate shows it: its lines and payments, redacted."""

from __future__ import annotations

from sqlalchemy import select

from carnet.billing.models import Invoice, InvoiceLine, Payment
from carnet.phi.kernel import GuardedTx
from carnet.phi.schemas import InvoiceLineView, InvoiceView, PaymentView
from carnet.phi.steps import redact, sid

ALL_INVOICE_FIELDS = frozenset(InvoiceView.model_fields) - {"visible"}


def invoice_view(tx: GuardedTx, r: Invoice, fields: frozenset[str]) -> InvoiceView:
    lines = [
        InvoiceLineView(code=line.code, description=line.description, amount_cents=line.amount_cents)
        for line in tx.session.scalars(select(InvoiceLine).where(InvoiceLine.invoice_id == r.id))
    ]
    payments = [
        PaymentView(id=str(p.id), amount_cents=p.amount_cents, method=p.method, received_at=p.received_at)
        for p in tx.session.scalars(
            select(Payment).where(Payment.invoice_id == r.id).order_by(Payment.received_at)
        )
    ]
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
