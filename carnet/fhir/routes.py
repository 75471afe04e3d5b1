"""The router assembly: every FHIR module, in the order the app mounts them (literal paths
before `{id}` ones), installed in the registry that the CapabilityStatement, the Bundle
processor and `serve_get` read. A module not listed here is not served, nor declared."""

from __future__ import annotations

from fastapi import APIRouter

from carnet.fhir.core import registry
from carnet.fhir.operations import everything, export, interactions, post_search, transaction
from carnet.fhir.resources import (
    allergy,
    appointment,
    audit_event,
    billing,
    care_team,
    condition,
    consent,
    coverage,
    diagnostic_report,
    directory,
    document_reference,
    encounter,
    group,
    interventions,
    medication_request,
    observation,
    patient,
    provenance,
    service_request,
)

# search_post first: POST <type>/_search must not be read as a write to <type>.
# export before patient: its Patient/$export is a literal path, patient has Patient/{id}.
# interactions before every type: its <type>/_history is a literal path too.
MODULES: tuple[registry.FhirModule, ...] = (
    post_search.MODULE,
    export.MODULE,
    interactions.MODULE,
    patient.MODULE,
    everything.MODULE,
    appointment.MODULE,
    document_reference.MODULE,
    medication_request.MODULE,
    allergy.MODULE,
    encounter.MODULE,
    condition.MODULE,
    observation.MODULE,
    coverage.MODULE,
    care_team.MODULE,
    diagnostic_report.MODULE,
    service_request.MODULE,
    interventions.MODULE,
    consent.MODULE,
    provenance.MODULE,
    billing.MODULE,
    directory.MODULE,
    group.MODULE,
    audit_event.MODULE,
    transaction.MODULE,
    interactions.FALLBACK,  # last: an unknown type answers 404
)
registry.install(MODULES)


def routers() -> list[APIRouter]:
    return [module.router for module in MODULES]
