"""`GET /fhir/Patient/{id}/$everything`: the patient's record as one searchset Bundle, each
chart section read (and audited) by the gate through the mapper of its resource module.

A new chart section's resource module is listed here too (in the order the Bundle gives)."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from carnet.access.policy import ResourceType, ever_reads
from carnet.fhir.core.api import base_url, fhir_response, gate_for
from carnet.fhir.core.registry import FhirModule
from carnet.fhir.resources.allergy import allergy_to_fhir
from carnet.fhir.resources.appointment import appointment_to_fhir
from carnet.fhir.resources.billing import invoice_to_fhir
from carnet.fhir.resources.care_team import care_team_to_fhir
from carnet.fhir.resources.condition import condition_to_fhir
from carnet.fhir.resources.consent import consent_to_fhir
from carnet.fhir.resources.coverage import coverage_to_fhir
from carnet.fhir.resources.diagnostic_report import report_to_fhir
from carnet.fhir.resources.document_reference import note_to_fhir
from carnet.fhir.resources.encounter import encounter_to_fhir
from carnet.fhir.resources.interventions import KINDS
from carnet.fhir.resources.interventions import to_fhir as intervention_to_fhir
from carnet.fhir.resources.medication_request import prescription_to_fhir
from carnet.fhir.resources.observation import observation_to_fhir
from carnet.fhir.resources.patient import patient_to_fhir
from carnet.fhir.resources.service_request import order_to_fhir
from carnet.kernel.errors import NotFound

router = APIRouter(prefix="/fhir/Patient", tags=["fhir"])


@router.get("/{patient_id}/$everything")
def patient_everything(request: Request, patient_id: str) -> Response:
    """The patient's record as a Bundle: each section read (and audited) by the gate, and
    only the sections the actor's role opens (the others are left out, not an error)."""
    gate = gate_for(request, "Patient", "read")
    resources = [patient_to_fhir(gate.read_patient(patient_id=patient_id).model_dump())]
    sections: list[tuple[ResourceType, Any, Any]] = [
        (ResourceType.ENCOUNTER, gate.list_encounters, encounter_to_fhir),
        (ResourceType.APPOINTMENT, gate.list_appointments, appointment_to_fhir),
        (ResourceType.ALLERGY, gate.list_allergies, allergy_to_fhir),
        (ResourceType.CONDITION, gate.list_conditions, condition_to_fhir),
        (ResourceType.OBSERVATION, gate.list_observations, observation_to_fhir),
        (ResourceType.PRESCRIPTION, gate.list_prescriptions, prescription_to_fhir),
        (ResourceType.NOTE, gate.list_notes, note_to_fhir),
        (ResourceType.INVOICE, gate.list_invoices, invoice_to_fhir),
        (ResourceType.CARE_TEAM, gate.list_care_team, care_team_to_fhir),
        (ResourceType.DIAGNOSTIC_REPORT, gate.list_diagnostic_reports, report_to_fhir),
        (ResourceType.CONSENT, gate.list_consents, consent_to_fhir),
        (ResourceType.SERVICE_REQUEST, gate.list_orders, order_to_fhir),
        # Kept whole as received (or built by carnet, as a dose given from the chart).
        (ResourceType.IMMUNIZATION, gate.list_immunizations, intervention_to_fhir(KINDS["Immunization"])),
        (ResourceType.PROCEDURE, gate.list_procedures, intervention_to_fhir(KINDS["Procedure"])),
        (
            ResourceType.MEDICATION_ADMINISTRATION,
            gate.list_medication_administrations,
            intervention_to_fhir(KINDS["MedicationAdministration"]),
        ),
        (
            ResourceType.MEDICATION_STATEMENT,
            gate.list_medication_statements,
            intervention_to_fhir(KINDS["MedicationStatement"]),
        ),
        (ResourceType.SPECIMEN, gate.list_specimens, intervention_to_fhir(KINDS["Specimen"])),
    ]
    for resource, read, to_fhir in sections:
        if not ever_reads(gate.actor.roles, resource):
            continue  # a section the role never opens is not asked (its refusal counts as a denial)
        try:
            resources.extend(to_fhir(v.model_dump()) for v in read(patient_id=patient_id))
        except NotFound:
            continue  # a section this role may not read answers like a missing one
    with contextlib.suppress(NotFound):
        if ever_reads(gate.actor.roles, ResourceType.COVERAGE):
            resources.extend(
                coverage_to_fhir(c.model_dump()) for c in gate.list_coverage(patient_id=patient_id).coverages
            )
    base = base_url(request)
    return fhir_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(resources),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": [
                {
                    "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in resources
            ],
        }
    )


MODULE = FhirModule(
    router=router, operations={"everything": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
)
