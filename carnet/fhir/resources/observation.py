"""FHIR Observation: vital signs and lab results, through the gate. Searched by patient
(category, code), read, recorded (create), corrected (update, If-Match: status and value only)
or entered in error (delete: kept); every version by vread and `_history`."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.observation import Observation

from carnet.fhir.core.api import (
    FhirBody,
    checked,
    expected_version,
    gate_for,
    parse_version,
    reference_id,
    resource_response,
    validated,
)
from carnet.fhir.core.bundles import history_response, vread_response
from carnet.fhir.core.mapping import (
    LOINC,
    as_received,
    clean,
    meta,
    received_instant,
    ref,
    schema_input,
    when,
)
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import Search, chart_section, date, one_record, reference, respond, token
from carnet.kernel.errors import InvalidInput
from carnet.phi.schemas import ObservationInput

router = APIRouter(prefix="/fhir", tags=["fhir"])


OBSERVATION = "Observation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


# == mapping ===================================================================================
def observation_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    received = as_received(d)
    if received is not None:
        return checked(Observation, received)
    value: dict[str, Any] = {}
    if d.get("value_number") is not None:
        value["valueQuantity"] = clean({"value": d["value_number"], "unit": d.get("unit")})
    elif d.get("value_text"):
        value["valueString"] = d["value_text"]
    resource = clean(
        {
            "resourceType": "Observation",
            "id": d["id"],
            "meta": meta(d),
            "status": d.get("status") or "unknown",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": d["category"]}]}]
            if d.get("category")
            else None,
            "code": {"coding": [clean({"system": LOINC, "code": d.get("code"), "display": d.get("display")})]}
            if d.get("code")
            else {"text": "redacted"},
            "basedOn": [ref("ServiceRequest", d["order_id"])] if d.get("order_id") else None,
            "subject": ref("Patient", d.get("patient_id")),
            "effectiveDateTime": when(d.get("effective_at")),
            **value,
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": d["interpretation"]}]}]
            if d.get("interpretation")
            else None,
            "referenceRange": reference_range(d.get("reference_range"), d.get("unit")),
        }
    )
    return checked(Observation, resource)


# The FHIR R4 binding of Observation.interpretation; its codes are HL7 v2 table 0078's.
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_RANGE = re.compile(
    r"^\s*(?:(?P<low>-?\d+(?:[.,]\d+)?)\s*(?:-|–|to)\s*(?P<high>-?\d+(?:[.,]\d+)?)"
    r"|(?P<op><=?|>=?)\s*(?P<bound>-?\d+(?:[.,]\d+)?))\s*$"
)


def _quantity(value: str, unit: str | None) -> dict[str, Any]:
    return clean({"value": float(value.replace(",", ".")), "unit": unit})


def reference_range(text: str | None, unit: str | None) -> list[dict[str, Any]] | None:
    """The laboratory's range as printed (kept as `text`), with low and high when it reads
    "a-b", "<b" or ">a" (in the value's unit)."""
    if not text:
        return None
    found: dict[str, Any] = {"text": text}
    match = _RANGE.match(text)
    if match and match["low"] is not None:
        found["low"] = _quantity(match["low"], unit)
        found["high"] = _quantity(match["high"], unit)
    elif match and match["op"] is not None:
        found["high" if match["op"].startswith("<") else "low"] = _quantity(match["bound"], unit)
    return [found]


def _range_text(body: dict[str, Any]) -> str | None:
    """The first referenceRange as a line of text (the column; the resource keeps it whole)."""
    ranges = body.get("referenceRange") or []
    if not ranges:
        return None
    first = ranges[0] or {}
    if first.get("text"):
        return str(first["text"])[:60]
    low, high = (first.get("low") or {}).get("value"), (first.get("high") or {}).get("value")
    if low is not None and high is not None:
        return f"{low:g}-{high:g}"[:60]
    if high is not None:
        return f"<{high:g}"
    if low is not None:
        return f">{low:g}"
    return None


def _interpretation(body: dict[str, Any]) -> str | None:
    for concept in body.get("interpretation") or []:
        for coding in (concept or {}).get("coding") or []:
            code = str(coding.get("code") or "")
            if re.fullmatch(r"[A-Za-z<>]{1,10}", code):
                return code
    return None


def observation_change(body: dict[str, Any], observation_id: str, version: int) -> tuple[str, dict[str, Any]]:
    """A PUT of an Observation as the gate's correction: status amended or corrected with a new
    valueQuantity or valueString, or entered-in-error; nothing else is taken."""
    quantity = body.get("valueQuantity") or {}
    return "amend_observation", {
        "observation_id": observation_id,
        "expected_version": version,
        "status": str(body.get("status")),
        "value_number": quantity.get("value"),
        "unit": quantity.get("unit") or quantity.get("code"),
        "value_text": body.get("valueString"),
    }


# The FHIR observation-category codes the column takes (R4).
CATEGORIES = frozenset(
    {
        "vital-signs",
        "laboratory",
        "social-history",
        "imaging",
        "procedure",
        "survey",
        "exam",
        "therapy",
        "activity",
    }
)


def _order_of(body: dict[str, Any]) -> str | None:
    """The lab order a result answers (basedOn ServiceRequest), kept as its column too."""
    for item in body.get("basedOn") or []:
        target = reference_id((item or {}).get("reference"), "ServiceRequest")
        if target is not None:
            return target
    return None


def observation_input(body: dict[str, Any]) -> ObservationInput:
    """The gate's input: the columns policy and search need, and the resource itself, kept
    whole (any code system, any value type, components, performer, referenceRange...)."""
    patient = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    codings = [c for c in (body.get("code") or {}).get("coding") or [] if c.get("code")]
    # The LOINC coding when there is one (search by code); the resource keeps every coding.
    code = next((c for c in codings if c.get("system") == LOINC), codings[0] if codings else None)
    if patient is None:
        raise InvalidInput("Observation.subject: a reference to a Patient is required")
    if code is None:
        raise InvalidInput("Observation.code.coding: a code is required")
    if len(str(code["code"])) > 20:
        raise InvalidInput("Observation.code.coding.code: longer than carnet keeps (20)")
    category = next(
        (
            c.get("code")
            for concept in body.get("category") or []
            for c in (concept or {}).get("coding") or []
            if c.get("system") == OBSERVATION_CATEGORY and c.get("code") in CATEGORIES
        ),
        None,
    )
    period = body.get("effectivePeriod") or {}
    effective, element = next(
        (
            (value, name)
            for name, value in (
                ("Observation.effectiveDateTime", body.get("effectiveDateTime")),
                ("Observation.effectiveInstant", body.get("effectiveInstant")),
                ("Observation.effectivePeriod.start", period.get("start")),
                ("Observation.issued", body.get("issued")),
            )
            if value
        ),
        (None, "Observation.effective[x]"),
    )
    quantity = body.get("valueQuantity") or {}
    unit = quantity.get("unit") or quantity.get("code")
    encounter = (
        reference_id((body.get("encounter") or {}).get("reference"), "Encounter")
        if body.get("encounter")
        else None
    )
    display = str(code.get("display") or (body.get("code") or {}).get("text") or code["code"])
    values = {
        "patient_id": patient,
        "category": category or "laboratory",
        "code": str(code["code"]),
        # The columns are a search and listing aid; the resource keeps the text whole.
        "display": display[:200],
        "value_number": quantity.get("value"),
        "unit": unit if unit is None or len(unit) <= 20 else None,
        "value_text": body.get("valueString") if len(body.get("valueString") or "") <= 200 else None,
        "effective_at": received_instant(effective, element),
        "status": body.get("status") or "final",
        "encounter_id": encounter,
        "received": body,
        "order_id": _order_of(body),
        "reference_range": _range_text(body),
        "interpretation": _interpretation(body),
    }
    return schema_input(ObservationInput, values, "Observation")  # type: ignore[no-any-return]


# == routes ====================================================================================
SEARCH = Search(
    OBSERVATION,
    {
        "patient": reference("subject", target="Patient"),
        "subject": reference("subject"),
        "category": token("category"),
        "code": token("code"),
        "date": date("effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        "status": token("status"),
        "encounter": reference("encounter", target="Encounter"),
    },
    fetch=chart_section("list_observations", observation_to_fhir),
    read=one_record("read_observation", "observation_id", observation_to_fhir),
    includes=("subject", "patient", "encounter"),
)


@router.get("/Observation")
def search_observations(request: Request) -> Response:
    return respond(request, SEARCH)


@router.get("/Observation/{observation_id}")
def read_observation(request: Request, observation_id: str) -> Response:
    gate = gate_for(request, "Observation", "read")
    view = gate.read_observation(observation_id=observation_id)
    return resource_response(request, observation_to_fhir(view.model_dump()))


@router.post("/Observation")
def create_observation(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Record a vital sign or a lab result (LOINC code, a valueQuantity or a valueString)."""
    gate = gate_for(request, "Observation", "create")
    resource = validated(Observation, body, "Observation")
    view = gate.record_observation(data=observation_input(resource))
    return resource_response(request, observation_to_fhir(view.model_dump()), status=201)


@router.put("/Observation/{observation_id}")
def update_observation(request: Request, observation_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """Correct a result (status amended or corrected, a new valueQuantity or valueString) or mark
    it entered-in-error, with If-Match; only status and value are taken, every earlier version
    stays in _history."""
    gate = gate_for(request, "Observation", "update")
    resource = validated(Observation, body, "Observation")
    if resource.get("id") != observation_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    _name, arguments = observation_change(resource, observation_id, version)
    view = gate.amend_observation(**arguments)
    return resource_response(request, observation_to_fhir(view.model_dump()))


@router.delete("/Observation/{observation_id}")
def delete_observation(request: Request, observation_id: str) -> Response:
    """Mark an Observation entered-in-error: kept, still readable with that status. If-Match,
    or else the current version (read through the gate, as its history)."""
    gate = gate_for(request, "Observation", "delete")
    version = parse_version(request.headers.get("if-match"))
    if version is None:
        version = gate.read_observation(observation_id=observation_id).version_id or 1
    view = gate.amend_observation(
        observation_id=observation_id, expected_version=version, status="entered-in-error"
    )
    return resource_response(request, observation_to_fhir(view.model_dump()))


@router.get("/Observation/{observation_id}/_history")
def observation_history(request: Request, observation_id: str) -> Response:
    return history_response(request, "Observation", observation_id, observation_to_fhir)


@router.get("/Observation/{observation_id}/_history/{version_id}")
def vread_observation(request: Request, observation_id: str, version_id: str) -> Response:
    return vread_response(request, "Observation", observation_id, version_id, observation_to_fhir)


# == declaration ===============================================================================
MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            OBSERVATION,
            ("read", "vread", "history-instance", "search-type", "create", "update", "delete"),
            searcher=SEARCH,
            writes=Writes(
                Observation,
                observation_to_fhir,
                creates="record_observation",
                create=lambda r, g, m: ("record_observation", {"data": observation_input(r)}),
                updates="amend_observation",
                update=observation_change,
                delete=lambda rid, v: (
                    "amend_observation",
                    {"observation_id": rid, "expected_version": v, "status": "entered-in-error"},
                ),
                current=lambda g, rid: g.read_observation(observation_id=rid),
            ),
        ),
    ),
)
