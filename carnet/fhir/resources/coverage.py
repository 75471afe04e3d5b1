"""FHIR Coverage: the patient's insurance cards and insurers, searched by patient (or
beneficiary) through the gate, read as the patient's chart section."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.coverage import Coverage

from carnet.fhir.core.api import (
    checked,
)
from carnet.fhir.core.mapping import (
    as_received,
    clean,
    meta,
    ref,
    when,
)
from carnet.fhir.core.registry import FhirModule, ResourceType
from carnet.fhir.core.search import Search, reference, respond, token
from carnet.phi.gate import Gate

router = APIRouter(prefix="/fhir", tags=["fhir"])


COVERAGE_TYPE = "https://carnet.example.org/fhir/CodeSystem/coverage-kind"


# == mapping ===================================================================================
def coverage_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    received = as_received(d)
    if received is not None:
        # The patient it covers now (a merge moves coverages to the record kept).
        if d.get("patient_id") and isinstance(received.get("beneficiary"), dict):
            received["beneficiary"] = {**received["beneficiary"], "reference": f"Patient/{d['patient_id']}"}
        return checked(Coverage, received)
    resource = clean(
        {
            "resourceType": "Coverage",
            "id": d["id"],
            "meta": meta(d),
            "status": d.get("status") or "active",
            "type": {"coding": [{"system": COVERAGE_TYPE, "code": d["kind"]}]} if d.get("kind") else None,
            "subscriberId": d.get("member_id"),
            "beneficiary": ref("Patient", d.get("patient_id")) or {"display": "redacted"},
            "period": clean({"start": when(d.get("period_start")), "end": when(d.get("period_end"))}),
            "payor": [{"display": d.get("payer") or "redacted"}],
        }
    )
    return checked(Coverage, resource)


# == routes ====================================================================================
def _coverages(gate: Gate, patient_id: str) -> list[dict[str, Any]]:
    return [coverage_to_fhir(c.model_dump()) for c in gate.list_coverage(patient_id=patient_id).coverages]


SEARCH = Search(
    "Coverage",
    {
        "patient": reference("beneficiary", target="Patient"),
        "beneficiary": reference("beneficiary", target="Patient"),
        "status": token("status"),
        "type": token("type"),
    },
    fetch=_coverages,
    subjects=("patient", "beneficiary"),
    includes=("beneficiary", "patient"),
)


@router.get("/Coverage")
def search_coverage(request: Request) -> Response:
    """Every coverage the patient had (the history of cards and insurers), newest first."""
    return respond(request, SEARCH)


# == declaration ===============================================================================
MODULE = FhirModule(
    router=router,
    types=(ResourceType("Coverage", ("search-type",), searcher=SEARCH),),
)
