"""Invoicing and payments over FHIR, driven by fhirpy: a billing clerk issues an Invoice (numbered
and totalled by the gate), reads it, records PaymentReconciliations until it is balanced,
cancels another with If-Match (stale -> 412), every version kept; physicians and nurses are
refused like a missing record and the refusal is audited; bad input changes nothing."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound
from sqlalchemy import func, select, update

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.billing.models import Invoice, InvoiceLine, Payment
from carnet.fhir.resources.billing import INVOICE_ENCOUNTER, PAYMENT_METHOD
from carnet.org.models import Facility
from carnet.patients.models import Patient as PatientRow
from carnet.patients.models import ResourceVersion
from carnet.phi.system import system_access
from carnet.runtime import Runtime
from carnet.scheduling.models import Encounter
from tests.factories import (
    admit,
    link_care,
    make_account,
    make_facility,
    make_invoice,
    make_nurse,
    make_physician,
    register_patient,
)
from tests.fhir.conftest import Server, audit_rows
from tests.fhir.test_stays_and_reports import _exposures, _race

CCAM = "https://www.ameli.fr/accueil-de-la-ccam"


def _line(code: str, display: str, euros: float, currency: str = "EUR") -> dict[str, Any]:
    return {
        "chargeItemCodeableConcept": {"coding": [{"system": CCAM, "code": code, "display": display}]},
        "priceComponent": [{"type": "base", "amount": {"value": euros, "currency": currency}}],
    }


def _invoice(patient_id: str, *lines: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Invoice",
        "status": "issued",
        "subject": {"reference": f"Patient/{patient_id}"},
        "lineItem": list(lines) or [_line("CS", "Consultation", 30)],
        **extra,
    }


def _payment(invoice: dict[str, Any], euros: float, method: str = "card") -> dict[str, Any]:
    money = {"value": euros, "currency": "EUR"}
    return {
        "resourceType": "PaymentReconciliation",
        "status": "active",
        "created": dt.datetime.now(dt.UTC).isoformat(),
        "paymentDate": dt.date.today().isoformat(),
        "paymentAmount": money,
        "extension": [{"url": PAYMENT_METHOD, "valueCode": method}],
        "detail": [
            {
                "type": {"coding": [{"code": "payment"}]},
                "request": {"reference": f"Invoice/{invoice['id']}/_history/{invoice['meta']['versionId']}"},
                "amount": money,
            }
        ],
    }


def _hospital(runtime: Runtime) -> tuple[uuid.UUID, Actor, str, str]:
    """A facility, its billing clerk, a patient (in a physician's care) and their stay."""
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    patient = register_patient(runtime, facility, family="Facture")
    stay = admit(runtime, patient_id=patient.id, facility_id=facility, location_id=None)
    return facility, clerk, patient.id, str(stay)


def _stored(runtime: Runtime) -> tuple[int, int, int, int]:
    """(invoices, lines, payments, kept Invoice versions) in the database."""
    with runtime.session_factory() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Invoice)) or 0),
            int(session.scalar(select(func.count()).select_from(InvoiceLine)) or 0),
            int(session.scalar(select(func.count()).select_from(Payment)) or 0),
            int(
                session.scalar(
                    select(func.count())
                    .select_from(ResourceVersion)
                    .where(ResourceVersion.resource_type == "Invoice")
                )
                or 0
            ),
        )


def _with_if_match(server: Server, actor: Actor, version: int) -> SyncFHIRClient:
    client = server.client_for(actor)
    return SyncFHIRClient(
        f"{server.url}/fhir", extra_headers={**(client.extra_headers or {}), "If-Match": f'W/"{version}"'}
    )


