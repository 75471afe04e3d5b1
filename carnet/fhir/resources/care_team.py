"""FHIR CareTeam: one per care relationship (care team membership or referral), through the gate.

Read and searched by patient. Created (POST: subject, one participant member Practitioner,
category referral or care_team, period.end, reasonCode) by a physician in the patient's care,
for a colleague of the same facility, never for themself, bounded in time
(carnet.access.policy); ended (PUT status inactive with If-Match, or DELETE): kept, its access
gone at once. Every version by vread and `_history`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.careteam import CareTeam

from carnet.fhir.core.api import (
    FhirBody,
    checked,
    expected_version,
    gate_for,
    parse_instant,
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
from carnet.fhir.core.search import (
    Found,
    Query,
    Search,
    chart_section,
    date,
    one_record,
    reference,
    respond,
    token,
)
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput
from carnet.phi.gate import Gate
from carnet.phi.schemas import CareRelationshipInput

router = APIRouter(prefix="/fhir", tags=["fhir"])


CARE_KIND = "https://carnet.example.org/fhir/CodeSystem/care-relationship"


# == mapping ===================================================================================
def care_team_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    period = clean({"start": when(d.get("start_at")), "end": when(d.get("end_at"))})
    resource = clean(
        {
            "resourceType": "CareTeam",
            "id": d["id"],
            "meta": meta(d),
            "status": d.get("status"),
            "category": [{"coding": [{"system": CARE_KIND, "code": d["kind"]}]}] if d.get("kind") else None,
            "subject": ref("Patient", d.get("patient_id")),
            "period": period or None,
            "participant": [{"member": ref("Practitioner", d["practitioner_id"])}]
            if d.get("practitioner_id")
            else None,
            "managingOrganization": [ref("Organization", d["facility_id"])] if d.get("facility_id") else None,
            "reasonCode": [{"text": d["reason"]}] if d.get("reason") else None,
        }
    )
    return checked(CareTeam, resource)


CARE_OPERATIONS = {"referral": "refer_patient", "care_team": "add_care_team_member"}


def _reason_text(resource: dict[str, Any]) -> str | None:
    for concept in resource.get("reasonCode") or []:
        if not isinstance(concept, dict):
            continue
        if concept.get("text"):
            return str(concept["text"])
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
                return str(coding.get("display") or coding.get("code"))
    return None


def _caretokens(resource: dict[str, Any]) -> list[Any]:
    return [
        c.get("code")
        for concept in resource.get("category") or []
        if isinstance(concept, dict)
        for c in (concept.get("coding") or [])
        if isinstance(c, dict) and c.get("system") == CARE_KIND
    ]


def care_team_operation(resource: dict[str, Any]) -> str:
    """The gate operation a new CareTeam asks for, before it is validated (a referral if unsure:
    the checks of the operation then refuse what is wrong)."""
    codes = _caretokens(resource)
    return CARE_OPERATIONS.get(str(codes[0]), "refer_patient") if len(codes) == 1 else "refer_patient"


def care_team_create(resource: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A new CareTeam as the gate operation it asks for (referral or care-team membership)."""
    if resource.get("status", "active") != "active":
        raise InvalidInput("a new CareTeam is created active (end it later with an update)")
    codes = _caretokens(resource)
    if len(codes) != 1 or codes[0] not in CARE_OPERATIONS:
        raise InvalidInput(f"a CareTeam needs one category of {CARE_KIND}: referral or care_team")
    patient = reference_id((resource.get("subject") or {}).get("reference"), "Patient")
    if patient is None:
        raise InvalidInput("a CareTeam needs subject (a reference Patient/<id>)")
    members = [p.get("member") or {} for p in resource.get("participant") or []]
    practitioner = reference_id(members[0].get("reference"), "Practitioner") if len(members) == 1 else None
    if practitioner is None:
        raise InvalidInput("a CareTeam names one participant member (a reference Practitioner/<id>)")
    period = resource.get("period") or {}
    if "start" in period:
        raise InvalidInput("period.start is set by the server: a care relationship starts when made")
    if not period.get("end"):
        raise InvalidInput("a CareTeam needs period.end: care relationships are time-limited")
    end = parse_instant(str(period["end"]), "period.end")
    reason = _reason_text(resource)
    if reason is None:
        raise InvalidInput("a CareTeam needs reasonCode (why the colleague sees the patient)")
    data = CareRelationshipInput(patient_id=patient, practitioner_id=practitioner, reason=reason, end_at=end)
    return CARE_OPERATIONS[codes[0]], {"data": data}


