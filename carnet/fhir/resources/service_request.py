"""FHIR ServiceRequest: a lab order, through the gate. Read, searched by patient (status,
code) and created by a physician in the patient's care; its placer number is its identifier
(type PLAC), the number the laboratory's results carry back (HL7 ORC-2/OBR-2), and results
answering it name it in `basedOn`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.servicerequest import ServiceRequest

from carnet.fhir.core.api import (
    FhirBody,
    checked,
    gate_for,
    reference_id,
    resource_response,
    validated,
)
from carnet.fhir.core.mapping import LOINC, as_received, clean, meta, ref, schema_input, when
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import Search, chart_section, date, one_record, reference, respond, token
from carnet.kernel.errors import InvalidInput
from carnet.phi.schemas import ServiceRequestInput

router = APIRouter(prefix="/fhir", tags=["fhir"])

SERVICE_REQUEST = "ServiceRequest"
# The placer order number: identifier type PLAC (HL7 table 0203), in carnet's own system.
PLACER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
PLACER_SYSTEM = "urn:carnet:placer-order-number"
SNOMED = "http://snomed.info/sct"
LABORATORY = {"system": SNOMED, "code": "108252007", "display": "Laboratory procedure"}


# == mapping ===================================================================================
def order_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    received = as_received(d)
    if received is not None:
        return checked(ServiceRequest, received)
    resource = clean(
        {
            "resourceType": SERVICE_REQUEST,
            "id": d["id"],
            "meta": meta(d),
            "identifier": [
                {
                    "type": {"coding": [{"system": PLACER_TYPE, "code": "PLAC"}]},
                    "system": PLACER_SYSTEM,
                    "value": d["placer_number"],
                }
            ]
            if d.get("placer_number")
            else None,
            "status": d.get("status") or "unknown",
            "intent": "order",
            "category": [{"coding": [LABORATORY]}] if d.get("category") == "laboratory" else None,
            "priority": d.get("priority"),
            "code": {"coding": [clean({"system": LOINC, "code": d.get("code"), "display": d.get("display")})]}
            if d.get("code")
            else None,
            "subject": ref("Patient", d.get("patient_id")) or {"display": "redacted"},
            "encounter": ref("Encounter", d.get("encounter_id")),
            "authoredOn": when(d.get("authored_at")),
            "requester": ref("Practitioner", d.get("requester_id")),
            "note": [{"text": d["note"]}] if d.get("note") else None,
        }
    )
    return checked(ServiceRequest, resource)


def order_input(body: dict[str, Any]) -> ServiceRequestInput:
    """A lab order: subject, a LOINC code, intent order; priority and a note when given."""
    if body.get("intent") != "order":
        raise InvalidInput("ServiceRequest.intent: carnet takes orders (intent order)")
    if body.get("status") not in (None, "active"):
        raise InvalidInput("ServiceRequest.status: a new order is active")
    patient = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    if patient is None:
        raise InvalidInput("ServiceRequest.subject: a reference to a Patient is required")
    codings = (body.get("code") or {}).get("coding") or []
    code = next((c for c in codings if c.get("system") == LOINC and c.get("code")), None)
    if code is None:
        raise InvalidInput(f"ServiceRequest.code.coding: a code in {LOINC} is required")
    encounter = (
        reference_id((body.get("encounter") or {}).get("reference"), "Encounter")
        if body.get("encounter")
        else None
    )
    notes = [n.get("text") for n in body.get("note") or [] if n.get("text")]
    values = {
        "patient_id": patient,
        "code": str(code["code"]),
        "display": str(code.get("display") or (body.get("code") or {}).get("text") or code["code"])[:200],
        "priority": body.get("priority") or "routine",
        "note": "\n".join(notes) or None,
        "encounter_id": encounter,
    }
    return schema_input(ServiceRequestInput, values, SERVICE_REQUEST)  # type: ignore[no-any-return]


# == routes ====================================================================================
SEARCH = Search(
    SERVICE_REQUEST,
    {
        "patient": reference("subject", target="Patient"),
        "subject": reference("subject"),
        "status": token("status"),
        "code": token("code"),
        "category": token("category"),
        "identifier": token("identifier"),
        "priority": token("priority"),
        "authored": date("authoredOn"),
        "requester": reference("requester", target="Practitioner"),
        "encounter": reference("encounter", target="Encounter"),
    },
    fetch=chart_section("list_orders", order_to_fhir),
    read=one_record("read_order", "order_id", order_to_fhir),
    includes=("subject", "patient", "encounter"),
)


@router.get("/ServiceRequest")
def search_orders(request: Request) -> Response:
    return respond(request, SEARCH)


@router.get("/ServiceRequest/{order_id}")
def read_order(request: Request, order_id: str) -> Response:
    gate = gate_for(request, SERVICE_REQUEST, "read")
    return resource_response(request, order_to_fhir(gate.read_order(order_id=order_id).model_dump()))


@router.post("/ServiceRequest")
def create_order(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Order a lab test (a physician in the patient's care): carnet gives it its placer number."""
    gate = gate_for(request, SERVICE_REQUEST, "create")
    resource = validated(ServiceRequest, body, SERVICE_REQUEST)
    view = gate.order_test(data=order_input(resource))
    return resource_response(request, order_to_fhir(view.model_dump()), status=201)


# == declaration ===============================================================================
MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            SERVICE_REQUEST,
            ("read", "search-type", "create"),
            searcher=SEARCH,
            writes=Writes(
                ServiceRequest,
                order_to_fhir,
                creates="order_test",
                create=lambda r, g, m: ("order_test", {"data": order_input(r)}),
            ),
        ),
    ),
)