def test_an_invoice_is_issued_read_paid_and_balanced(fhir_server_both: Server) -> None:
    server = fhir_server_both
    runtime = server.runtime
    facility, clerk, patient_id, stay = _hospital(runtime)
    client = server.client_for(clerk)

    invoice = client.resource(
        "Invoice",
        **_invoice(
            patient_id,
            _line("DEQP003", "Électrocardiogramme", 14.26),
            _line("CS", "Consultation", 30),
            totalGross={"value": 44.26, "currency": "EUR"},
            extension=[{"url": INVOICE_ENCOUNTER, "valueReference": {"reference": f"Encounter/{stay}"}}],
        ),
    )
    invoice.save()
    with runtime.session_factory() as session:
        finess = session.scalar(select(Facility.finess).where(Facility.id == facility))
    year = dt.datetime.now(dt.UTC).year
    assert invoice["identifier"] == [{"value": f"F{finess}-{year}-0000001"}]
    assert invoice["status"] == "issued" and invoice["meta"]["versionId"] == "1"
    assert invoice["totalGross"] == {"value": 44.26, "currency": "EUR"}
    plain = invoice.serialize()
    assert plain["subject"] == {"reference": f"Patient/{patient_id}"}
    assert plain["extension"][0]["valueReference"] == {"reference": f"Encounter/{stay}"}
    assert [line["priceComponent"][0]["amount"]["value"] for line in invoice["lineItem"]] == [14.26, 30]
    second = client.resource("Invoice", **_invoice(patient_id))
    second.save()
    assert second["identifier"] == [{"value": f"F{finess}-{year}-0000002"}]  # in order, no gap

    read = client.reference("Invoice", invoice["id"]).to_resource()
    assert read["identifier"] == invoice["identifier"] and read["meta"]["versionId"] == "1"
    found = client.resources("Invoice").search(patient=patient_id, status="issued").fetch()
    assert {i["id"] for i in found} == {invoice["id"], second["id"]}

    # Paid in two goes: the first leaves it issued (version 2), the second balances it.
    first = client.resource("PaymentReconciliation", **_payment(invoice, 20))
    first.save()
    assert first["paymentAmount"] == {"value": 20, "currency": "EUR"}
    assert first.serialize()["detail"][0]["request"] == {"reference": f"Invoice/{invoice['id']}"}
    assert first["extension"] == [{"url": PAYMENT_METHOD, "valueCode": "card"}]
    invoice = client.reference("Invoice", invoice["id"]).to_resource()
    assert invoice["status"] == "issued" and invoice["meta"]["versionId"] == "2"
    # The same payment recorded again from the version already paid: 412, nothing written.
    before = _stored(runtime)
    stale = dict(_payment(invoice, 5), detail=[dict(_payment(invoice, 5)["detail"][0])])
    stale["detail"][0]["request"] = {"reference": f"Invoice/{invoice['id']}/_history/1"}
    with pytest.raises(MultipleResourcesFound):
        client.resource("PaymentReconciliation", **stale).save()
    with pytest.raises(OperationOutcome, match="still due"):  # more than the 24.26 due
        client.resource("PaymentReconciliation", **_payment(invoice, 30)).save()
    assert _stored(runtime) == before
    rest = client.resource("PaymentReconciliation", **_payment(invoice, 24.26, method="cash"))
    rest.save()
    assert rest["disposition"] == f"invoice F{finess}-{year}-0000001 is balanced"
    invoice = client.reference("Invoice", invoice["id"]).to_resource()
    assert invoice["status"] == "balanced" and invoice["meta"]["versionId"] == "3"
    with pytest.raises(MultipleResourcesFound):  # a balanced invoice takes no more payment
        client.resource("PaymentReconciliation", **_payment(invoice, 1)).save()

    again = client.reference("PaymentReconciliation", first["id"]).to_resource()
    assert again["paymentAmount"]["value"] == 20 and again["meta"]["versionId"] == "1"
    assert client.execute(f"PaymentReconciliation/{rest['id']}/_history/1", method="get")["id"] == rest["id"]
    history = client.execute(f"Invoice/{invoice['id']}/_history", method="get")
    assert [e["resource"]["status"] for e in history["entry"]] == ["balanced", "issued", "issued"]
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "PUT", "POST"]
    assert client.execute(f"Invoice/{invoice['id']}/_history/1", method="get")["meta"]["versionId"] == "1"

    rows = audit_rows(runtime, clerk.account_id)
    assert rows.count(("phi:resource:create", "success", "Invoice")) == 2
    assert rows.count(("phi:resource:update", "success", "Invoice")) == 2  # the two payments
    assert rows.count(("phi:resource:update", "error", "Invoice")) == 3  # stale, too much, balanced
    assert ("phi:resource:read", "success", "Invoice") in rows
    assert _exposures(runtime, clerk, "Invoice") >= 6  # every write and read names the patient


