"""FHIR Consent: the patient's privacy decisions, through the gate. Recording one
(`oppose-other-facilities`) hides the patient from every facility but the managing one at once;
withdrawing it (PUT status inactive, or DELETE) lifts that. Kept either way, every version in
`_history`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.consent import Consent

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
    clean,
    meta,
    ref,
    when,
)
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import Search, chart_section, date, one_record, reference, respond, token
from carnet.kernel.errors import InvalidInput
from carnet.phi.gate import OPPOSE_OTHER_FACILITIES, Gate

router = APIRouter(prefix="/fhir", tags=["fhir"])


CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_CATEGORY = "http://loinc.org"
CONSENT_POLICY = "https://carnet.example.org/fhir/consent-policy/"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


# == mapping ===================================================================================
def consent_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    facility = d.get("facility_id")
    # "Deny everyone, except the managing organisation": what the policy enforces.
    provision: dict[str, Any] = {
        "type": "deny",
        "period": clean({"start": when(d.get("recorded_at")), "end": when(d.get("withdrawn_at"))}) or None,
    }
    if facility:
        provision["provision"] = [
            {
                "type": "permit",
                "actor": [
                    {
                        "role": {"coding": [{"system": ACT_CODE, "code": "CST", "display": "custodian"}]},
                        "reference": ref("Organization", facility),
                    }
                ],
            }
        ]
    resource = clean(
        {
            "resourceType": "Consent",
            "id": d["id"],
            "meta": meta(d),
            "status": d.get("status") or "inactive",
            "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
            "category": [
                {"coding": [{"system": CONSENT_CATEGORY, "code": "59284-0", "display": "Patient Consent"}]}
            ],
            "patient": ref("Patient", d.get("patient_id")),
            "dateTime": when(d.get("recorded_at")),
            "organization": [ref("Organization", facility)] if facility else None,
            "policy": [{"uri": CONSENT_POLICY + d["kind"]}] if d.get("kind") else None,
            "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTOUT"}]},
            "provision": clean(provision),
        }
    )
    return checked(Consent, resource)


def consent_kind(resource: dict[str, Any]) -> str:
    uris = [p.get("uri") for p in resource.get("policy") or [] if isinstance(p, dict)]
    kinds = [
        u.removeprefix(CONSENT_POLICY) for u in uris if isinstance(u, str) and u.startswith(CONSENT_POLICY)
    ]
    if kinds != [OPPOSE_OTHER_FACILITIES]:
        raise InvalidInput(f"a Consent names one policy: {CONSENT_POLICY}{OPPOSE_OTHER_FACILITIES}")
    return kinds[0]


# == routes ====================================================================================
SEARCH = Search(
    "Consent",
    {
        "patient": reference("patient", target="Patient"),
        "status": token("status"),
        "scope": token("scope"),
        "category": token("category"),
        "date": date("dateTime"),
        "period": date("provision.period"),
    },
    fetch=chart_section("list_consents", consent_to_fhir),
    read=one_record("read_consent", "consent_id", consent_to_fhir),
    subjects=("patient",),
    includes=("patient",),
)


@router.get("/Consent")
def search_consents(request: Request) -> Response:
    return respond(request, SEARCH)


@router.post("/Consent")
def create_consent(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Record a patient's decision (status active); it applies to every actor at once."""
    gate = gate_for(request, "Consent", "create")
    resource = validated(Consent, body, "Consent")
    if resource.get("status") != "active":
        raise InvalidInput("a new Consent is recorded active (withdraw it with an update)")
    patient = reference_id((resource.get("patient") or {}).get("reference"), "Patient")
    if patient is None:
        raise InvalidInput("a Consent needs patient (a reference Patient/<id>)")
    view = gate.record_consent(patient_id=patient, kind=consent_kind(resource))
    return resource_response(request, consent_to_fhir(view.model_dump()), status=201)


@router.get("/Consent/{consent_id}")
def read_consent(request: Request, consent_id: str) -> Response:
    gate = gate_for(request, "Consent", "read")
    return resource_response(request, consent_to_fhir(gate.read_consent(consent_id=consent_id).model_dump()))


@router.put("/Consent/{consent_id}")
def update_consent(request: Request, consent_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """The one change a Consent takes: withdrawal (status inactive), with If-Match."""
    gate = gate_for(request, "Consent", "update")
    resource = validated(Consent, body, "Consent")
    if resource.get("id") != consent_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    if resource.get("status") != "inactive":
        raise InvalidInput("a Consent is changed by withdrawing it: status inactive")
    view = gate.withdraw_consent(consent_id=consent_id, expected_version=version)
    return resource_response(request, consent_to_fhir(view.model_dump()))


@router.delete("/Consent/{consent_id}")
def delete_consent(request: Request, consent_id: str) -> Response:
    """A delete withdraws the decision; the Consent and its history stay."""
    gate = gate_for(request, "Consent", "delete")
    version = parse_version(request.headers.get("if-match"))
    if version is None:
        version = gate.read_consent(consent_id=consent_id).version_id or 1
    view = gate.withdraw_consent(consent_id=consent_id, expected_version=version)
    return resource_response(request, consent_to_fhir(view.model_dump()))


@router.get("/Consent/{consent_id}/_history")
def consent_history(request: Request, consent_id: str) -> Response:
    return history_response(request, "Consent", consent_id, consent_to_fhir)


@router.get("/Consent/{consent_id}/_history/{version_id}")
def vread_consent(request: Request, consent_id: str, version_id: str) -> Response:
    return vread_response(request, "Consent", consent_id, version_id, consent_to_fhir)


# == in a Bundle, and the declaration ==========================================================
def consent_create(r: dict[str, Any], gate: Gate, if_match: str | None) -> tuple[str, dict[str, Any]]:
    if r.get("status") != "active":
        raise InvalidInput("a new Consent is recorded active")
    patient = reference_id((r.get("patient") or {}).get("reference"), "Patient")
    if patient is None:
        raise InvalidInput("a Consent needs patient (a reference Patient/<id>)")
    return "record_consent", {"patient_id": patient, "kind": consent_kind(r)}


def consent_change(r: dict[str, Any], rid: str, version: int) -> tuple[str, dict[str, Any]]:
    if r.get("status") != "inactive":
        raise InvalidInput("a Consent is changed by withdrawing it: status inactive")
    return "withdraw_consent", {"consent_id": rid, "expected_version": version}


MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            "Consent",
            ("read", "vread", "history-instance", "search-type", "create", "update", "delete"),
            searcher=SEARCH,
            writes=Writes(
                Consent,
                consent_to_fhir,
                creates="record_consent",
                create=consent_create,
                updates="withdraw_consent",
                update=consent_change,
                delete=lambda rid, v: ("withdraw_consent", {"consent_id": rid, "expected_version": v}),
                current=lambda g, rid: g.read_consent(consent_id=rid),
            ),
        ),
    ),
)
