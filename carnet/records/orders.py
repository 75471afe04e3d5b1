"""Lab orders (FHIR ServiceRequest), run only by the gate kernel (carnet.phi.kernel): a
physician orders a test from the chart; the laboratory's results answer it (Observation and
DiagnosticReport `basedOn`) and move it on. Every change is a new version; nothing is
overwritten. The placer number (HL7 ORC-2/OBR-2) is how the lab's results find the order."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy import Select, select

from carnet.audit.interfaces import AuditKind
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.kernel.ids import new_id, parse_id
from carnet.patients.models import Patient
from carnet.phi.kernel import RT, GuardedTx, guarded
from carnet.phi.schemas import ORDER_STATUSES, ServiceRequestInput, ServiceRequestView
from carnet.phi.steps import (
    patient_stay,
    read_one,
    received_of,
    redact,
    section,
    sid,
    writing_practitioner,
    written,
)
from carnet.records.models import ServiceRequest

# Statuses an order leaves no more (results arriving later are still filed, the order unchanged).
CLOSED = frozenset({"revoked", "entered-in-error"})


def order_data(
    tx: GuardedTx, row: ServiceRequest, *, with_note: bool, with_received: bool = True
) -> dict[str, Any]:
    note = tx.dec(row.note_ct, "service_requests", "note", row.id) if with_note and row.note_ct else None
    received = received_of(tx, row) if with_received else None
    if received is not None:
        # Another system's order kept whole follows the one change carnet makes to an order.
        received["status"] = row.status
    return {
        "id": str(row.id),
        "updated_at": row.updated_at,
        "patient_id": str(row.patient_id),
        "facility_id": str(row.facility_id),
        "encounter_id": sid(row.encounter_id),
        "requester_id": sid(row.requester_id),
        "placer_number": row.placer_number,
        "category": row.category,
        "code": row.code,
        "display": row.display,
        "priority": row.priority,
        "status": row.status,
        "authored_at": row.authored_at,
        "note": note,
        "version_id": row.version_id,
        "received": received,
    }


def _placer_number(tx: GuardedTx) -> str:
    """A new placer order number: the date and 8 random hex digits (unique per facility by the
    table's key; not guessable, so a number seen on a tube names no other order)."""
    return f"{tx.now:%Y%m%d}-{secrets.token_hex(4).upper()}"


def orders_section(pid: uuid.UUID | None) -> Select[ServiceRequest]:
    """The statement of a patient's lab orders, newest first (the fast read sends it ahead)."""
    return (
        select(ServiceRequest)
        .where(ServiceRequest.patient_id == pid)
        .order_by(ServiceRequest.authored_at.desc(), ServiceRequest.id)
    )


@guarded(AuditKind.PHI_READ, RT.SERVICE_REQUEST, targeted=True)
def list_for_patient(tx: GuardedTx, /, *, patient_id: str) -> list[ServiceRequestView]:
    """The patient's lab orders, newest first."""
    rows, fields = section(tx, patient_id, RT.SERVICE_REQUEST, orders_section(parse_id(patient_id)))
    return [
        redact(
            ServiceRequestView,
            order_data(tx, r, with_note="note" in fields, with_received="received" in fields),
            fields,
        )
        for r in rows
    ]


@guarded(AuditKind.PHI_READ, RT.SERVICE_REQUEST, targeted=True)
def read(tx: GuardedTx, /, *, order_id: str) -> ServiceRequestView:
    row, fields = read_one(tx, RT.SERVICE_REQUEST, order_id)
    data = order_data(tx, row, with_note="note" in fields, with_received="received" in fields)
    return redact(ServiceRequestView, data, fields)


@guarded(AuditKind.PHI_CREATE, RT.SERVICE_REQUEST, targeted=True)
def order_test(tx: GuardedTx, /, *, data: ServiceRequestInput) -> ServiceRequestView:
    """Order a lab test for a patient in one's care (a physician): active, with a new placer
    number the laboratory's results will carry back."""
    requester = writing_practitioner(tx)
    patient = tx.patient_for_write(data.patient_id)
    tx.authorize(patient, RT.SERVICE_REQUEST, write=True)
    if not patient.active:
        raise Conflict("this patient record is inactive: order on the active record")
    encounter = patient_stay(tx, data.encounter_id, patient)
    note = (data.note or "").strip() or None
    row = ServiceRequest(
        id=new_id(),
        facility_id=patient.facility_id,
        patient_id=patient.id,
        encounter_id=encounter,
        requester_id=requester,
        placer_number=_placer_number(tx),
        category="laboratory",
        code=data.code.strip(),
        display=data.display.strip(),
        priority=data.priority,
        status="active",
        authored_at=tx.now,
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    row.note_ct = tx.enc(note, patient.facility_id, "service_requests", "note", row.id)
    tx.session.add(row)
    tx.session.flush()
    data_out = order_data(tx, row, with_note=True)
    return written(tx, patient, RT.SERVICE_REQUEST, ServiceRequestView, data_out, 1, "create")


@guarded(AuditKind.PHI_UPDATE, RT.SERVICE_REQUEST, targeted=True)
def revoke(
    tx: GuardedTx, /, *, order_id: str, expected_version: int, entered_in_error: bool = False
) -> ServiceRequestView:
    """Cancel an order (revoked), or mark it entered-in-error; kept, every version readable."""
    writing_practitioner(tx)
    row, patient = tx.record_to_change(ServiceRequest, order_id)
    tx.authorize(patient, RT.SERVICE_REQUEST, write=True)
    if row.version_id != expected_version:
        raise Conflict("the resource was changed by someone else: reload and try again")
    if row.status in CLOSED or row.status == "completed":
        raise Conflict(f"this order is {row.status}: it cannot be cancelled")
    status = "entered-in-error" if entered_in_error else "revoked"
    tx.bump(ServiceRequest, row, expected_version, status=status)
    data = order_data(tx, row, with_note=True)
    return written(tx, patient, RT.SERVICE_REQUEST, ServiceRequestView, data, row.version_id, "update")


# -- results answering an order (called inside the results' own operations) -----------------------
def patient_order(tx: GuardedTx, value: str | None, patient: Patient) -> ServiceRequest | None:
    """The order a result answers: the same patient's, or refused like a missing one."""
    if value is None:
        return None
    oid = parse_id(value)
    row = tx.session.get(ServiceRequest, oid) if oid else None
    if row is None or row.patient_id != patient.id:
        raise InvalidInput("unknown order (ServiceRequest) for this patient")
    if row.status == "entered-in-error":
        raise InvalidInput("this order was entered in error: results are not filed against it")
    return row


def order_by_placer(tx: GuardedTx, facility_id: uuid.UUID, placer_number: str) -> ServiceRequest | None:
    """The facility's order with this placer number (HL7 ORC-2/OBR-2), or None."""
    return tx.session.scalar(
        select(ServiceRequest).where(
            ServiceRequest.facility_id == facility_id, ServiceRequest.placer_number == placer_number
        )
    )


def advance(
    tx: GuardedTx, order: ServiceRequest | None, patient: Patient, report_status: str
) -> dict[str, Any] | None:
    """Results arrived for `order`: final results complete it (a new version); partial or
    preliminary ones leave it active, and a revoked order stays revoked (its results are
    filed). Returns the new version's content for the caller to keep (`tx.snapshot`), or None
    when the order did not change."""
    if order is None or order.status != "active" or report_status not in ("final", "amended", "corrected"):
        return None
    tx.authorize(patient, RT.SERVICE_REQUEST, write=True)
    tx.bump(ServiceRequest, order, order.version_id, status="completed")
    return order_data(tx, order, with_note=True)


def advance_and_keep(
    tx: GuardedTx, order: ServiceRequest | None, patient: Patient, report_status: str
) -> None:
    """`advance`, its new version kept."""
    data = advance(tx, order, patient, report_status)
    if data is not None and order is not None:
        tx.snapshot(RT.SERVICE_REQUEST, order.id, order.version_id, patient, "update", data)


__all__ = ["ORDER_STATUSES", "advance", "advance_and_keep", "order_by_placer", "patient_order"]
