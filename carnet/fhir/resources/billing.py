"""FHIR Invoice and PaymentReconciliation, all through the gate.

- Invoice: searched by patient, read, created (issued now, or a draft), issued from a draft or
  cancelled with a reason (PUT with If-Match; only `status` and `cancelledReason` are taken),
  DELETE = cancelled "deleted through the FHIR API" (kept, never removed); every kept version
  by vread and `_history`. The gate numbers it (F<FINESS>-<year>-<sequence>) and totals it.
- PaymentReconciliation records a payment received against one invoice: R4's resource that
  carries a payment's amount and allocates it to what it pays (`detail.request`). PaymentNotice
  is not it: that is the payer's notice that a payment was (or will be) sent, and it must point
  to a PaymentReconciliation anyway. One detail, naming the invoice at the version the client
  read (`Invoice/<id>/_history/<n>`, or If-Match): two clerks recording the same payment get
  one 201 and one 412. The invoice is balanced when fully paid. Payments are never changed.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.invoice import Invoice
from fhir.resources.R4B.paymentreconciliation import PaymentReconciliation
from pydantic import ValidationError

from carnet.fhir.core.api import (
    FhirBody,
    checked,
    count_param,
    expected_version,
    gate_for,
    page_param,
    parse_version,
    reference_id,
    resource_response,
    validated,
)
from carnet.fhir.core.bundles import history_response, paged, vread_response
from carnet.fhir.core.mapping import DELETED_REASON, EXT, clean, meta, ref, when
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import Search, date, date_matches, reference, respond, token
from carnet.kernel.errors import InvalidInput, NotFound
from carnet.phi.schemas import InvoiceInput, PaymentInput

router = APIRouter(prefix="/fhir", tags=["fhir"])

INVOICE = "Invoice"
PAYMENT = "PaymentReconciliation"
PAYMENT_METHOD = EXT + "payment-method"  # card | cash | cheque | transfer | insurer (R4 has none)
PAYMENT_TYPE = "http://terminology.hl7.org/CodeSystem/payment-type"
INVOICE_ENCOUNTER = EXT + "invoice-encounter"  # the stay an invoice bills (R4 Invoice has no encounter)

PAYMENT_SEARCH = {"request", "patient", "created", "outcome"}


# == mapping ===================================================================================
def _places(exc: ValidationError, what: str) -> str:
    """Which fields are wrong, never their values."""
    places = sorted({".".join(str(p) for p in err.get("loc", ())) or what for err in exc.errors()})
    return f"invalid {what}: check " + ", ".join(places)


def _cents(money: Any, what: str) -> tuple[int, str | None]:
    """A Money as (cents, currency): a positive amount with at most two decimals."""
    if not isinstance(money, dict) or money.get("value") is None:
        raise InvalidInput(f"{what} needs an amount (value and currency)")
    try:
        value = Decimal(str(money["value"]))
    except InvalidOperation:
        raise InvalidInput(f"{what} must be a number") from None
    cents = value * 100
    if value <= 0 or cents != cents.to_integral_value():
        raise InvalidInput(f"{what} must be a positive amount with at most two decimals")
    return int(cents), money.get("currency")


def _line(item: dict[str, Any], number: int) -> tuple[dict[str, Any], str | None]:
    concept = item.get("chargeItemCodeableConcept")
    if not isinstance(concept, dict):
        raise InvalidInput(f"lineItem {number} needs chargeItemCodeableConcept (the act's code)")
    coding = next((c for c in concept.get("coding") or [] if c.get("code")), None)
    if coding is None:
        raise InvalidInput(f"lineItem {number} needs a coded act (chargeItemCodeableConcept.coding.code)")
    description = coding.get("display") or concept.get("text")
    if not description:
        raise InvalidInput(f"lineItem {number} needs the act's display (or chargeItemCodeableConcept.text)")
    components = item.get("priceComponent") or []
    if len(components) != 1 or components[0].get("type") != "base":
        raise InvalidInput(f"lineItem {number} has one priceComponent, of type base, with its amount")
    cents, currency = _cents(components[0].get("amount"), f"lineItem {number} priceComponent.amount")
    return {"code": coding["code"], "description": description, "amount_cents": cents}, currency


def invoice_input(body: dict[str, Any]) -> InvoiceInput:
    status = body.get("status") or "issued"
    if status not in ("issued", "draft"):
        raise InvalidInput("a new Invoice is issued (or a draft)")
    subject = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    if subject is None:
        raise InvalidInput("an Invoice needs subject (a reference Patient/<id>)")
    encounter = None
    for extension in body.get("extension") or []:
        if extension.get("url") == INVOICE_ENCOUNTER:
            encounter = reference_id((extension.get("valueReference") or {}).get("reference"), "Encounter")
    items = body.get("lineItem") or []
    if not items:
        raise InvalidInput("an Invoice needs at least one lineItem")
    lines, currencies = [], set()
    for number, item in enumerate(items, start=1):
        line, currency = _line(item, number)
        lines.append(line)
        currencies.add(currency or "EUR")
    total = sum(line["amount_cents"] for line in lines)
    if body.get("totalGross") is not None:
        gross, currency = _cents(body["totalGross"], "totalGross")
        currencies.add(currency or "EUR")
        if gross != total:
            raise InvalidInput("totalGross must be the sum of the lineItem amounts")
    if len(currencies) != 1:
        raise InvalidInput("every amount of an Invoice is in one currency")
    values = {
        "patient_id": subject,
        "encounter_id": encounter,
        "lines": lines,
        "currency": currencies.pop(),
        "status": status,
    }
    try:
        return InvoiceInput(**values)
    except ValidationError as exc:
        raise InvalidInput(_places(exc, INVOICE)) from None


def invoice_change(body: dict[str, Any], invoice_id: str, version: int) -> tuple[str, dict[str, Any]]:
    """What a PUT of an Invoice does: issue a draft, or cancel with a reason."""
    status = body.get("status")
    if status == "cancelled":
        reason = body.get("cancelledReason")
        if not reason or not str(reason).strip():
            raise InvalidInput("a cancellation needs cancelledReason")
        return "cancel_invoice", {"invoice_id": invoice_id, "expected_version": version, "reason": reason}
    if status == "issued":
        return "finalize_invoice", {"invoice_id": invoice_id, "expected_version": version}
    raise InvalidInput(
        "an Invoice is changed by issuing a draft (status issued) or cancelling it"
        " (status cancelled with cancelledReason)"
    )


def invoice_operation(body: dict[str, Any]) -> str:
    return "cancel_invoice" if body.get("status") == "cancelled" else "finalize_invoice"


def _invoice_reference(value: Any) -> tuple[str, int | None]:
    """`Invoice/<id>` or `Invoice/<id>/_history/<n>` (a full URL ending so) -> (id, n or None)."""
    text = str(value or "").strip().rstrip("/")
    parts = text.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        if parts[-4] != INVOICE or not parts[-3] or not parts[-1].isdigit() or len(parts[-1]) > 9:
            raise InvalidInput("detail.request must be a reference Invoice/<id>/_history/<version>")
        return parts[-3], int(parts[-1])
    invoice = reference_id(text or None, INVOICE)
    if invoice is None:
        raise InvalidInput("detail.request must be a reference to the Invoice paid")
    return invoice, None


def payment_parts(body: dict[str, Any]) -> tuple[int, str | None, Any, str]:
    """A PaymentReconciliation's amount (cents), currency, the reference of the one invoice it
    pays (as sent, unchecked) and its method (unchecked)."""
    if body.get("status") not in (None, "active"):
        raise InvalidInput("a payment is recorded active")
    amount, currency = _cents(body.get("paymentAmount"), "paymentAmount")
    details = body.get("detail") or []
    if len(details) != 1:
        raise InvalidInput("a PaymentReconciliation pays one invoice: one detail, its request the Invoice")
    detail = details[0]
    if detail.get("amount") is not None and _cents(detail["amount"], "detail.amount") != (amount, currency):
        raise InvalidInput("detail.amount must be the paymentAmount")
    method = next(
        (e.get("valueCode") for e in body.get("extension") or [] if e.get("url") == PAYMENT_METHOD), None
    )
    if method is None:
        raise InvalidInput(f"a payment needs its method (extension {PAYMENT_METHOD}: card, cash, ...)")
    return amount, currency, (detail.get("request") or {}).get("reference"), method


def payment_input(body: dict[str, Any], if_match: str | None) -> PaymentInput:
    """A PaymentReconciliation as one payment of one invoice, at the invoice version read."""
    amount, _currency, reference, method = payment_parts(body)
    invoice_id, version = _invoice_reference(reference)
    asked = parse_version(if_match)
    if version is not None and asked is not None and asked != version:
        raise InvalidInput("detail.request and If-Match name two versions of the invoice: name one")
    if version is None:
        version = asked
    if version is None:
        raise InvalidInput(
            "name the invoice version you read: detail.request Invoice/<id>/_history/<version> (or If-Match)"
        )
    values = {"invoice_id": invoice_id, "expected_version": version, "amount_cents": amount, "method": method}
    try:
        return PaymentInput(**values)
    except ValidationError as exc:
        raise InvalidInput(_places(exc, PAYMENT)) from None


def payment_to_fhir(d: dict[str, Any], payment_id: str | None = None) -> dict[str, Any]:
    """One payment of an invoice (a view's dump) as a PaymentReconciliation; without
    `payment_id`, the payment the invoice's last change recorded."""
    payments = d.get("payments") or []
    if payment_id is None:
        payment = next((p for p in reversed(payments) if p["received_at"] == d.get("updated_at")), None)
    else:
        payment = next((p for p in payments if p["id"] == payment_id), None)
    if payment is None:
        raise NotFound("no such payment")
    currency = d.get("currency") or "EUR"
    money = {"value": payment["amount_cents"] / 100, "currency": currency}
    resource = clean(
        {
            "resourceType": PAYMENT,
            "id": payment["id"],
            "meta": {"versionId": "1", "lastUpdated": when(payment["received_at"])},
            "extension": [{"url": PAYMENT_METHOD, "valueCode": payment["method"]}],
            "status": "active",
            "created": when(payment["received_at"]),
            "paymentDate": when(payment["received_at"])[:10],  # type: ignore[index]
            "paymentAmount": money,
            "outcome": "complete",
            "disposition": f"invoice {d['number']} is {d['status']}" if d.get("number") else None,
            "detail": [
                {
                    "type": {"coding": [{"system": PAYMENT_TYPE, "code": "payment"}]},
                    "request": ref(INVOICE, d["id"]),
                    "amount": money,
                    "date": when(payment["received_at"])[:10],  # type: ignore[index]
                }
            ],
        }
    )
    return checked(PaymentReconciliation, resource)


def invoice_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    currency = d.get("currency") or "EUR"
    lines = [
        {
            "sequence": i,
            "chargeItemCodeableConcept": {"coding": [{"code": line["code"], "display": line["description"]}]},
            "priceComponent": [
                {"type": "base", "amount": {"value": line["amount_cents"] / 100, "currency": currency}}
            ],
        }
        for i, line in enumerate(d.get("lines") or [], start=1)
    ]
    encounter = ref("Encounter", d.get("encounter_id"))
    resource = clean(
        {
            "resourceType": "Invoice",
            "id": d["id"],
            "meta": meta(d),
            "extension": [{"url": INVOICE_ENCOUNTER, "valueReference": encounter}] if encounter else None,
            "identifier": [{"value": d["number"]}] if d.get("number") else None,
            "status": d.get("status") or "draft",
            "cancelledReason": d.get("cancel_reason"),
            "subject": ref("Patient", d.get("patient_id")),
            "date": when(d.get("issued_at")),
            "lineItem": lines,
            "totalGross": {"value": d["total_cents"] / 100, "currency": currency}
            if d.get("total_cents") is not None
            else None,
        }
    )
    return checked(Invoice, resource)


# == Invoice ===================================================================================
def _invoice(view: Any) -> dict[str, Any]:
    return invoice_to_fhir(view.model_dump())


INVOICE_SEARCH = Search(
    INVOICE,
    {
        "patient": reference("subject", target="Patient"),
        "subject": reference("subject"),
        "status": token("status"),
        "date": date("date"),
        "identifier": token("identifier"),
    },
    fetch=lambda gate, pid: [_invoice(v) for v in gate.list_invoices(patient_id=pid)],
    read=lambda gate, rid: _invoice(gate.read_invoice(invoice_id=rid)),
    includes=("subject", "patient"),
)


@router.get("/Invoice")
def search_invoices(request: Request) -> Response:
    return respond(request, INVOICE_SEARCH)


@router.post("/Invoice")
def create_invoice(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Invoice a patient: lineItem (chargeItemCodeableConcept + one base priceComponent each),
    subject, optionally totalGross (checked) and the stay billed (extension invoice-encounter)."""
    gate = gate_for(request, INVOICE, "create")
    resource = validated(Invoice, body, INVOICE)
    view = gate.issue_invoice(data=invoice_input(resource))
    return resource_response(request, _invoice(view), status=201)


@router.get("/Invoice/{invoice_id}")
def read_invoice(request: Request, invoice_id: str) -> Response:
    gate = gate_for(request, INVOICE, "read")
    return resource_response(request, _invoice(gate.read_invoice(invoice_id=invoice_id)))


@router.put("/Invoice/{invoice_id}")
def update_invoice(request: Request, invoice_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """Issue a draft (status issued) or cancel (status cancelled + cancelledReason), If-Match."""
    gate = gate_for(request, INVOICE, "update")
    resource = validated(Invoice, body, INVOICE)
    if resource.get("id") != invoice_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    name, arguments = invoice_change(resource, invoice_id, version)
    view = getattr(gate, name)(**arguments)
    return resource_response(request, _invoice(view))


@router.delete("/Invoice/{invoice_id}")
def delete_invoice(request: Request, invoice_id: str) -> Response:
    """A delete cancels (the invoice, its number and its history stay). If-Match, or else the
    current version (read through the gate)."""
    gate = gate_for(request, INVOICE, "delete")
    version = parse_version(request.headers.get("if-match"))
    if version is None:
        version = gate.read_invoice(invoice_id=invoice_id).version_id or 1
    view = gate.cancel_invoice(invoice_id=invoice_id, expected_version=version, reason=DELETED_REASON)
    return resource_response(request, _invoice(view))


@router.get("/Invoice/{invoice_id}/_history")
def invoice_history(request: Request, invoice_id: str) -> Response:
    return history_response(request, INVOICE, invoice_id, invoice_to_fhir)


@router.get("/Invoice/{invoice_id}/_history/{version_id}")
def vread_invoice(request: Request, invoice_id: str, version_id: str) -> Response:
    return vread_response(request, INVOICE, invoice_id, version_id, invoice_to_fhir)


# == PaymentReconciliation =====================================================================
@router.post("/PaymentReconciliation")
def record_payment(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    gate = gate_for(request, PAYMENT, "create")
    resource = validated(PaymentReconciliation, body, PAYMENT)
    view = gate.record_payment(data=payment_input(resource, request.headers.get("if-match")))
    return resource_response(request, payment_to_fhir(view.model_dump()), status=201)


@router.get("/PaymentReconciliation")
def search_payments(request: Request) -> Response:
    """The payments of one invoice (`request=Invoice/<id>`) or of one patient's invoices
    (`patient=Patient/<id>`), newest first, optionally by `created` date and `outcome`. Read
    through the gate as the invoices they pay (the same access, audit and exposure as an
    Invoice read or search): no browsing across patients."""
    gate = gate_for(request, PAYMENT, "search")  # who asks, first (a token's scopes too)
    params = request.query_params
    unknown = sorted(set(params) - PAYMENT_SEARCH - {"_count", "_page", "_format"})
    if unknown:
        raise InvalidInput("unsupported search parameters: " + ", ".join(unknown))
    for name in PAYMENT_SEARCH:
        if len(params.getlist(name)) > 1 and name != "created":
            raise InvalidInput(f"{name} is given once")
    invoice_id = reference_id(params.get("request"), INVOICE) if "request" in params else None
    patient_id = reference_id(params.get("patient"), "Patient") if "patient" in params else None
    if invoice_id is None and patient_id is None:
        raise InvalidInput(
            "a payment search needs request=Invoice/<id> or patient=Patient/<id>: there is no browsing"
        )
    created = params.getlist("created")
    for criterion in created:  # a malformed date or page is refused before anything is read
        date_matches(dt.datetime.now(dt.UTC), [criterion])
    count_param(request)
    page_param(request)
    outcome = params.get("outcome")
    if outcome is not None and outcome not in ("queued", "complete", "error", "partial"):
        raise InvalidInput("outcome is queued, complete, error or partial")
    if invoice_id is not None:
        views = [gate.read_invoice(invoice_id=invoice_id)]
        if patient_id is not None:
            views = [v for v in views if v.patient_id == patient_id]
    else:
        assert patient_id is not None
        views = gate.list_invoices(patient_id=patient_id)
    found = [
        (payment.received_at, view.model_dump(), payment.id)
        for view in views
        for payment in view.payments or []
        if outcome in (None, "complete") and (not created or date_matches(payment.received_at, created))
    ]
    found.sort(key=lambda f: f[0], reverse=True)
    return paged(request, PAYMENT, [payment_to_fhir(d, pid) for _at, d, pid in found])


def _read_payment(request: Request, payment_id: str) -> dict[str, Any]:
    gate = gate_for(request, PAYMENT, "read")
    view = gate.read_payment(payment_id=payment_id)
    return payment_to_fhir(view.model_dump(), payment_id)


@router.get("/PaymentReconciliation/{payment_id}")
def read_payment(request: Request, payment_id: str) -> Response:
    return resource_response(request, _read_payment(request, payment_id))


@router.get("/PaymentReconciliation/{payment_id}/_history/{version_id}")
def vread_payment(request: Request, payment_id: str, version_id: str) -> Response:
    """A payment is never changed: its one version is 1."""
    resource = _read_payment(request, payment_id)
    if version_id != "1":
        raise NotFound("no such version")
    return resource_response(request, resource)


MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            INVOICE,
            ("read", "vread", "history-instance", "search-type", "create", "update", "delete"),
            searcher=INVOICE_SEARCH,
            writes=Writes(
                Invoice,
                invoice_to_fhir,
                creates="issue_invoice",
                create=lambda r, g, m: ("issue_invoice", {"data": invoice_input(r)}),
                updates=invoice_operation,
                update=invoice_change,
                delete=lambda rid, v: (
                    "cancel_invoice",
                    {"invoice_id": rid, "expected_version": v, "reason": DELETED_REASON},
                ),
                current=lambda g, rid: g.read_invoice(invoice_id=rid),
            ),
        ),
        ResourceType(
            PAYMENT,
            ("read", "vread", "search-type", "create"),
            # `patient` is carnet's: the patient billed by the invoice paid (R4 has no such parameter).
            {"request": "reference", "patient": "reference", "created": "date", "outcome": "token"},
            # A payment names the invoice version it pays (Invoice/<id>/_history/<n>) in its
            # detail, or in the entry's request.ifMatch.
            writes=Writes(
                PaymentReconciliation,
                payment_to_fhir,
                creates="record_payment",
                create=lambda r, g, if_match: ("record_payment", {"data": payment_input(r, if_match)}),
            ),
        ),
    ),
)