def test_an_invoice_is_cancelled_with_if_match_never_deleted(fhir_server_both: Server) -> None:
    server = fhir_server_both
    runtime = server.runtime
    _facility, clerk, patient_id, _stay = _hospital(runtime)
    client = server.client_for(clerk)
    invoice = client.resource("Invoice", **_invoice(patient_id))
    invoice.save()

    # If-Match header: cancelled, with its reason; the same version again is stale (412).
    cancel = dict(invoice, status="cancelled", cancelledReason="acte facturé deux fois")
    cancel.pop("meta")
    answer = _with_if_match(server, clerk, 1).execute(f"Invoice/{invoice['id']}", method="put", data=cancel)
    assert answer["status"] == "cancelled" and answer["cancelledReason"] == "acte facturé deux fois"
    assert answer["meta"]["versionId"] == "2"
    with pytest.raises(MultipleResourcesFound):
        _with_if_match(server, clerk, 1).execute(
            f"Invoice/{invoice['id']}", method="put", data=dict(cancel, cancelledReason="autre")
        )
    with pytest.raises(MultipleResourcesFound):  # already cancelled, even at the right version
        client.resource("Invoice", **dict(cancel, meta={"versionId": "2"})).save()
    with pytest.raises(OperationOutcome, match="cancelledReason"):
        client.resource("Invoice", **dict(cancel, cancelledReason=None, meta={"versionId": "2"})).save()
    with pytest.raises(MultipleResourcesFound):  # a cancelled invoice takes no payment
        client.resource("PaymentReconciliation", **_payment(answer, 10)).save()
    kept = client.reference("Invoice", invoice["id"]).to_resource()
    assert kept["cancelledReason"] == "acte facturé deux fois" and kept["meta"]["versionId"] == "2"
    first = client.execute(f"Invoice/{invoice['id']}/_history/1", method="get")
    assert first["status"] == "issued" and "cancelledReason" not in first

    # A draft is issued by PUT status issued; DELETE cancels (kept, with the API's reason).
    draft = client.resource("Invoice", **_invoice(patient_id, status="draft"))
    draft.save()
    assert draft["status"] == "draft" and "date" not in draft
    draft["status"] = "issued"
    draft.save()
    assert draft["status"] == "issued" and draft["meta"]["versionId"] == "2" and draft["date"]
    draft.delete()
    deleted = client.reference("Invoice", draft["id"]).to_resource()
    assert deleted["status"] == "cancelled" and deleted["cancelledReason"] == "deleted through the FHIR API"
    cancelled = client.resources("Invoice").search(patient=patient_id, status="cancelled").fetch()
    assert {i["id"] for i in cancelled} == {invoice["id"], draft["id"]}

    # An invoice that took a payment is not cancelled: the payment would vanish from the books.
    paid = client.resource("Invoice", **_invoice(patient_id))
    paid.save()
    client.resource("PaymentReconciliation", **_payment(paid, 10)).save()
    with pytest.raises(MultipleResourcesFound):
        client.resource(
            "Invoice", **dict(paid, status="cancelled", cancelledReason="x", meta={"versionId": "2"})
        ).save()
    assert audit_rows(runtime, clerk.account_id).count(("phi:resource:update", "success", "Invoice")) == 4


