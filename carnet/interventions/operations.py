"""Intervention operations (run only by the gate kernel, carnet.phi.kernel): immunizations,
procedures, medication administrations and statements. Each is recorded as received (the FHIR
resource kept whole, encrypted; every reference in it resolved in carnet or refused, naming the
element), listed per patient, read by id; every version kept. One table, four resource types:
each type is its own policy cell (who may read or write it) and its own audit resource."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Select, select

from carnet.access.policy import ResourceType
from carnet.audit.interfaces import AuditKind
from carnet.detection.interfaces import Channel
from carnet.interventions.models import Intervention
from carnet.interventions.schemas import InterventionInput, InterventionView
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.kernel.ids import new_id, parse_id
from carnet.patients.models import Patient
from carnet.phi.kernel import NOT_FOUND, RT, GuardedTx, guarded
from carnet.phi.steps import (
    patient_stay,
    received_json,
    received_shown,
    redact,
    result_author,
    section,
    sid,
    written,
)

# The element naming the patient, per type (FHIR R4).
PATIENT_ELEMENT: dict[ResourceType, str] = {
    RT.IMMUNIZATION: "patient",
    RT.PROCEDURE: "subject",
    RT.MEDICATION_ADMINISTRATION: "subject",
    RT.MEDICATION_STATEMENT: "subject",
    RT.SPECIMEN: "subject",
}


F = TypeVar("F", bound=Callable[..., Any])


def _named(body: F, name: str) -> F:
    """A factory-made operation carries its facade name (in audit traces, errors, tests)."""
    body.__name__ = body.__qualname__ = name
    return body


def intervention_data(row: Intervention, received: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "updated_at": row.updated_at,
        "patient_id": str(row.patient_id),
        "code_system": row.code_system,
        "code": row.code,
        "display": row.display,
        "status": row.status,
        "occurred_at": row.occurred_at,
        "encounter_id": sid(row.encounter_id),
        "recorded_by": sid(row.recorded_by),
        "version_id": row.version_id,
        "received": received,
    }


def section_of(kind: ResourceType) -> Callable[[uuid.UUID | None], Select[Intervention]]:
    """The statement of a patient's section of one type, oldest first (the gate's fast read
    sends it ahead)."""

    def statement(pid: uuid.UUID | None) -> Select[Intervention]:
        return (
            select(Intervention)
            .where(Intervention.patient_id == pid, Intervention.resource_type == kind.value)
            .order_by(Intervention.occurred_at, Intervention.created_at)
        )

    return statement


def _lister(kind: ResourceType) -> Callable[..., list[InterventionView]]:
    statement = section_of(kind)

    @guarded(AuditKind.PHI_READ, kind, targeted=True)
    def list_for_patient(tx: GuardedTx, /, *, patient_id: str) -> list[InterventionView]:
        rows, fields = section(tx, patient_id, kind, statement(parse_id(patient_id)))
        return [
            redact(InterventionView, intervention_data(r, received_shown(tx, r, fields)), fields)
            for r in rows
        ]

    return list_for_patient


def _reader(kind: ResourceType) -> Callable[..., InterventionView]:
    @guarded(AuditKind.PHI_READ, kind, targeted=True)
    def read(tx: GuardedTx, /, *, intervention_id: str) -> InterventionView:
        rid = parse_id(intervention_id)
        row = tx.session.get(Intervention, rid) if rid else None
        if row is None or row.resource_type != kind.value:
            raise NotFound(NOT_FOUND)  # another type's id answers as a missing one
        patient = tx.patient(row.patient_id)
        decision = tx.authorize(patient, kind)
        tx.resource_ids.append(str(row.id))
        rels = tx.relationships_of([patient])
        tx.expose([patient.id], Channel.CHART, rels, decision.fields, resource=kind)
        received = received_shown(tx, row, decision.fields)
        return redact(InterventionView, intervention_data(row, received), decision.fields)

    return read


def keep_intervention(
    tx: GuardedTx,
    kind: ResourceType,
    patient: Patient,
    resource: dict[str, Any],
    *,
    element: str,
    code_system: str | None,
    code: str | None,
    display: str | None,
    status: str,
    occurred_at: dt.datetime | None,
    encounter_id: uuid.UUID | None,
    recorded_by: uuid.UUID | None,
) -> InterventionView:
    """Write version 1 of an intervention: the resource kept whole and encrypted (its patient
    `element` naming the patient), beside the columns policy and search need."""
    kept = received_json(tx, resource, patient, {element: f"Patient/{patient.id}"})
    row_id = new_id()
    row = Intervention(
        id=row_id,
        facility_id=patient.facility_id,
        patient_id=patient.id,
        resource_type=kind.value,
        code_system=code_system,
        code=code,
        display=display,
        status=status,
        occurred_at=occurred_at,
        encounter_id=encounter_id,
        recorded_by=recorded_by,
        received_ct=tx.enc(kept, patient.facility_id, "interventions", "received", row_id),
        version_id=1,
        created_at=tx.now,
        updated_at=tx.now,
    )
    tx.session.add(row)
    tx.session.flush()
    out = intervention_data(row, dict(json.loads(kept)))
    return written(tx, patient, kind, InterventionView, out, 1, "create")


def _recorder(kind: ResourceType) -> Callable[..., InterventionView]:
    @guarded(AuditKind.PHI_CREATE, kind, targeted=True)
    def record(tx: GuardedTx, /, *, data: InterventionInput) -> InterventionView:
        """Recorded as received by a practitioner in the patient's care (or a Backend Services
        client of the facility): version 1, kept whole."""
        author = result_author(tx)
        patient = tx.patient_for_write(data.patient_id)
        tx.authorize(patient, kind, write=True)
        if not patient.active or patient.merged_into_id is not None:
            raise Conflict("this patient record is inactive: record it on the active record")
        if data.received.get("resourceType") != kind.value:
            raise InvalidInput(f"{kind.value}.resourceType: not a {kind.value}")
        encounter = patient_stay(tx, data.encounter_id, patient)
        return keep_intervention(
            tx,
            kind,
            patient,
            data.received,
            element=PATIENT_ELEMENT[kind],
            code_system=data.code_system,
            code=data.code,
            display=data.display,
            status=data.status,
            occurred_at=data.occurred_at,
            encounter_id=encounter,
            recorded_by=author,
        )

    return record


list_immunizations = _named(_lister(RT.IMMUNIZATION), "list_immunizations")
read_immunization = _named(_reader(RT.IMMUNIZATION), "read_immunization")
record_immunization = _named(_recorder(RT.IMMUNIZATION), "record_immunization")
list_procedures = _named(_lister(RT.PROCEDURE), "list_procedures")
read_procedure = _named(_reader(RT.PROCEDURE), "read_procedure")
record_procedure = _named(_recorder(RT.PROCEDURE), "record_procedure")
list_administrations = _named(_lister(RT.MEDICATION_ADMINISTRATION), "list_administrations")
read_administration = _named(_reader(RT.MEDICATION_ADMINISTRATION), "read_administration")
record_administration = _named(_recorder(RT.MEDICATION_ADMINISTRATION), "record_administration")
list_statements = _named(_lister(RT.MEDICATION_STATEMENT), "list_statements")
read_statement = _named(_reader(RT.MEDICATION_STATEMENT), "read_statement")
record_statement = _named(_recorder(RT.MEDICATION_STATEMENT), "record_statement")
list_specimens = _named(_lister(RT.SPECIMEN), "list_specimens")
read_specimen = _named(_reader(RT.SPECIMEN), "read_specimen")
record_specimen = _named(_recorder(RT.SPECIMEN), "record_specimen")
