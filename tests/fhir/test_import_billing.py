"""`carnet import` of Invoices and PaymentReconciliations from another system, through the
audited system door: numbers kept (or given in the facility's sequence), payments pointed at the
invoices of the run in any order and file, never more than is due, the settling one balances
the invoice; each rejected resource reported with its OperationOutcome and nothing of it
written; a transaction is all or nothing; the imported invoices are then read through the gate
by billing (audited) and refused to a nurse (audited)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.billing.models import Invoice, InvoiceLine, Payment
from carnet.fhir.resources.billing import PAYMENT_METHOD
from carnet.kernel.errors import NotFound
from carnet.org.models import Facility
from carnet.phi.gate import Gate
from carnet.phi.importer import import_files
from carnet.runtime import Runtime
from tests.factories import make_account, make_facility, make_nurse, register_patient
from tests.fhir.conftest import audit_rows
from tests.fhir.test_billing import _line
from tests.fhir.test_import import _ndjson, _patient


def _invoice(
    subject: str, *, number: str | None = None, source_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Invoice",
        "status": "issued",
        "subject": {"reference": subject},
        "date": "2025-03-04T10:00:00+01:00",
        "lineItem": [_line("CS", "Consultation", 30), _line("DEQP003", "Électrocardiogramme", 14.26)],
        **extra,
    }
    if number is not None:
        body["identifier"] = [{"system": "urn:oid:1.2.3.4", "value": number}]
    if source_id is not None:
        body["id"] = source_id
    return body


def _payment(invoice: str, euros: float, method: str | None = "card") -> dict[str, Any]:
    money = {"value": euros, "currency": "EUR"}
    body: dict[str, Any] = {
        "resourceType": "PaymentReconciliation",
        "status": "active",
        "created": "2025-03-10T09:00:00+01:00",
        "paymentDate": "2025-03-10",
        "paymentAmount": money,
        "detail": [
            {"type": {"coding": [{"code": "payment"}]}, "request": {"reference": invoice}, "amount": money}
        ],
    }
    if method is not None:
        body["extension"] = [{"url": PAYMENT_METHOD, "valueCode": method}]
    return body


def _entry(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
    return dict(entry, fullUrl=full_url) if full_url else entry


def _bundle(path: Path, kind: str, *entries: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"resourceType": "Bundle", "type": kind, "entry": list(entries)}))
    return path


def _billing_rows(runtime: Runtime) -> tuple[int, int, int]:
    with runtime.session_factory() as session:
        return tuple(  # type: ignore[return-value]
            int(session.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Invoice, InvoiceLine, Payment)
        )


def _by_number(runtime: Runtime) -> dict[str, tuple[str, int, int]]:
    """number -> (status, total, paid) of every invoice."""
    with runtime.session_factory() as session:
        out = {}
        for invoice in session.scalars(select(Invoice)):
            paid = session.scalar(
                select(func.coalesce(func.sum(Payment.amount_cents), 0)).where(
                    Payment.invoice_id == invoice.id
                )
            )
            out[invoice.number] = (invoice.status, invoice.total_cents, int(paid or 0))
        return out


def test_a_transaction_imports_invoices_and_their_payments(runtime: Runtime, tmp_path: Path) -> None:
    facility = make_facility(runtime)
    with runtime.session_factory() as session:
        finess = session.scalar(select(Facility.finess).where(Facility.id == facility))
    patient, paid, numbered = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    entries = [
        _entry(_patient("p", "2900175000021"), patient),
        _entry(_payment(paid, 30)),  # before the invoice it pays: resolved once the Bundle is read
        _entry(_payment(paid, 14.26, method="cash")),
        _entry(_invoice(patient, number="EXT-2025-0042"), paid),
        _entry(_invoice(patient), numbered),  # no number: the facility's sequence
        _entry(_invoice(patient, number="EXT-2025-0043", status="cancelled", cancelledReason="duplicate")),
        _entry(_invoice(patient, number="EXT-2025-0044", status="draft")),
    ]
    report = import_files(
        runtime,
        paths=[_bundle(tmp_path / "billing.json", "transaction", *entries)],
        facility_id=facility,
        operator="test-import",
    )
    assert report.rejected == []
    assert report.accepted == {"Patient": 1, "Invoice": 4, "PaymentReconciliation": 2}
    year = dt.datetime.now(dt.UTC).year
    assert _by_number(runtime) == {
        "EXT-2025-0042": ("balanced", 4426, 4426),
        f"F{finess}-{year}-0000001": ("issued", 4426, 0),
        "EXT-2025-0043": ("cancelled", 4426, 0),
        "EXT-2025-0044": ("draft", 4426, 0),
    }
    with runtime.session_factory() as session:
        balanced = session.scalars(select(Invoice).where(Invoice.number == "EXT-2025-0042")).one()
        assert balanced.version_id == 1 and balanced.issued_at is not None
        assert balanced.issued_at.astimezone(dt.UTC) == dt.datetime(2025, 3, 4, 9, tzinfo=dt.UTC)
        events = session.execute(
            select(AuditEvent.kind, AuditEvent.detail, AuditEvent.query).where(
                AuditEvent.username == "system:test-import"
            )
        ).all()
    assert [e.kind for e in events] == ["phi:system:access", "phi:resource:create"]
    assert events[1].query == "import;resources=7"

    # Read through the gate: billing sees the invoice and its payments (audited); a nurse of the
    # facility is refused like a missing record (audited) and sees nothing.
    clerk = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    view = Gate(runtime, clerk).read_invoice(invoice_id=str(balanced.id))
    assert view.status == "balanced" and view.paid_cents == 4426
    assert sorted(p.method for p in view.payments or []) == ["card", "cash"]
    assert audit_rows(runtime, clerk.account_id) == [("phi:resource:read", "success", "Invoice")]
    nurse = make_nurse(runtime, facility)
    with pytest.raises(NotFound):
        Gate(runtime, nurse).read_invoice(invoice_id=str(balanced.id))
    assert audit_rows(runtime, nurse.account_id) == [("phi:resource:read", "denied", "Invoice")]

    # The same Bundle with one payment too many: all or nothing, each entry reported.
    before = _billing_rows(runtime)
    again = [dict(e) for e in entries]
    again[0] = _entry(_patient("p2", "2900175000022"), patient)
    again[3] = _entry(_invoice(patient, number="EXT-2025-0052"), paid)
    again[5] = _entry(_invoice(patient, number="EXT-2025-0053", status="cancelled", cancelledReason="x"))
    again[6] = _entry(_invoice(patient, number="EXT-2025-0054", status="draft"))
    again.append(_entry(_payment(paid, 0.01)))
    report = import_files(
        runtime,
        paths=[_bundle(tmp_path / "again.json", "transaction", *again)],
        facility_id=facility,
        operator="test-import",
    )
    assert report.accepted == {} and len(report.rejected) == len(again)
    [why] = [r for r in report.rejected if r.source == "again.json#entry8"]
    assert why.outcome["resourceType"] == "OperationOutcome"
    assert "still due" in why.outcome["issue"][0]["diagnostics"]
    assert _billing_rows(runtime) == before


def test_ndjson_invoices_then_payments_keep_the_valid_and_report_each_rejected(
    runtime: Runtime, tmp_path: Path
) -> None:
    facility = make_facility(runtime)
    with runtime.session_factory() as session:
        finess = session.scalar(select(Facility.finess).where(Facility.id == facility))
    already = register_patient(runtime, facility, family="Existante")
    patients = _ndjson(tmp_path / "Patient.ndjson", [_patient("a", "2900175000031")])
    invoices = _ndjson(
        tmp_path / "Invoice.ndjson",
        [
            _invoice("Patient/a", number="X-1", source_id="i1"),
            _invoice(f"Patient/{already.id}", number="X-2", source_id="i2", status="balanced"),
            _invoice("Patient/a", number="X-3", source_id="i3", status="draft"),
            _invoice("Patient/a", number="X-1", source_id="dup"),  # 4: the same number again
            _invoice("Patient/a", number=f"F{finess}-2025-0000001"),  # 5: carnet's own numbering
            _invoice("Patient/a", status="cancelled"),  # 6: no reason
            dict(_invoice("Patient/a"), lineItem=[_line("CS", "Consultation", -3)]),  # 7
            _invoice("Patient/zzz"),  # 8: no such patient
            _invoice("Patient/a", status="entered-in-error"),  # 9
        ],
    )
    payments = _ndjson(
        tmp_path / "PaymentReconciliation.ndjson",
        [
            _payment("Invoice/i1", 40),
            _payment("Invoice/i1", 4.26),  # settles it: balanced
            _payment("Invoice/i1", 0.01),  # 3: nothing is due any more
            _payment("Invoice/i3", 10),  # 4: a draft takes no payment
            _payment("Invoice/nope", 10),  # 5: no such invoice in the import
            _payment("Invoice/i2", 10, method=None),  # 6: no method
            _payment("Invoice/i2", 10, method="bitcoin"),  # 7
            {
                k: v for k, v in _payment("Invoice/i2", 10).items() if k not in ("created", "paymentDate")
            },  # 8: no date (R4 requires it)
            _payment("Invoice/i2", 44.26),  # what the other system said was paid
        ],
    )
    before = _billing_rows(runtime)
    report = import_files(
        runtime, paths=[patients, invoices, payments], facility_id=facility, operator="test-import"
    )
    assert report.accepted == {"Patient": 1, "Invoice": 3, "PaymentReconciliation": 3}
    rejected = {r.source: r.outcome["issue"][0]["diagnostics"] for r in report.rejected}
    assert sorted(rejected) == sorted(
        [f"Invoice.ndjson:{n}" for n in (4, 5, 6, 7, 8, 9)]
        + [f"PaymentReconciliation.ndjson:{n}" for n in (3, 4, 5, 6, 7, 8)]
    )
    for source, expected in {
        "Invoice.ndjson:4": "already in this import",
        "Invoice.ndjson:5": "carnet numbering",
        "Invoice.ndjson:6": "cancelledReason",
        "Invoice.ndjson:7": "positive amount",
        "Invoice.ndjson:8": "no patient",
        "Invoice.ndjson:9": "draft, issued, balanced or cancelled",
        "PaymentReconciliation.ndjson:3": "still due",
        "PaymentReconciliation.ndjson:4": "draft",
        "PaymentReconciliation.ndjson:5": "no Invoice of this import",
        "PaymentReconciliation.ndjson:6": "method",
        "PaymentReconciliation.ndjson:7": "check method",
        # R4 requires both
        "PaymentReconciliation.ndjson:8": "PaymentReconciliation.created, PaymentReconciliation.paymentDate",
    }.items():
        assert expected in rejected[source], (source, rejected[source])
    assert all(r.outcome["resourceType"] == "OperationOutcome" for r in report.rejected)
    assert _billing_rows(runtime) == (before[0] + 3, before[1] + 6, before[2] + 3)
    assert _by_number(runtime) == {
        "X-1": ("balanced", 4426, 4426),
        "X-2": ("balanced", 4426, 4426),
        "X-3": ("draft", 4426, 0),
    }
    # A later run: the numbers are taken, and an invoice already in carnet is paid through the API.
    with runtime.session_factory() as session:
        existing = session.scalars(select(Invoice.id).where(Invoice.number == "X-3")).one()
    later = _ndjson(
        tmp_path / "later.ndjson",
        [_invoice(f"Patient/{already.id}", number="X-2"), _payment(f"Invoice/{existing}", 1)],
    )
    report = import_files(runtime, paths=[later], facility_id=facility, operator="test-import")
    assert report.accepted == {}
    assert [r.outcome["issue"][0]["diagnostics"].split(": ", 1)[1] for r in report.rejected] == [
        "an invoice with this number is already in carnet",
        "detail.request names no Invoice of this import (an invoice already in carnet is paid through"
        " the API, naming the version read)",
    ]
    assert _billing_rows(runtime) == (before[0] + 3, before[1] + 6, before[2] + 3)