def test_physicians_and_nurses_cannot_bill_and_the_refusal_is_audited(fhir_server_both: Server) -> None:
    server = fhir_server_both
    runtime = server.runtime
    facility, clerk, patient_id, _stay = _hospital(runtime)
    invoice = server.client_for(clerk).resource("Invoice", **_invoice(patient_id))
    invoice.save()
    doctor = make_physician(runtime, facility)
    nurse = make_nurse(runtime, facility)
    for actor in (doctor, nurse):  # both in the patient's care: still no billing
        assert actor.practitioner_id is not None
        link_care(runtime, patient_id=patient_id, practitioner_id=actor.practitioner_id, facility_id=facility)
    before = _stored(runtime)
    for actor in (doctor, nurse):
        client = server.client_for(actor)
        with pytest.raises(ResourceNotFound):
            client.resource("Invoice", **_invoice(patient_id)).save()
        with pytest.raises(ResourceNotFound):
            client.resource("PaymentReconciliation", **_payment(invoice, 30)).save()
        with pytest.raises(ResourceNotFound):
            client.resource(
                "Invoice", **dict(invoice, status="cancelled", cancelledReason="x", meta={"versionId": "1"})
            ).save()
        with pytest.raises(ResourceNotFound):
            client.reference("Invoice", invoice["id"]).to_resource()
        assert audit_rows(runtime, actor.account_id) == [
            ("phi:resource:create", "denied", "Invoice"),
            ("phi:resource:update", "denied", "Invoice"),
            ("phi:resource:update", "denied", "Invoice"),
            ("phi:resource:read", "denied", "Invoice"),
        ]
        assert _exposures(runtime, actor, "Invoice") == 0
    # The patient reads their own invoice (and pays at the desk): they issue none.
    me = make_account(runtime, roles=[Role.PATIENT], facility_id=None, patient_id=uuid.UUID(patient_id))
    mine = server.client_for(me)
    assert mine.reference("Invoice", invoice["id"]).to_resource()["identifier"] == invoice["identifier"]
    with pytest.raises(ResourceNotFound):
        mine.resource("Invoice", **_invoice(patient_id)).save()
    assert audit_rows(runtime, me.account_id) == [
        ("phi:resource:read", "success", "Invoice"),
        ("phi:resource:create", "denied", "Invoice"),
    ]
    # A billing clerk of another facility: the patient is not there for them either.
    other = make_account(runtime, roles=[Role.BILLING], facility_id=make_facility(runtime))
    with pytest.raises(ResourceNotFound):
        server.client_for(other).resource("Invoice", **_invoice(patient_id)).save()
    # Refused by the policy (SQLite), or not even seen through PostgreSQL row-level security.
    [(kind, outcome, _type)] = audit_rows(runtime, other.account_id)
    assert kind == "phi:resource:create" and outcome in ("denied", "error")
    assert _stored(runtime) == before


