"""Audit events as FHIR R4 AuditEvent (IHE BALP shape), valid for a real FHIR model."""

from __future__ import annotations

import base64
import uuid

import sqlalchemy as sa
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent

from carnet.audit.fhir import to_fhir
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.audit.models import AuditEvent
from carnet.runtime import Runtime
from tests.audit.helpers import DOCTOR, EMERGENCY


def test_every_kind_maps_to_a_valid_fhir_audit_event(sqlite_runtime: Runtime) -> None:
    patient = uuid.uuid4()
    with sqlite_runtime.session_factory.begin() as session:
        for kind in AuditKind:
            sqlite_runtime.audit.append(
                session,
                AuditRecord(kind=kind, outcome=Outcome.SUCCESS, actor=DOCTOR, patient_ids=[patient]),
            )
    with sqlite_runtime.session_factory() as session:
        events = session.scalars(sa.select(AuditEvent).order_by(AuditEvent.seq)).all()
        resources = [to_fhir(e) for e in events]
    assert len(resources) == len(AuditKind)
    for resource in resources:
        FhirAuditEvent.model_validate(resource)  # round-trips through the model
        assert resource["resourceType"] == "AuditEvent"
        assert {"type", "action", "recorded", "outcome", "agent", "source", "entity"} <= resource.keys()


def test_a_patient_read_follows_balp(sqlite_runtime: Runtime) -> None:
    patient = uuid.uuid4()
    with sqlite_runtime.session_factory.begin() as session:
        seq = sqlite_runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.PHI_SEARCH,
                outcome=Outcome.DENIED,
                actor=DOCTOR,
                resource_type="Patient",
                resource_ids=[str(patient)],
                patient_ids=[patient],
                query="family&birthdate",
                policy_reason="no care relationship",
            ),
        )
        glass = sqlite_runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.PHI_READ,
                outcome=Outcome.SUCCESS,
                actor=EMERGENCY,
                patient_ids=[patient],
                break_glass_reason="cardiac arrest",
            ),
        )
    with sqlite_runtime.session_factory() as session:
        search = to_fhir(session.get_one(AuditEvent, seq))
        read = to_fhir(session.get_one(AuditEvent, glass))
    assert search["meta"]["profile"] == [
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientQuery"
    ]
    assert search["type"]["code"] == "rest" and search["subtype"][0]["code"] == "search-type"
    assert (
        search["action"] == "E"
        and search["outcome"] == "4"
        and search["outcomeDesc"] == "no care relationship"
    )
    agent = search["agent"][0]
    assert agent["who"]["identifier"]["value"] == str(DOCTOR.account_id) and agent["requestor"] is True
    assert agent["network"] == {"address": "10.0.0.7", "type": "2"}
    assert agent["role"][0]["coding"][0]["code"] == "physician"
    patients = [e for e in search["entity"] if e.get("role", {}).get("code") == "1"]
    assert patients[0]["what"]["reference"] == f"Patient/{patient}"
    query = next(e for e in search["entity"] if e.get("role", {}).get("code") == "24")
    assert base64.b64decode(query["query"]) == b"family&birthdate"
    assert read["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
    patient_entity = next(e for e in read["entity"] if e.get("role", {}).get("code") == "1")
    assert patient_entity["detail"][0]["valueString"] == "cardiac arrest"
