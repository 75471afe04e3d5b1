"""Billing follow-ups over FHIR, driven by fhirpy: a transaction pays the Invoice it creates
(its `urn:uuid:`, version 1 by construction); a batch payment honours `request.ifMatch`
(stale -> that entry 412, the others unaffected); PaymentReconciliation search by invoice and
by patient, with Invoice's access rules, audited and exposure-accounted; bad input changes
nothing; the wrong role is refused and the refusal audited."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from fhirpy.base.exceptions import ForbiddenError, OperationOutcome, ResourceNotFound
from sqlalchemy import select

from carnet.access.roles import Role
from carnet.billing.models import Invoice
from carnet.runtime import Runtime
from tests.factories import link_care, make_account, make_physician, register_patient
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_billing import _hospital, _invoice, _payment, _stored
from tests.fhir.test_stays_and_reports import _exposures

NEW = "urn:uuid:7f3c1a52-0d4e-4b8e-9d7a-3c2b1a0f9e01"


def _post(resource: dict[str, Any], **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    return entry


def _paying(reference: str, euros: float) -> dict[str, Any]:
    """A payment whose detail.request is `reference` as given (no version of its own)."""
    payment = _payment({"id": "x", "meta": {"versionId": "1"}}, euros)
    payment["detail"][0]["request"] = {"reference": reference}
    return payment


def _bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _status(runtime: Runtime, invoice_id: str) -> tuple[str, int]:
    with runtime.session_factory() as session:
        row = session.scalars(select(Invoice).where(Invoice.id == uuid.UUID(invoice_id))).one()
        return row.status, row.version_id


def test_a_transaction_pays_the_invoice_it_creates(fhir_server_both: Server) -> None:
    server = fhir_server_both
    runtime = server.runtime
    facility, clerk, patient_id, _stay = _hospital(runtime)
    client = server.client_for(clerk)
    invoice_entry = dict(_post(_invoice(patient_id)), fullUrl=NEW)

    # Refused as bad input, nothing written: a second payment of the new invoice in the same
    # transaction (its version is no longer 1), an ifMatch that is not version 1.
    before = _stored(runtime)
    bad = [
        (
            _bundle("transaction", invoice_entry, _post(_paying(NEW, 10)), _post(_paying(NEW, 20))),
            "paid once",
        ),
        (_bundle("transaction", invoice_entry, _post(_paying(NEW, 30), ifMatch='W/"2"')), "version 1"),
    ]
    for body, message in bad:
        with pytest.raises(OperationOutcome, match=message):
            client.execute("", method="post", data=body)
    assert _stored(runtime) == before

    # A physician in the patient's care sends the same transaction: refused, audited, nothing.
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient_id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    with pytest.raises(ForbiddenError):  # a physician has no billing permission at all
        server.client_for(doctor).execute(
            "", method="post", data=_bundle("transaction", invoice_entry, _post(_paying(NEW, 30)))
        )
    assert audit_rows(runtime, doctor.account_id) == [("phi:resource:transaction", "denied", "Patient")]
    assert _stored(runtime) == before

    # The clerk: the invoice and its payment, in one transaction; the invoice is balanced.
    answer = client.execute(
        "", method="post", data=_bundle("transaction", invoice_entry, _post(_paying(NEW, 30)))
    )
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "201 Created"]
    invoice, payment = (e["resource"] for e in answer["entry"])
    assert payment["resourceType"] == "PaymentReconciliation"
    assert payment["detail"][0]["request"] == {"reference": f"Invoice/{invoice['id']}"}
    assert _status(runtime, invoice["id"]) == ("balanced", 2)
    assert _stored(runtime)[:3] == (before[0] + 1, before[1] + 1, before[2] + 1)
    rows = audit_rows(runtime, clerk.account_id)
    assert rows.count(("phi:resource:transaction", "success", "Patient")) == 1
    assert rows.count(("phi:resource:transaction", "error", "Patient")) == 2  # the two bad ones


def test_a_batch_payment_honours_if_match(fhir_server_both: Server) -> None:
    server = fhir_server_both
    runtime = server.runtime
    _facility, clerk, patient_id, _stay = _hospital(runtime)
    client = server.client_for(clerk)
    first = client.resource("Invoice", **_invoice(patient_id))
    first.save()
    second = client.resource("Invoice", **_invoice(patient_id))
    second.save()
    to_first = _paying(f"Invoice/{first['id']}", 10)
    versioned = _payment(second, 5)  # names version 1 in its detail
    answer = client.execute(
        "",
        method="post",
        data=_bundle(
            "batch",
            _post(to_first, ifMatch='W/"1"'),  # pays the first at version 1 -> version 2
            _post(to_first, ifMatch='W/"1"'),  # stale now: 412, nothing written
            _post(versioned, ifMatch='W/"3"'),  # two versions named: 400
            _post(_paying(f"Invoice/{second['id']}", 5)),  # no version at all: 400
            _post(versioned, ifMatch='W/"1"'),  # agrees with its detail: 201
        ),
    )
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created", "412", "400", "400", "201 Created"]
    outcomes = [
        e["response"].get("outcome", {}).get("issue", [{}])[0].get("diagnostics", "") for e in answer["entry"]
    ]
    assert "entry 2" in outcomes[1] and "changed by someone else" in outcomes[1]
    assert "two versions" in outcomes[2] and "version" in outcomes[3]
    assert _status(runtime, first["id"]) == ("issued", 2)
    assert _status(runtime, second["id"]) == ("issued", 2)
    with runtime.session_factory() as session:
        paid = {str(i.id): i.version_id for i in session.scalars(select(Invoice))}
    assert paid == {first["id"]: 2, second["id"]: 2}


def test_payments_are_searched_by_invoice_and_by_patient(fhir_server_both: Server) -> None:
    server = fhir_server_both
    runtime = server.runtime
    facility, clerk, patient_id, _stay = _hospital(runtime)
    client = server.client_for(clerk)
    invoice = client.resource("Invoice", **_invoice(patient_id))
    invoice.save()
    other = client.resource("Invoice", **_invoice(patient_id))
    other.save()
    client.resource("PaymentReconciliation", **_payment(invoice, 10)).save()
    invoice = client.reference("Invoice", invoice["id"]).to_resource()
    client.resource("PaymentReconciliation", **_payment(invoice, 20, method="cash")).save()
    client.resource("PaymentReconciliation", **_payment(other, 30)).save()
    exposed = _exposures(runtime, clerk, "Invoice")
    audited = len(audit_rows(runtime, clerk.account_id))

    of_invoice = client.resources("PaymentReconciliation").search(request=f"Invoice/{invoice['id']}").fetch()
    assert sorted(p["paymentAmount"]["value"] for p in of_invoice) == [10, 20]
    assert {p["detail"][0]["request"]["reference"] for p in of_invoice} == {f"Invoice/{invoice['id']}"}
    of_patient = client.resources("PaymentReconciliation").search(patient=f"Patient/{patient_id}").fetch()
    assert sorted(p["paymentAmount"]["value"] for p in of_patient) == [10, 20, 30]
    today = dt.date.today().isoformat()
    dated = client.resources("PaymentReconciliation").search(patient=patient_id, created=f"ge{today}").fetch()
    assert len(dated) == 3
    assert (
        client.resources("PaymentReconciliation").search(patient=patient_id, created="lt2000-01-01").fetch()
        == []
    )
    assert client.resources("PaymentReconciliation").search(patient=patient_id, outcome="error").fetch() == []
    paged = client.execute("PaymentReconciliation", method="get", params={"patient": patient_id, "_count": 2})
    assert paged["total"] == 3 and len(paged["entry"]) == 2
    assert any(link["relation"] == "next" for link in paged["link"])
    # Each search is the gate's read of the invoices: audited and exposure-accounted.
    rows = audit_rows(runtime, clerk.account_id)[audited:]
    assert rows == [("phi:resource:read", "success", "Invoice")] * 6
    assert _exposures(runtime, clerk, "Invoice") == exposed + 6

    # Bad input: a clear 400, nothing read, nothing audited.
    for params, message in (
        ({}, "no browsing"),
        ({"status": "active"}, "unsupported"),
        ({"patient": patient_id, "created": "yesterday"}, "date"),
        ({"patient": patient_id, "outcome": "paid"}, "outcome"),
        ({"request": f"Patient/{patient_id}"}, "Invoice"),
        ({"patient": patient_id, "_count": "0"}, "_count"),
    ):
        with pytest.raises(OperationOutcome, match=message):
            client.execute("PaymentReconciliation", method="get", params=params)
    assert len(audit_rows(runtime, clerk.account_id)) == audited + 6

    # A physician in the patient's care bills nothing and reads no payment: refused, audited.
    doctor = make_physician(runtime, facility)
    assert doctor.practitioner_id is not None
    link_care(runtime, patient_id=patient_id, practitioner_id=doctor.practitioner_id, facility_id=facility)
    doctors = server.client_for(doctor)
    with pytest.raises(ResourceNotFound):
        doctors.resources("PaymentReconciliation").search(request=f"Invoice/{invoice['id']}").fetch()
    with pytest.raises(ResourceNotFound):
        doctors.resources("PaymentReconciliation").search(patient=patient_id).fetch()
    assert audit_rows(runtime, doctor.account_id) == [("phi:resource:read", "denied", "Invoice")] * 2
    assert _exposures(runtime, doctor, "Invoice") == 0


def test_a_patient_searches_their_own_payments_only(fhir_server_both: Server) -> None:
    server = fhir_server_both
    runtime = server.runtime
    facility, clerk, patient_id, _stay = _hospital(runtime)
    client = server.client_for(clerk)
    invoice = client.resource("Invoice", **_invoice(patient_id))
    invoice.save()
    client.resource("PaymentReconciliation", **_payment(invoice, 30)).save()
    other = register_patient(runtime, facility, family="Autre")
    me = make_account(runtime, roles=[Role.PATIENT], facility_id=None, patient_id=uuid.UUID(patient_id))
    mine = server.client_for(me)
    found = mine.resources("PaymentReconciliation").search(patient=patient_id).fetch()
    assert [p["paymentAmount"]["value"] for p in found] == [30]
    with pytest.raises(ResourceNotFound):  # another patient's: as if there were none
        mine.resources("PaymentReconciliation").search(patient=other.id).fetch()
    assert audit_rows(runtime, me.account_id) == [
        ("phi:resource:read", "success", "Invoice"),
        ("phi:resource:read", "denied", "Invoice"),
    ]