def test_bad_invoices_get_an_operation_outcome_and_change_nothing(fhir_server_both: Server) -> None:
    server = fhir_server_both
    runtime = server.runtime
    facility, clerk, patient_id, _stay = _hospital(runtime)
    someone_else = register_patient(runtime, facility, family="Autre")
    their_stay = admit(runtime, patient_id=someone_else.id, facility_id=facility, location_id=None)
    client = server.client_for(clerk)
    before = _stored(runtime)
    stay_of_another = [{"url": INVOICE_ENCOUNTER, "valueReference": {"reference": f"Encounter/{their_stay}"}}]
    bad: list[tuple[dict[str, Any], str]] = [
        (_invoice(patient_id, _line("CS", "Consultation", -30)), "positive amount"),
        (_invoice(patient_id, _line("CS", "Consultation", 0)), "positive amount"),
        (_invoice(patient_id, _line("CS", "Consultation", 12.345)), "two decimals"),
        (_invoice(patient_id, extension=stay_of_another), "unknown encounter"),
        (_invoice(patient_id, totalGross={"value": 99, "currency": "EUR"}), "totalGross"),
        (_invoice(patient_id, _line("CS", "A", 1), _line("CS", "B", 1, currency="USD")), "one currency"),
        (dict(_invoice(patient_id), lineItem=[]), "lineItem"),
        (_invoice(patient_id, status="balanced"), "issued"),
        (dict(_invoice(patient_id), subject={"reference": f"Encounter/{their_stay}"}), "Patient"),
    ]
    for body, message in bad:
        with pytest.raises(OperationOutcome, match=message):
            client.resource("Invoice", **body).save()
    with pytest.raises(ResourceNotFound):  # an unknown patient answers like a forbidden one
        client.resource("Invoice", **_invoice(str(uuid.uuid4()))).save()
    assert _stored(runtime) == before
    rows = audit_rows(runtime, clerk.account_id)
    assert rows.count(("phi:resource:create", "error", "Invoice")) == 2  # the stay, the unknown patient
    assert ("phi:resource:create", "success", "Invoice") not in rows

    # Bad payments: no version named, no method, two invoices, a negative amount.
    invoice = client.resource("Invoice", **_invoice(patient_id))
    invoice.save()
    before = _stored(runtime)
    unversioned = _payment(invoice, 5)
    unversioned["detail"][0]["request"] = {"reference": f"Invoice/{invoice['id']}"}
    no_method = dict(_payment(invoice, 5), extension=[])
    two = dict(_payment(invoice, 5), detail=_payment(invoice, 5)["detail"] * 2)
    negative = dict(_payment(invoice, 5), paymentAmount={"value": -5, "currency": "EUR"})
    bitcoin = dict(_payment(invoice, 5), extension=[{"url": PAYMENT_METHOD, "valueCode": "bitcoin"}])
    for body, message in (
        (unversioned, "version"),
        (no_method, "method"),
        (two, "one detail"),
        (negative, "positive"),
        (bitcoin, "check method"),
    ):
        with pytest.raises(OperationOutcome, match=message):
            client.resource("PaymentReconciliation", **body).save()
    assert _stored(runtime) == before


def test_invoices_and_payments_in_a_transaction_all_or_nothing(fhir_server_both: Server) -> None:
    server = fhir_server_both
    runtime = server.runtime
    _facility, clerk, patient_id, _stay = _hospital(runtime)
    client = server.client_for(clerk)
    owed = client.resource("Invoice", **_invoice(patient_id))
    owed.save()

    def bundle(version: str) -> dict[str, Any]:
        stale = dict(owed, meta={"versionId": version})
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": _invoice(patient_id), "request": {"method": "POST", "url": "Invoice"}},
                {
                    "resource": _payment(stale, 30),
                    "request": {"method": "POST", "url": "PaymentReconciliation"},
                },
            ],
        }

    before = _stored(runtime)
    with pytest.raises(MultipleResourcesFound):  # the payment is stale: the new invoice rolls back
        client.execute("", method="post", data=bundle("7"))
    assert _stored(runtime) == before
    answer = client.execute("", method="post", data=bundle("1"))
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "201 Created"]
    assert answer["entry"][1]["resource"]["resourceType"] == "PaymentReconciliation"
    assert client.reference("Invoice", owed["id"]).to_resource()["status"] == "balanced"
    assert (
        audit_rows(runtime, clerk.account_id).count(("phi:resource:transaction", "success", "Patient")) == 1
    )


