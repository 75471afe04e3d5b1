"""An invoice and a payment's receipt printed (run only by the gate kernel). Billing prints
them; they carry acts and amounts, never anything clinical (no diagnosis, no stay's ward)."""

from __future__ import annotations

from sqlalchemy import select

from carnet.audit.interfaces import AuditKind
from carnet.billing.models import Invoice, InvoiceLine, Payment
from carnet.kernel.errors import Conflict, NotFound
from carnet.kernel.ids import parse_id
from carnet.org.models import Facility
from carnet.patients.models import Patient
from carnet.phi.kernel import NOT_FOUND, RT, GuardedTx, guarded
from carnet.phi.printed import check_language, identity_lines, printed
from carnet.printing import Document, PrintedDocument, Section
from carnet.printing.words import code, day, money, pair, word

PRINTABLE = frozenset({"issued", "balanced"})


def _invoice_to_print(tx: GuardedTx, invoice_id: str) -> tuple[Invoice, Patient, frozenset[str]]:
    iid = parse_id(invoice_id)
    invoice = tx.session.get(Invoice, iid) if iid else None
    if invoice is None:
        raise NotFound(NOT_FOUND)
    patient = tx.patient(invoice.patient_id)
    # Billing's rule: those who may bill the patient print what they billed.
    decision = tx.authorize(patient, RT.INVOICE, write=True)
    tx.resource_ids.append(str(invoice.id))
    if invoice.status not in PRINTABLE:
        raise Conflict(f"this invoice is {invoice.status}: only an issued invoice is printed")
    return invoice, patient, decision.fields


def _facility(tx: GuardedTx, invoice: Invoice) -> str:
    facility = tx.session.get(Facility, invoice.facility_id)
    return f"{facility.name} — {facility.city} — FINESS {facility.finess}" if facility else ""


def _paid(tx: GuardedTx, invoice: Invoice) -> list[Payment]:
    return list(
        tx.session.scalars(
            select(Payment).where(Payment.invoice_id == invoice.id).order_by(Payment.received_at)
        )
    )


@guarded(AuditKind.PHI_PRINT, RT.INVOICE, targeted=True)
def print_invoice(tx: GuardedTx, /, *, invoice_id: str, language: str = "fr") -> PrintedDocument:
    """An issued (or paid) invoice: its number, acts, total, what was paid and what is due."""
    language = check_language(language)
    invoice, patient, fields = _invoice_to_print(tx, invoice_id)
    lines = tx.session.scalars(select(InvoiceLine).where(InvoiceLine.invoice_id == invoice.id))
    paid = sum(p.amount_cents for p in _paid(tx, invoice))
    cur = invoice.currency
    document = Document(
        kind="invoice",
        language=language,
        title=f"{word(language, 'invoice')} {invoice.number}",
        facility=_facility(tx, invoice),
        patient=identity_lines(tx, patient, language),
        sections=(
            Section(
                heading=word(language, "invoice"),
                paragraphs=(
                    pair(language, "number", invoice.number),
                    pair(language, "issued", day(language, invoice.issued_at)),
                    pair(language, "status", code(language, invoice.status)),
                ),
            ),
            Section(
                heading=word(language, "acts"),
                header=(word(language, "code"), word(language, "act"), word(language, "amount")),
                rows=tuple(
                    (line.code, line.description, money(language, line.amount_cents, cur)) for line in lines
                ),
                empty=word(language, "none"),
            ),
            Section(
                heading=word(language, "total"),
                paragraphs=(
                    pair(language, "total", money(language, invoice.total_cents, cur)),
                    pair(language, "paid", money(language, paid, cur)),
                    pair(language, "due", money(language, invoice.total_cents - paid, cur)),
                ),
            ),
        ),
    )
    return printed(tx, patient, document, resource=RT.INVOICE, fields=fields)


@guarded(AuditKind.PHI_PRINT, RT.INVOICE, targeted=True)
def print_receipt(tx: GuardedTx, /, *, payment_id: str, language: str = "fr") -> PrintedDocument:
    """The receipt of one payment: how much, how, when, against which invoice, what is left."""
    language = check_language(language)
    pid = parse_id(payment_id)
    payment = tx.session.get(Payment, pid) if pid else None
    if payment is None:
        raise NotFound(NOT_FOUND)
    invoice, patient, fields = _invoice_to_print(tx, str(payment.invoice_id))
    tx.resource_ids.append(str(payment.id))
    paid_so_far = sum(
        p.amount_cents
        for p in _paid(tx, invoice)
        if (p.received_at, str(p.id)) <= (payment.received_at, str(payment.id))
    )
    cur = invoice.currency
    document = Document(
        kind="receipt",
        language=language,
        title=f"{word(language, 'receipt')} — {word(language, 'for_invoice')} {invoice.number}",
        facility=_facility(tx, invoice),
        patient=identity_lines(tx, patient, language),
        sections=(
            Section(
                heading=word(language, "payment"),
                paragraphs=(
                    pair(language, "amount", money(language, payment.amount_cents, cur)),
                    pair(language, "method", code(language, payment.method)),
                    pair(language, "received", day(language, payment.received_at)),
                    pair(language, "for_invoice", f"{invoice.number} ({day(language, invoice.issued_at)})"),
                    pair(language, "total", money(language, invoice.total_cents, cur)),
                    pair(language, "due", money(language, invoice.total_cents - paid_so_far, cur)),
                ),
            ),
        ),
    )
    return printed(tx, patient, document, resource=RT.INVOICE, fields=fields)
