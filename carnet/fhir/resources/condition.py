"""FHIR Condition: problems and diagnoses (ICD-10), through the gate. Searched by patient
(clinical-status, verification-status, code), read, recorded (create), amended (update,
If-Match; the code stays) or entered in error (delete: kept); every version by vread and
`_history`."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.condition import Condition

from carnet.fhir.core.api import (
    FhirBody,
    checked,
    expected_version,
    gate_for,
    parse_instant,
    reference_id,
    resource_response,
    validated,
    version_or_current,
)
from carnet.fhir.core.bundles import history_response, vread_response
from carnet.fhir.core.mapping import (
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
from carnet.phi.schemas import ICD10_CODE, ConditionInput

router = APIRouter(prefix="/fhir", tags=["fhir"])
CONDITION = "Condition"


ICD10 = "http://hl7.org/fhir/sid/icd-10"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"


# == mapping ===================================================================================
def condition_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    received = as_received(d)
    if received is not None:
        return checked(Condition, received)
    verification = d.get("verification_status")
    # R4 con-5: no clinicalStatus on a Condition entered in error (its last one stays in _history).
    clinical = d.get("clinical_status") if verification != "entered-in-error" else None
    resource = clean(
        {
            "resourceType": "Condition",
            "id": d["id"],
            "meta": meta(d),
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": clinical}]}
            if clinical
            else None,
            "verificationStatus": {"coding": [{"system": CONDITION_VERIFICATION, "code": verification}]}
            if verification
            else None,
            "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "problem-list-item"}]}],
            "code": {"coding": [clean({"system": ICD10, "code": d.get("code"), "display": d.get("display")})]}
            if d.get("code")
            else None,
            "subject": ref("Patient", d.get("patient_id")) or {"display": "redacted"},
            "onsetDateTime": when(d.get("onset_at")),
            "recorder": ref("Practitioner", d.get("recorded_by")),
        }
    )
    return checked(Condition, resource)


def _coded(body: dict[str, Any], element: str, system: str) -> str | None:
    """The code of `element` (a CodeableConcept) in `system`; None when absent; refused when
    the element is present but carries no code of that system."""
    concept = body.get(element)
    if concept is None:
        return None
    codes = [c.get("code") for c in (concept or {}).get("coding") or [] if c.get("system") == system]
    if not codes or not codes[0]:
        raise InvalidInput(f"Condition.{element} needs a coding in {system}")
    return str(codes[0])


# ICD-10 and its national editions: their codes are checked as ICD-10 codes.
ICD10_SYSTEMS = frozenset(
    {
        ICD10,
        "http://hl7.org/fhir/sid/icd-10-cm",
        "http://hl7.org/fhir/sid/icd-10-fr",  # CIM-10
        "urn:oid:2.16.840.1.113883.6.3",
        "urn:oid:1.2.250.1.213.2.12",  # CIM-10 (ANS)
    }
)


def condition_input(body: dict[str, Any]) -> ConditionInput:
    """A problem or diagnosis in any coding system (ICD-10 and its editions, SNOMED CT...):
    subject, a code.coding, clinicalStatus (default active), verificationStatus (default
    confirmed), an onset of any form. The resource is kept whole, every coding its system."""
    patient = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    if patient is None:
        raise InvalidInput("Condition.subject: a reference to a Patient is required")
    codings = [c for c in (body.get("code") or {}).get("coding") or [] if c.get("code")]
    code = next((c for c in codings if c.get("system") in ICD10_SYSTEMS), codings[0] if codings else None)
    if code is None:
        raise InvalidInput("Condition.code.coding: a code is required")
    if code.get("system") in ICD10_SYSTEMS and re.fullmatch(ICD10_CODE, str(code["code"])) is None:
        raise InvalidInput("Condition.code.coding.code: not an ICD-10 code")
    if len(str(code["code"])) > 20:
        raise InvalidInput("Condition.code.coding.code: longer than carnet keeps (20)")
    onset = body.get("onsetDateTime") or (body.get("onsetPeriod") or {}).get("start")
    element = "Condition.onsetDateTime" if body.get("onsetDateTime") else "Condition.onsetPeriod.start"
    display = str(code.get("display") or (body.get("code") or {}).get("text") or code["code"])
    values: dict[str, Any] = {
        "patient_id": patient,
        "code": str(code["code"]),
        "display": display[:200],
        "clinical_status": _coded(body, "clinicalStatus", CONDITION_CLINICAL) or "active",
        "verification_status": _coded(body, "verificationStatus", CONDITION_VERIFICATION) or "confirmed",
        "onset_at": received_instant(onset, element) if onset else None,
    }
    # The statuses carnet assumes when none is sent are written into the resource kept, so a
    # read says what carnet holds (the rest is kept as sent).
    received = dict(body)
    if values["verification_status"] != "entered-in-error":
        received.setdefault(
            "clinicalStatus", {"coding": [{"system": CONDITION_CLINICAL, "code": values["clinical_status"]}]}
        )
    received.setdefault(
        "verificationStatus",
        {"coding": [{"system": CONDITION_VERIFICATION, "code": values["verification_status"]}]},
    )
    values["received"] = received
    return schema_input(ConditionInput, values, "Condition")  # type: ignore[no-any-return]


def condition_change(body: dict[str, Any], condition_id: str, version: int) -> tuple[str, dict[str, Any]]:
    """A PUT of a Condition as the gate's amendment: its clinicalStatus (required unless it is
    marked entered-in-error), verificationStatus and onsetDateTime; its ICD-10 code must stay."""
    verification = _coded(body, "verificationStatus", CONDITION_VERIFICATION)
    clinical = _coded(body, "clinicalStatus", CONDITION_CLINICAL)
    if verification == "entered-in-error":
        if clinical is not None:
            raise InvalidInput("a Condition entered in error has no clinicalStatus (FHIR con-5)")
    elif clinical is None:
        raise InvalidInput("a Condition update needs clinicalStatus (or verificationStatus entered-in-error)")
    codings = (body.get("code") or {}).get("coding") or []
    code = next((c.get("code") for c in codings if c.get("system") == ICD10), None)
    onset = body.get("onsetDateTime")
    return "amend_condition", {
        "condition_id": condition_id,
        "expected_version": version,
        "clinical_status": clinical,
        "verification_status": verification,
        "onset_at": parse_instant(onset, "onsetDateTime") if onset else None,
        "code": code,
    }


# == routes ====================================================================================
SEARCH = Search(
    CONDITION,
    {
        "patient": reference("subject", target="Patient"),
        "subject": reference("subject"),
        "clinical-status": token("clinicalStatus"),
        "verification-status": token("verificationStatus"),
        "code": token("code"),
        "category": token("category"),
        "onset-date": date("onsetDateTime", "onsetPeriod"),
        "recorded-date": date("recordedDate"),
        "encounter": reference("encounter", target="Encounter"),
    },
    fetch=chart_section("list_conditions", condition_to_fhir),
    read=one_record("read_condition", "condition_id", condition_to_fhir),
    includes=("subject", "patient", "encounter"),
)


@router.get("/Condition")
def search_conditions(request: Request) -> Response:
    return respond(request, SEARCH)


@router.post("/Condition")
def create_condition(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Record a problem or diagnosis: subject, an ICD-10 code.coding, clinicalStatus
    (default active), verificationStatus (default confirmed), onsetDateTime."""
    gate = gate_for(request, CONDITION, "create")
    resource = validated(Condition, body, CONDITION)
    view = gate.record_condition(data=condition_input(resource))
    return resource_response(request, condition_to_fhir(view.model_dump()), status=201)


