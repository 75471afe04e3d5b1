"""FHIR Provenance: who wrote which version of a resource, from the versioned history, through
the gate; read, and searched by `target` or by `patient`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.provenance import Provenance

from carnet.fhir.core.api import (
    checked,
    gate_for,
    instant,
    reference_id,
    resource_response,
)
from carnet.fhir.core.bundles import paged
from carnet.fhir.core.registry import FhirModule, ResourceType
from carnet.kernel.errors import InvalidInput
from carnet.phi.schemas import ProvenanceView

router = APIRouter(prefix="/fhir", tags=["fhir"])


DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ACCOUNT_SYSTEM = "https://carnet.example.org/fhir/account"


# == mapping ===================================================================================
def provenance_to_fhir(p: ProvenanceView) -> dict[str, Any]:
    if p.author_practitioner_id:
        who: dict[str, Any] = {"reference": f"Practitioner/{p.author_practitioner_id}"}
    elif p.author_account_id:
        who = {"identifier": {"system": ACCOUNT_SYSTEM, "value": p.author_account_id}}
    else:
        who = {"display": "carnet system (import or migration)"}
    recorded = instant(p.recorded_at)
    resource = {
        "resourceType": "Provenance",
        "id": p.id,
        "meta": {"versionId": "1", "lastUpdated": recorded},
        "target": [{"reference": f"{p.target_type}/{p.target_id}/_history/{p.target_version}"}],
        "recorded": recorded,
        "activity": {"coding": [{"system": DATA_OPERATION, "code": p.action.upper()}]},
        "agent": [
            {
                "type": {"coding": [{"system": PROVENANCE_AGENT, "code": "author"}]},
                "who": who,
            }
        ],
    }
    return checked(Provenance, resource)


def _target(request: Request) -> tuple[str, str]:
    params = request.query_params
    raw = (params.get("target") or "").strip()
    parts = raw.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) < 2 or not parts[-2] or not parts[-1]:
        raise InvalidInput("a Provenance search needs target=<Type>/<id>")
    return parts[-2], parts[-1]


# == routes ====================================================================================
@router.get("/Provenance")
def search_provenance(request: Request) -> Response:
    """By `target` (every version of one resource) or by `patient` (every version in the
    record the actor may read), newest first."""
    gate = gate_for(request, "Provenance", "search")
    params = request.query_params
    unknown = sorted(set(params) - {"target", "patient", "_count", "_page", "_format"})
    if unknown:
        raise InvalidInput("unsupported search parameters: " + ", ".join(unknown))
    if ("target" in params) == ("patient" in params):
        raise InvalidInput("a Provenance search needs target=<Type>/<id> or patient=Patient/<id>")
    if "patient" in params:
        patient = reference_id(params.get("patient"), "Patient")
        assert patient is not None
        views = gate.list_patient_provenance(patient_id=patient)
    else:
        target_type, target_id = _target(request)
        views = list(reversed(gate.list_provenance(target_type=target_type, target_id=target_id)))
    return paged(request, "Provenance", [provenance_to_fhir(v) for v in views])


@router.get("/Provenance/{provenance_id}")
def read_provenance(request: Request, provenance_id: str) -> Response:
    gate = gate_for(request, "Provenance", "read")
    return resource_response(request, provenance_to_fhir(gate.read_provenance(provenance_id=provenance_id)))


# == declaration ===============================================================================
MODULE = FhirModule(
    router=router,
    types=(
        ResourceType("Provenance", ("read", "search-type"), {"target": "reference", "patient": "reference"}),
    ),
)