def care_team_change(resource: dict[str, Any], care_team_id: str, version: int) -> tuple[str, dict[str, Any]]:
    """The one change a CareTeam takes: ending it now (status inactive, or period.end now)."""
    if resource.get("status") != "inactive":
        end = (resource.get("period") or {}).get("end")
        if end is None or parse_instant(str(end), "period.end") > clock.now() + dt.timedelta(minutes=5):
            raise InvalidInput(
                "a CareTeam is changed only by ending it now (status inactive, or period.end now): "
                "make a new one to change its term"
            )
    return "end_care_relationship", {"care_team_id": care_team_id, "expected_version": version}


# == routes ====================================================================================
def worklist(gate: Gate, query: Query) -> Found | None:
    """`participant=<me>`: the patients I care for (care team, referral), current ones, as one
    list exposure; another practitioner's is refused by the gate (audited)."""
    named = query.named("participant")
    if not named:
        return None
    values = [v for c in named for v in c.values]
    practitioner = reference_id(values[0], "Practitioner") if len(values) == 1 else None
    if practitioner is None:
        raise InvalidInput("a worklist is one practitioner's: participant=Practitioner/<id>")
    views = gate.care_team_worklist(practitioner_id=practitioner)
    return Found([care_team_to_fhir(v.model_dump()) for v in views])


SEARCH = Search(
    "CareTeam",
    {
        "patient": reference("subject", target="Patient"),
        "subject": reference("subject"),
        "status": token("status"),
        "category": token("category"),
        "participant": reference("participant.member", target="Practitioner"),
        "date": date("period"),
    },
    fetch=chart_section("list_care_team", care_team_to_fhir),
    read=one_record("read_care_team", "care_team_id", care_team_to_fhir),
    source=worklist,
    includes=("subject", "patient"),
)


@router.get("/CareTeam")
def search_care_teams(request: Request) -> Response:
    return respond(request, SEARCH)


@router.get("/CareTeam/{care_team_id}")
def read_care_team(request: Request, care_team_id: str) -> Response:
    gate = gate_for(request, "CareTeam", "read")
    return resource_response(
        request, care_team_to_fhir(gate.read_care_team(care_team_id=care_team_id).model_dump())
    )


@router.post("/CareTeam")
def create_care_team(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Refer a patient to a colleague (category referral) or add one to the care team."""
    gate = gate_for(request, "CareTeam", "create")
    name, arguments = care_team_create(validated(CareTeam, body, "CareTeam"))
    view = getattr(gate, name)(**arguments)
    return resource_response(request, care_team_to_fhir(view.model_dump()), status=201)


@router.put("/CareTeam/{care_team_id}")
def update_care_team(request: Request, care_team_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """End a care relationship now, with If-Match; it is kept, its access stops at once."""
    gate = gate_for(request, "CareTeam", "update")
    resource = validated(CareTeam, body, "CareTeam")
    if resource.get("id") != care_team_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    _name, arguments = care_team_change(resource, care_team_id, version)
    view = gate.end_care_relationship(**arguments)
    return resource_response(request, care_team_to_fhir(view.model_dump()))


@router.delete("/CareTeam/{care_team_id}")
def delete_care_team(request: Request, care_team_id: str) -> Response:
    """A delete ends the relationship (kept, end set); ending an ended one changes nothing."""
    gate = gate_for(request, "CareTeam", "delete")
    version = parse_version(request.headers.get("if-match"))
    view = gate.end_care_relationship(care_team_id=care_team_id, expected_version=version)
    return resource_response(request, care_team_to_fhir(view.model_dump()))


@router.get("/CareTeam/{care_team_id}/_history")
def care_team_history(request: Request, care_team_id: str) -> Response:
    return history_response(request, "CareTeam", care_team_id, care_team_to_fhir)


@router.get("/CareTeam/{care_team_id}/_history/{version_id}")
def vread_care_team(request: Request, care_team_id: str, version_id: str) -> Response:
    return vread_response(request, "CareTeam", care_team_id, version_id, care_team_to_fhir)


# == declaration ===============================================================================
MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            "CareTeam",
            ("read", "vread", "history-instance", "search-type", "create", "update", "delete"),
            searcher=SEARCH,
            writes=Writes(
                CareTeam,
                care_team_to_fhir,
                # A referral or a care-team membership, by its category.
                creates=care_team_operation,
                create=lambda r, g, m: care_team_create(r),
                updates="end_care_relationship",
                update=care_team_change,
                # A care relationship ends (kept, its access gone at once).
                delete=lambda rid, v: ("end_care_relationship", {"care_team_id": rid, "expected_version": v}),
                current=lambda g, rid: g.read_care_team(care_team_id=rid),
            ),
        ),
    ),
)
