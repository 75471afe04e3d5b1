"""FHIR AllergyIntolerance, through the gate: searched by patient, read and recorded (create);
every version by vread and `_history`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.allergyintolerance import AllergyIntolerance

from carnet.fhir.core.api import (
    FhirBody,
    checked,
    gate_for,
    reference_id,
    resource_response,
    validated,
)
from carnet.fhir.core.bundles import history_response, paged, vread_response
from carnet.fhir.core.mapping import (
    ATC_SYSTEM,
    clean,
    meta,
    ref,
    schema_input,
)
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import patient_of
from carnet.kernel.errors import InvalidInput
from carnet.phi.schemas import AllergyInput

router = APIRouter(prefix="/fhir", tags=["fhir"])
ALLERGY = "AllergyIntolerance"


CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"


# == mapping ===================================================================================
def allergy_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    resource = clean(
        {
            "resourceType": "AllergyIntolerance",
            "id": d["id"],
            "meta": meta(d),
            "clinicalStatus": {"coding": [{"system": CLINICAL, "code": d["clinical_status"]}]}
            if d.get("clinical_status")
            else None,
            "criticality": d.get("criticality"),
            "code": {
                "coding": [
                    clean(
                        {
                            "system": ATC_SYSTEM,
                            "code": d.get("substance_code"),
                            "display": d.get("substance_display"),
                        }
                    )
                ]
            }
            if d.get("substance_code")
            else None,
            "patient": ref("Patient", d.get("patient_id")) or {"display": "redacted"},
            "recorder": ref("Practitioner", d.get("recorded_by")),
            "reaction": [{"manifestation": [{"text": d["reaction"]}]}] if d.get("reaction") else None,
        }
    )
    return checked(AllergyIntolerance, resource)


def allergy_input(body: dict[str, Any]) -> AllergyInput:
    patient = reference_id((body.get("patient") or {}).get("reference"), "Patient")
    codings = (body.get("code") or {}).get("coding") or []
    substance = next((c for c in codings if c.get("system") == ATC_SYSTEM), None)
    if patient is None or substance is None:
        raise InvalidInput(f"an AllergyIntolerance needs patient and a code.coding in {ATC_SYSTEM}")
    values = {
        "patient_id": patient,
        "substance_code": substance.get("code"),
        "substance_display": substance.get("display") or (body.get("code") or {}).get("text"),
        "criticality": body.get("criticality") or "unable-to-assess",
        "reaction": _reaction_text(body),
    }
    return schema_input(AllergyInput, values, "AllergyIntolerance")  # type: ignore[no-any-return]


def _reaction_text(body: dict[str, Any]) -> str | None:
    """The first reaction's manifestations (their text or display) as one line, for the column."""
    reactions = body.get("reaction") or []
    if not reactions or not isinstance(reactions[0], dict):
        return None
    words = [
        m.get("text") or next((c.get("display") for c in m.get("coding") or [] if c.get("display")), None)
        for m in reactions[0].get("manifestation") or []
        if isinstance(m, dict)
    ]
    text = ", ".join(w for w in words if w)
    return text[:200] or None


# == routes ====================================================================================
@router.get("/AllergyIntolerance")
def search_allergies(request: Request) -> Response:
    gate = gate_for(request, ALLERGY, "search")
    patient = patient_of(request, set())
    return paged(
        request,
        ALLERGY,
        [allergy_to_fhir(v.model_dump()) for v in gate.list_allergies(patient_id=patient)],
    )


@router.post("/AllergyIntolerance")
def create_allergy(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    gate = gate_for(request, ALLERGY, "create")
    resource = validated(AllergyIntolerance, body, ALLERGY)
    view = gate.record_allergy(data=allergy_input(resource))
    return resource_response(request, allergy_to_fhir(view.model_dump()), status=201)


@router.get("/AllergyIntolerance/{allergy_id}")
def read_allergy(request: Request, allergy_id: str) -> Response:
    gate = gate_for(request, ALLERGY, "read")
    view = gate.read_allergy(allergy_id=allergy_id)
    return resource_response(request, allergy_to_fhir(view.model_dump()))


@router.get("/AllergyIntolerance/{allergy_id}/_history")
def allergy_history(request: Request, allergy_id: str) -> Response:
    return history_response(request, ALLERGY, allergy_id, allergy_to_fhir)


@router.get("/AllergyIntolerance/{allergy_id}/_history/{version_id}")
def vread_allergy(request: Request, allergy_id: str, version_id: str) -> Response:
    return vread_response(request, ALLERGY, allergy_id, version_id, allergy_to_fhir)


# == declaration ===============================================================================
MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            ALLERGY,
            ("read", "vread", "history-instance", "search-type", "create"),
            {"patient": "reference"},
            writes=Writes(
                AllergyIntolerance,
                allergy_to_fhir,
                creates="record_allergy",
                create=lambda r, g, m: ("record_allergy", {"data": allergy_input(r)}),
            ),
        ),
    ),
)