@router.get("/Condition/{condition_id}")
def read_condition(request: Request, condition_id: str) -> Response:
    gate = gate_for(request, CONDITION, "read")
    view = gate.read_condition(condition_id=condition_id)
    return resource_response(request, condition_to_fhir(view.model_dump()))


@router.put("/Condition/{condition_id}")
def update_condition(request: Request, condition_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """Amend a problem (clinicalStatus, e.g. resolved; verificationStatus; onsetDateTime) or
    mark it entered-in-error, with If-Match; its ICD-10 code stays. Every version is kept."""
    gate = gate_for(request, CONDITION, "update")
    resource = validated(Condition, body, CONDITION)
    if resource.get("id") != condition_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    name, arguments = condition_change(resource, condition_id, version)
    view = getattr(gate, name)(**arguments)
    return resource_response(request, condition_to_fhir(view.model_dump()))


@router.delete("/Condition/{condition_id}")
def delete_condition(request: Request, condition_id: str) -> Response:
    """Mark a problem entered-in-error: kept, still readable with that verification status."""
    gate = gate_for(request, CONDITION, "delete")
    version = version_or_current(request, lambda: gate.read_condition(condition_id=condition_id))
    view = gate.amend_condition(
        condition_id=condition_id, expected_version=version, verification_status="entered-in-error"
    )
    return resource_response(request, condition_to_fhir(view.model_dump()))


@router.get("/Condition/{condition_id}/_history")
def condition_history(request: Request, condition_id: str) -> Response:
    return history_response(request, CONDITION, condition_id, condition_to_fhir)


@router.get("/Condition/{condition_id}/_history/{version_id}")
def vread_condition(request: Request, condition_id: str, version_id: str) -> Response:
    return vread_response(request, CONDITION, condition_id, version_id, condition_to_fhir)


# == declaration ===============================================================================
MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            CONDITION,
            ("read", "vread", "history-instance", "search-type", "create", "update", "delete"),
            searcher=SEARCH,
            writes=Writes(
                Condition,
                condition_to_fhir,
                creates="record_condition",
                create=lambda r, g, m: ("record_condition", {"data": condition_input(r)}),
                updates="amend_condition",
                update=condition_change,
                delete=lambda rid, v: (
                    "amend_condition",
                    {"condition_id": rid, "expected_version": v, "verification_status": "entered-in-error"},
                ),
                current=lambda g, rid: g.read_condition(condition_id=rid),
            ),
        ),
    ),
)