def test_concurrent_clerks_get_distinct_numbers_and_one_payment_wins(fhir_server_both: Server) -> None:
    server = fhir_server_both
    runtime = server.runtime
    facility, clerk, patient_id, _stay = _hospital(runtime)
    clerks = [clerk] + [make_account(runtime, roles=[Role.BILLING], facility_id=facility) for _ in range(3)]
    clients = [server.client_for(c) for c in clerks]
    made: list[dict[str, Any]] = []

    def issue(client: SyncFHIRClient) -> Any:
        def job() -> None:
            invoice = client.resource("Invoice", **_invoice(patient_id))
            invoice.save()
            made.append(invoice.serialize())

        return job

    outcomes = _race([issue(c) for c in clients])
    assert sorted(outcomes) == [f"won:{i}" for i in range(4)], outcomes
    numbers = sorted(i["identifier"][0]["value"] for i in made)
    assert [n[-7:] for n in numbers] == ["0000001", "0000002", "0000003", "0000004"]  # no gap, no twin

    # Three clerks record the same payment of version 1 at once: one is recorded, two get 412.
    target = made[0]

    def pay(client: SyncFHIRClient) -> Any:
        return lambda: client.resource("PaymentReconciliation", **_payment(target, 30)).save()

    outcomes = _race([pay(c) for c in clients[:3]])
    assert sorted(outcomes)[:2] == ["412", "412"] and sorted(outcomes)[2].startswith("won:"), outcomes
    with runtime.session_factory() as session:
        paid = session.scalar(
            select(func.coalesce(func.sum(Payment.amount_cents), 0)).where(
                Payment.invoice_id == uuid.UUID(target["id"])
            )
        )
    assert paid == 3000
    assert clients[0].reference("Invoice", target["id"]).to_resource()["status"] == "balanced"


def test_a_seeded_invoice_keeps_its_first_state_when_first_paid(fhir_server_both: Server) -> None:
    server = fhir_server_both
    runtime = server.runtime
    facility, clerk, patient_id, _stay = _hospital(runtime)
    seeded = str(make_invoice(runtime, patient_id=patient_id, facility_id=facility, total_cents=5000))
    client = server.client_for(clerk)
    invoice = client.reference("Invoice", seeded).to_resource()
    assert invoice["meta"]["versionId"] == "1"
    with pytest.raises(ResourceNotFound):  # no version kept yet: it was written by the billing run
        client.execute(f"Invoice/{seeded}/_history", method="get")
    client.resource("PaymentReconciliation", **_payment(invoice.serialize(), 50)).save()
    history = client.execute(f"Invoice/{seeded}/_history", method="get")
    assert [e["resource"]["status"] for e in history["entry"]] == ["balanced", "issued"]
    provenance = client.resources("Provenance").search(target=f"Invoice/{seeded}").fetch()
    assert sorted(p["activity"]["coding"][0]["code"] for p in provenance) == ["CREATE", "UPDATE"]


def test_a_patient_with_no_business_here_is_billed_only_for_a_named_stay(fhir_server_both: Server) -> None:
    """An invoice puts its patient in billing's work, which detection trusts; so billing cannot
    make work out of nothing: a patient with no appointment, stay, open invoice or recent
    registration is invoiced only for a named stay of theirs."""
    server = fhir_server_both
    runtime = server.runtime
    facility = make_facility(runtime)
    clerk = make_account(runtime, roles=[Role.BILLING], facility_id=facility)
    patient_id = register_patient(runtime, facility, family="Ancien").id
    old_stay = admit(
        runtime, patient_id=patient_id, facility_id=facility, location_id=None, status="finished"
    )
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=60)
    with system_access(runtime, reason="test fixture: an old patient") as door:
        door.session.execute(
            update(PatientRow).where(PatientRow.id == uuid.UUID(patient_id)).values(created_at=long_ago)
        )
        door.session.execute(
            update(Encounter).where(Encounter.id == old_stay).values(start_at=long_ago, end_at=long_ago)
        )
    client = server.client_for(clerk)
    before = _stored(runtime)
    with pytest.raises(ResourceNotFound):
        client.resource("Invoice", **_invoice(patient_id, status="draft")).save()
    assert audit_rows(runtime, clerk.account_id) == [("phi:resource:create", "denied", "Invoice")]
    assert _stored(runtime) == before
    stay = [{"url": INVOICE_ENCOUNTER, "valueReference": {"reference": f"Encounter/{old_stay}"}}]
    client.resource("Invoice", **_invoice(patient_id, extension=stay)).save()
    client.resource("Invoice", **_invoice(patient_id)).save()  # an invoice of theirs is open now
    assert audit_rows(runtime, clerk.account_id).count(("phi:resource:create", "success", "Invoice")) == 2
