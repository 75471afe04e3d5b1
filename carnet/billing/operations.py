"""Invoices and payments (run only by the gate kernel, carnet.phi.kernel): issue, finalize,
cancel, record a payment, read them."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, func, select

from carnet.access.permissions import Permission
from carnet.audit.interfaces import AuditKind
from carnet.billing.models import Invoice, InvoiceLine, Payment
from carnet.billing.numbering import invoice_number
from carnet.billing.views import ALL_INVOICE_FIELDS, invoice_view, invoice_views
from carnet.detection.interfaces import Channel, SearchEvent, SearchShape
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.kernel.ids import new_id, parse_id
from carnet.patients.models import Patient
from carnet.patients.views import patient_view
from carnet.phi import care
from carnet.phi.kernel import NOT_FOUND, RT, GuardedTx, Refused, guarded
from carnet.phi.schemas import BillingWorklist, InvoiceInput, InvoiceView, PaymentInput, UnpaidInvoice
from carnet.phi.steps import first_version, patient_stay, read_one, section
from carnet.phi.work import SqlFacilityWork


def invoices_section(pid: uuid.UUID | None) -> Select[Invoice]:
    """The statement of a patient's invoices, by number (the fast read sends it ahead)."""
    return select(Invoice).where(Invoice.patient_id == pid).order_by(Invoice.number)


@guarded(AuditKind.PHI_READ, RT.INVOICE, targeted=True)
def list_for_patient(tx: GuardedTx, /, *, patient_id: str) -> list[InvoiceView]:
    rows, fields = section(tx, patient_id, RT.INVOICE, invoices_section(parse_id(patient_id)))
    return invoice_views(tx, [(r, fields) for r in rows])


@guarded(AuditKind.PHI_READ, RT.INVOICE, targeted=True)
def read(tx: GuardedTx, /, *, invoice_id: str) -> InvoiceView:
    row, fields = read_one(tx, RT.INVOICE, invoice_id)
    return invoice_view(tx, row, fields)


@guarded(AuditKind.PHI_READ, RT.INVOICE, targeted=True)
def read_payment(tx: GuardedTx, /, *, payment_id: str) -> InvoiceView:
    """A payment, read as the invoice it paid (a payment is part of its invoice)."""
    pid = parse_id(payment_id)
    payment = tx.session.get(Payment, pid) if pid else None
    if payment is None:
        raise NotFound(NOT_FOUND)
    row, fields = read_one(tx, RT.INVOICE, str(payment.invoice_id))
    tx.resource_ids.append(str(payment.id))
    return invoice_view(tx, row, fields)


@guarded(AuditKind.PHI_UPDATE, RT.INVOICE, targeted=True)
def record_payment(tx: GuardedTx, /, *, data: PaymentInput) -> InvoiceView:
    """A payment received against an issued invoice (If-Match on `expected_version`); never
    more than what is due. The invoice is balanced when fully paid."""
    invoice, patient = tx.record_to_change(Invoice, data.invoice_id)
    tx.authorize(patient, RT.INVOICE, write=True)
    if invoice.status != "issued":
        raise Conflict(f"this invoice is {invoice.status}: only an issued invoice takes a payment")
    if invoice.version_id != data.expected_version:
        raise Conflict("the resource was changed by someone else: reload and try again")
    paid = _paid(tx, invoice.id)
    due = invoice.total_cents - paid
    if data.amount_cents > due:
        raise InvalidInput(f"the payment is more than the {due / 100:.2f} {invoice.currency} still due")
    status = "balanced" if data.amount_cents == due else invoice.status
    first_version(tx, RT.INVOICE, invoice, patient, _snapshot(tx, invoice))
    tx.bump(Invoice, invoice, data.expected_version, status=status)
    payment_id = new_id()
    tx.session.add(
        Payment(
            id=payment_id,
            invoice_id=invoice.id,
            amount_cents=data.amount_cents,
            method=data.method,
            received_at=tx.now,
            received_by=tx.ctx.account_id,
        )
    )
    tx.session.flush()
    view = invoice_view(tx, invoice, ALL_INVOICE_FIELDS)
    tx.snapshot(RT.INVOICE, invoice.id, invoice.version_id, patient, "update", view.model_dump(mode="json"))
    tx.resource_ids.append(str(payment_id))
    rels = tx.relationships_of([patient])
    fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.INVOICE)
    tx.expose([patient.id], Channel.WRITE, rels, fields, resource=RT.INVOICE)
    return invoice_view(tx, invoice, fields)


