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
from carnet.fhir.core.bundles import history_response, vread_response
from carnet.fhir.core.mapping import (
    ATC_SYSTEM,
    as_received,
    clean,
    meta,
    ref,
    schema_input,
)
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import Search, chart_section, date, one_record, reference, respond, token
from carnet.kernel.errors import InvalidInput
from carnet.phi.schemas import AllergyInput

router = APIRouter(prefix="/fhir", tags=["fhir"])
ALLERGY = "AllergyIntolerance"


CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"


# == mapping ===================================================================================
def allergy_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    received = as_received(d)
    if received is not None:
        if d.get("patient_id") and isinstance(received.get("patient"), dict):
            # The patient the record belongs to now (a merge moves records to the record kept).
            received["patient"] = {**received["patient"], "reference": f"Patient/{d['patient_id']}"}
        return checked(AllergyIntolerance, received)
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
    """Any coding system: the ATC coding when there is one (what the medication checks read),
    else the first coding (SNOMED CT, RxNorm...), which the checks show as one they cannot
    check. The resource is kept whole, every coding with its system."""
    patient = reference_id((body.get("patient") or {}).get("reference"), "Patient")
    if patient is None:
        raise InvalidInput("AllergyIntolerance.patient: a reference to a Patient is required")
    codings = [
        c for c in (body.get("code") or {}).get("coding") or [] if isinstance(c, dict) and c.get("code")
    ]
    substance = next((c for c in codings if c.get("system") == ATC_SYSTEM), codings[0] if codings else None)
    if substance is None:
        raise InvalidInput("AllergyIntolerance.code.coding: a coded substance is required")
    code = str(substance["code"])
    if len(code) > 40:
        raise InvalidInput("AllergyIntolerance.code.coding.code: longer than carnet keeps (40)")
    status = next(
        (
            c.get("code")
            for c in (body.get("clinicalStatus") or {}).get("coding") or []
            if c.get("system") == CLINICAL
        ),
        "active",
    )
    display = str(substance.get("display") or (body.get("code") or {}).get("text") or code)
    values = {
        "patient_id": patient,
        "substance_code": code,
        # The column is a listing aid; the resource keeps the text whole.
        "substance_display": display[:200],
        "criticality": body.get("criticality") or "unable-to-assess",
        "clinical_status": status,
        "received": body,
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
SEARCH = Search(
    ALLERGY,
    {
        "patient": reference("patient", target="Patient"),
        "clinical-status": token("clinicalStatus"),
        "verification-status": token("verificationStatus"),
        "code": token("code", "reaction.substance"),
        "criticality": token("criticality"),
        "category": token("category"),
        "date": date("recordedDate"),
        "onset": date("onsetDateTime", "onsetPeriod", "reaction.onset"),
    },
    fetch=chart_section("list_allergies", allergy_to_fhir),
    read=one_record("read_allergy", "allergy_id", allergy_to_fhir),
    subjects=("patient",),
    includes=("patient",),
)


@router.get("/AllergyIntolerance")
def search_allergies(request: Request) -> Response:
    return respond(request, SEARCH)


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
            searcher=SEARCH,
            writes=Writes(
                AllergyIntolerance,
                allergy_to_fhir,
                creates="record_allergy",
                create=lambda r, g, m: ("record_allergy", {"data": allergy_input(r)}),
            ),
        ),
    ),
)
