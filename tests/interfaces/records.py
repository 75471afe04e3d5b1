"""What the tests read back: the rows themselves (tests are not behind the gate) and the audit."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select

from carnet.audit.models import AuditEvent
from carnet.crypto.blind import IndexKind
from carnet.interfaces.models import Interface, InterfaceLink, InterfaceMessage
from carnet.patients.models import Patient, ResourceVersion
from carnet.records.models import DiagnosticReport, Observation
from carnet.runtime import Runtime
from carnet.scheduling.models import Encounter


def counts(runtime: Runtime, facility_id: uuid.UUID) -> dict[str, int]:
    """Every kind of row a message may write, for 'nothing changed' assertions."""
    with runtime.session_factory() as s:
        out = {}
        for name, model in (
            ("patients", Patient),
            ("encounters", Encounter),
            ("observations", Observation),
            ("reports", DiagnosticReport),
            ("links", InterfaceLink),
        ):
            out[name] = s.scalar(
                select(func.count()).select_from(model).where(model.facility_id == facility_id)
            )
        out["versions"] = s.scalar(
            select(func.count())
            .select_from(ResourceVersion)
            .where(ResourceVersion.facility_id == facility_id)
        )
        out["accepted"] = s.scalar(
            select(func.count())
            .select_from(InterfaceMessage)
            .join(Interface)
            .where(Interface.facility_id == facility_id, InterfaceMessage.status == "accepted")
        )
        return out


def patient_by_ins(runtime: Runtime, facility_id: uuid.UUID, ins: str) -> Patient | None:
    with runtime.session_factory() as s:
        return s.scalar(
            select(Patient).where(
                Patient.facility_id == facility_id,
                Patient.ins_bi == runtime.keyring.blind.index(IndexKind.IDENTIFIER, ins),
            )
        )


def family(runtime: Runtime, patient: Patient) -> str | None:
    return runtime.keyring.decrypt(patient.family_ct, table="patients", column="family", row_id=patient.id)


def rows(runtime: Runtime, model: Any, **where: Any) -> list[Any]:
    with runtime.session_factory() as s:
        query = select(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return list(s.scalars(query))


def log_line(runtime: Runtime, control_id: str) -> InterfaceMessage:
    with runtime.session_factory() as s:
        row = s.scalar(select(InterfaceMessage).where(InterfaceMessage.control_id == control_id))
        assert row is not None, f"no log line for {control_id}"
        return row


def audit_of(runtime: Runtime, username: str) -> list[AuditEvent]:
    with runtime.session_factory() as s:
        return list(
            s.scalars(select(AuditEvent).where(AuditEvent.username == username).order_by(AuditEvent.seq))
        )