def _snapshot(tx: GuardedTx, invoice: Invoice) -> dict[str, Any]:
    data: dict[str, Any] = invoice_view(tx, invoice, ALL_INVOICE_FIELDS).model_dump(mode="json")
    return data


def _written(tx: GuardedTx, patient: Patient, invoice: Invoice, action: str) -> InvoiceView:
    data = _snapshot(tx, invoice)
    tx.snapshot(RT.INVOICE, invoice.id, invoice.version_id, patient, action, data)
    rels = tx.relationships_of([patient])
    fields = tx.read_fields(rels.get(patient.id, frozenset()), RT.INVOICE)
    tx.expose([patient.id], Channel.WRITE, rels, fields, resource=RT.INVOICE)
    return invoice_view(tx, invoice, fields)


def _to_change(tx: GuardedTx, invoice_id: str, expected_version: int) -> tuple[Invoice, Patient]:
    """An invoice to change, by a role that bills the patient, at the version the client read
    (a stale one is refused before its content is judged)."""
    invoice, patient = tx.record_to_change(Invoice, invoice_id)
    tx.authorize(patient, RT.INVOICE, write=True)
    if invoice.version_id != expected_version:
        raise Conflict("the resource was changed by someone else: reload and try again")
    return invoice, patient


@guarded(AuditKind.PHI_CREATE, RT.INVOICE, targeted=True)
def issue(tx: GuardedTx, /, *, data: InvoiceInput) -> InvoiceView:
    """Invoice a patient (optionally for one of their stays): numbered by the facility,
    total = the sum of its lines, issued now (or kept as a draft), version 1."""
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.INVOICE, write=True)
    if patient.merged_into_id is not None:
        raise Conflict("this patient record was merged: invoice the record it was merged into")
    encounter = patient_stay(tx, data.encounter_id, patient)
    if encounter is None and not SqlFacilityWork().in_work(tx.session, patient_ids=[patient.id], at=tx.now):
        # An invoice puts its patient in billing's work (carnet.phi.work), which detection
        # trusts: without this, a clerk could whitelist the register one draft at a time.
        raise Refused(
            "no appointment, stay, open invoice or recent registration here, and no stay named",
            [patient.id],
        )
    total = sum(line.amount_cents for line in data.lines)
    if total > 100_000_000:
        raise InvalidInput("an invoice totals at most 1,000,000.00")
    issued = data.status == "issued"
    invoice = Invoice(
        id=new_id(),
        facility_id=patient.facility_id,
        patient_id=patient.id,
        encounter_id=encounter,
        number=invoice_number(tx, patient.facility_id),
        status=data.status,
        issued_at=tx.now if issued else None,
        total_cents=total,
        currency=data.currency,
        cancel_reason=None,
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(invoice)
    tx.session.flush()
    for line in data.lines:
        tx.session.add(
            InvoiceLine(
                invoice_id=invoice.id,
                code=line.code,
                description=line.description,
                amount_cents=line.amount_cents,
            )
        )
    tx.session.flush()
    return _written(tx, patient, invoice, "create")


@guarded(AuditKind.PHI_UPDATE, RT.INVOICE, targeted=True)
def finalize(tx: GuardedTx, /, *, invoice_id: str, expected_version: int) -> InvoiceView:
    """Issue a draft invoice: status issued, dated now; it may then be paid."""
    invoice, patient = _to_change(tx, invoice_id, expected_version)
    if invoice.status != "draft":
        raise Conflict(f"this invoice is {invoice.status}: only a draft is issued")
    first_version(tx, RT.INVOICE, invoice, patient, _snapshot(tx, invoice))
    tx.bump(Invoice, invoice, expected_version, status="issued", issued_at=tx.now)
    return _written(tx, patient, invoice, "update")


@guarded(AuditKind.PHI_UPDATE, RT.INVOICE, targeted=True)
def cancel(tx: GuardedTx, /, *, invoice_id: str, expected_version: int, reason: str) -> InvoiceView:
    """Cancel a draft or an unpaid issued invoice, with a reason: kept (never deleted), its
    number never reused, every version in its history. One that took a payment is not
    cancelled: the payment would vanish from the books."""
    invoice, patient = _to_change(tx, invoice_id, expected_version)
    reason = reason.strip()
    if not reason or len(reason) > 200:
        raise InvalidInput("a cancellation needs a reason (at most 200 characters)")
    if invoice.status not in ("draft", "issued"):
        raise Conflict(f"this invoice is {invoice.status}: only a draft or an issued invoice is cancelled")
    if _paid(tx, invoice.id):
        raise Conflict("this invoice has received payments: it cannot be cancelled")
    first_version(tx, RT.INVOICE, invoice, patient, _snapshot(tx, invoice))
    tx.bump(Invoice, invoice, expected_version, status="cancelled", cancel_reason=reason)
    return _written(tx, patient, invoice, "update")


def _paid(tx: GuardedTx, invoice_id: uuid.UUID) -> int:
    total = tx.session.scalar(
        select(func.coalesce(func.sum(Payment.amount_cents), 0)).where(Payment.invoice_id == invoice_id)
    )
    return int(total or 0)


WORKLIST_PAGE = 8  # unpaid invoices a page: billing works invoice by invoice (its volume floor is low)
WORKLIST_PATIENT = frozenset({"id", "family", "given", "birth_date"})  # who pays: nothing clinical
WORKLIST_MAX_PAGE = 50


@guarded(AuditKind.PHI_LIST, RT.INVOICE, targeted=False)
def unpaid(tx: GuardedTx, /, *, page: int = 1) -> BillingWorklist:
    """The billing worklist: issued invoices not yet paid at the actor's facilities, oldest
    first, a short page at a time, each with its lines and payments and whom it bills (name
    and birth date: no stay, no diagnosis). Counted as a list; paging deep is paging."""
    tx.require(Permission.INVOICE_WRITE)
    for listed in (RT.PATIENT, RT.INVOICE):
        tx.check_scopes(listed)
    if not 1 <= page <= WORKLIST_MAX_PAGE:
        raise InvalidInput(f"a worklist page is 1 to {WORKLIST_MAX_PAGE}")
    rows = tx.session.execute(
        select(Invoice, Patient)
        .join(Patient, Patient.id == Invoice.patient_id)
        .where(
            Invoice.status == "issued",
            Invoice.facility_id.in_(tx.ctx.facility_ids),
            care.visible_filter(tx.ctx),
        )
        .order_by(Invoice.issued_at, Invoice.number)
        .offset((page - 1) * WORKLIST_PAGE)
        .limit(WORKLIST_PAGE + 1)
    ).all()
    more = len(rows) > WORKLIST_PAGE
    rows = rows[:WORKLIST_PAGE]
    rels = tx.relationships_of([p for _i, p in rows])
    items: list[UnpaidInvoice] = []
    shown: list[uuid.UUID] = []
    fields_shown: set[str] = set()
    readable: list[tuple[Invoice, Patient, frozenset[str], frozenset[str]]] = []
    for invoice, patient in rows:
        rel = rels.get(patient.id, frozenset())
        i_fields = tx.read_fields(rel, RT.INVOICE)
        p_fields = tx.read_fields(rel, RT.PATIENT) & WORKLIST_PATIENT
        if not i_fields or not p_fields - {"id"}:
            continue
        readable.append((invoice, patient, i_fields, p_fields))
    # The lines and payments of the invoices shown, read together (not two statements each).
    views = invoice_views(tx, [(invoice, i_fields) for invoice, _p, i_fields, _f in readable])
    for (invoice, patient, _i, p_fields), view in zip(readable, views, strict=True):
        items.append(UnpaidInvoice(invoice=view, patient=patient_view(tx, patient, p_fields)))
        shown.append(patient.id)
        fields_shown |= p_fields
        tx.resource_ids.append(str(invoice.id))
    tx.query = f"unpaid-invoices;page={page}"
    tx.reasons.append("billing worklist")
    event = SearchEvent(shape=SearchShape.LIST, term_digest="unpaid-invoices", page=page)
    tx.expose(shown, Channel.LIST, rels, fields_shown, shape=event)
    return BillingWorklist(page=page, items=items, more=more)
