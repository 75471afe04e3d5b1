"""FHIR CareTeam, DiagnosticReport, Consent and Provenance, all through the gate.

- CareTeam: one per care relationship (care team membership or referral), read and searched
  by patient. Created (POST: subject, one participant member Practitioner, category referral or
  care_team, period.end, reasonCode) by a physician in the patient's care, for a colleague of
  the same facility, never for themself, bounded in time (carnet.access.policy); ended (PUT
  status inactive with If-Match, or DELETE): kept, its access gone at once. Every version by
  vread and `_history`.
- DiagnosticReport: a lab report and the Observations it groups (`result`); read, searched and
  created (its results: Observations of the same patient, in no other report), amended or
  entered-in-error with If-Match (PUT, DELETE); every kept
  version by vread and `_history`.
- Consent: the patient's privacy decisions. Recording one (`oppose-other-facilities`) hides the
  patient from every facility but the managing one at once; withdrawing it (PUT status
  inactive, or DELETE) lifts that. Kept either way, every version in `_history`.
- Provenance: who wrote which version of a resource, from the versioned history; read, and
  searched by `target`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from fhir.resources.R4B.careteam import CareTeam
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.provenance import Provenance
from pydantic import ValidationError

from carnet.fhir.api import (
    checked,
    expected_version,
    gate_for,
    history_response,
    instant,
    paged,
    parse_instant,
    parse_version,
    reference_id,
    resource_response,
    validated,
    vread_response,
)
from carnet.fhir.clinical import date_matches, patient_of
from carnet.fhir.mapping import LOINC, clean, meta, ref, when
from carnet.fhir.metadata import SUPPORTED
from carnet.kernel import clock
from carnet.kernel.errors import InvalidInput
from carnet.phi.gate import OPPOSE_OTHER_FACILITIES, Gate
from carnet.phi.schemas import CareRelationshipInput, DiagnosticReportInput, ProvenanceView

router = APIRouter(prefix="/fhir", tags=["fhir"])
FhirBody = Body(..., media_type="application/fhir+json")

CARE_KIND = "https://carnet.example.org/fhir/CodeSystem/care-relationship"
REPORT_CATEGORY = "http://terminology.hl7.org/CodeSystem/v2-0074"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_CATEGORY = "http://loinc.org"
CONSENT_POLICY = "https://carnet.example.org/fhir/consent-policy/"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ACCOUNT_SYSTEM = "https://carnet.example.org/fhir/account"

SUPPORTED["CareTeam"] = {
    "interactions": ["read", "vread", "history-instance", "search-type", "create", "update", "delete"],
    "search": {
        "patient": "reference",
        "subject": "reference",
        "status": "token",
        "category": "token",
        "participant": "reference",
    },
}
SUPPORTED["DiagnosticReport"] = {
    "interactions": ["read", "vread", "history-instance", "search-type", "create", "update", "delete"],
    "search": {
        "patient": "reference",
        "subject": "reference",
        "status": "token",
        "code": "token",
        "category": "token",
        "date": "date",
    },
}
SUPPORTED["Consent"] = {
    "interactions": ["read", "vread", "history-instance", "search-type", "create", "update", "delete"],
    "search": {"patient": "reference", "status": "token"},
}
SUPPORTED["Provenance"] = {
    "interactions": ["read", "search-type"],
    "search": {"target": "reference", "patient": "reference"},
}


def _codes(raw: str | None) -> list[str] | None:
    """A token search value (`a,b`, each `system|code` or `code`) as its codes."""
    if raw is None:
        return None
    return [c.rpartition("|")[2] for c in raw.split(",")]


# == CareTeam ==================================================================================
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


def _care_codes(resource: dict[str, Any]) -> list[Any]:
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
    codes = _care_codes(resource)
    return CARE_OPERATIONS.get(str(codes[0]), "refer_patient") if len(codes) == 1 else "refer_patient"


def care_team_create(resource: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A new CareTeam as the gate operation it asks for (referral or care-team membership)."""
    if resource.get("status", "active") != "active":
        raise InvalidInput("a new CareTeam is created active (end it later with an update)")
    codes = _care_codes(resource)
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


@router.get("/CareTeam")
def search_care_teams(request: Request) -> Response:
    gate = gate_for(request, "CareTeam", "search")
    patient = patient_of(request, {"status", "category", "participant"})
    status = _codes(request.query_params.get("status"))
    category = _codes(request.query_params.get("category"))
    participant = reference_id(request.query_params.get("participant"), "Practitioner")
    views = [
        v
        for v in gate.list_care_team(patient_id=patient)
        if (status is None or v.status in status)
        and (category is None or v.kind in category)
        and (participant is None or v.practitioner_id == participant)
    ]
    return paged(request, "CareTeam", [care_team_to_fhir(v.model_dump()) for v in views])


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


# == DiagnosticReport ==========================================================================
def report_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    resource = clean(
        {
            "resourceType": "DiagnosticReport",
            "id": d["id"],
            "meta": meta(d),
            "status": d.get("status") or "unknown",
            "category": [{"coding": [{"system": REPORT_CATEGORY, "code": "LAB"}]}],
            "code": {"coding": [{"system": LOINC, "code": d.get("code"), "display": d.get("display")}]}
            if d.get("code")
            else {"text": "lab report"},
            "subject": ref("Patient", d.get("patient_id")),
            "issued": when(d.get("issued_at")),
            "performer": [ref("Practitioner", d["performer_id"])] if d.get("performer_id") else None,
            "result": [ref("Observation", o) for o in d.get("result_ids") or []],
            "conclusion": d.get("conclusion"),
        }
    )
    return checked(DiagnosticReport, resource)


@router.get("/DiagnosticReport")
def search_reports(request: Request) -> Response:
    gate = gate_for(request, "DiagnosticReport", "search")
    patient = patient_of(request, {"status", "code", "category", "date"})
    status = _codes(request.query_params.get("status"))
    code = _codes(request.query_params.get("code"))
    category = _codes(request.query_params.get("category"))
    dates = request.query_params.getlist("date")
    # Every report served is a laboratory one (category LAB).
    views = [
        v
        for v in gate.list_diagnostic_reports(patient_id=patient)
        if (status is None or v.status in status)
        and (code is None or v.code in code)
        and (category is None or "LAB" in category)
        and (not dates or date_matches(v.issued_at, dates))
    ]
    return paged(request, "DiagnosticReport", [report_to_fhir(v.model_dump()) for v in views])


def report_input(body: dict[str, Any]) -> DiagnosticReportInput:
    """A lab report: subject, a LOINC code, issued, and its result Observations (at least one)."""
    patient = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    codings = (body.get("code") or {}).get("coding") or []
    code = next((c for c in codings if c.get("system") == LOINC), None)
    issued = body.get("issued")
    if patient is None or code is None or issued is None:
        raise InvalidInput(f"a DiagnosticReport needs subject, a code.coding in {LOINC} and issued")
    results = []
    for item in body.get("result") or []:
        target = reference_id((item or {}).get("reference"), "Observation")
        if target is None:
            raise InvalidInput("each result is a reference Observation/<id>")
        results.append(target)
    if not results:
        raise InvalidInput("a lab report groups its results: result needs an Observation reference")
    values = {
        "patient_id": patient,
        "code": code.get("code"),
        "display": code.get("display") or (body.get("code") or {}).get("text") or code.get("code"),
        "status": body.get("status"),
        "issued_at": parse_instant(issued, "issued"),
        "conclusion": body.get("conclusion"),
        "result_ids": results,
    }
    try:
        return DiagnosticReportInput(**values)
    except ValidationError as exc:
        places = sorted({".".join(str(p) for p in err.get("loc", ())) for err in exc.errors()})
        raise InvalidInput("invalid DiagnosticReport: check " + ", ".join(places)) from None


@router.post("/DiagnosticReport")
def create_report(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Record a lab report; its `result` Observations must be of the same patient (a reference
    to anyone else's is refused with an OperationOutcome, as if it did not exist)."""
    gate = gate_for(request, "DiagnosticReport", "create")
    resource = validated(DiagnosticReport, body, "DiagnosticReport")
    view = gate.record_diagnostic_report(data=report_input(resource))
    return resource_response(request, report_to_fhir(view.model_dump()), status=201)


@router.get("/DiagnosticReport/{report_id}")
def read_report(request: Request, report_id: str) -> Response:
    gate = gate_for(request, "DiagnosticReport", "read")
    return resource_response(
        request, report_to_fhir(gate.read_diagnostic_report(report_id=report_id).model_dump())
    )


def report_change(body: dict[str, Any], report_id: str, version: int) -> tuple[str, dict[str, Any]]:
    """A PUT of a lab report as the gate's amendment: status, conclusion and result only."""
    results = []
    for item in body.get("result") or []:
        target = reference_id((item or {}).get("reference"), "Observation")
        if target is None:
            raise InvalidInput("each result is a reference Observation/<id>")
        results.append(target)
    return "amend_diagnostic_report", {
        "report_id": report_id,
        "expected_version": version,
        "status": str(body.get("status")),
        "conclusion": body.get("conclusion"),
        "result_ids": results,
    }


@router.put("/DiagnosticReport/{report_id}")
def update_report(request: Request, report_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """Amend a lab report (status amended or corrected: its conclusion and results, Observations
    of the same patient only) or mark it entered-in-error, with If-Match; only status,
    conclusion and result are taken, every earlier version stays in _history."""
    gate = gate_for(request, "DiagnosticReport", "update")
    resource = validated(DiagnosticReport, body, "DiagnosticReport")
    if resource.get("id") != report_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    _name, arguments = report_change(resource, report_id, version)
    view = gate.amend_diagnostic_report(**arguments)
    return resource_response(request, report_to_fhir(view.model_dump()))


@router.delete("/DiagnosticReport/{report_id}")
def delete_report(request: Request, report_id: str) -> Response:
    """Mark a lab report entered-in-error: kept, still readable with that status."""
    gate = gate_for(request, "DiagnosticReport", "delete")
    version = parse_version(request.headers.get("if-match"))
    if version is None:
        version = gate.read_diagnostic_report(report_id=report_id).version_id or 1
    view = gate.amend_diagnostic_report(
        report_id=report_id, expected_version=version, status="entered-in-error"
    )
    return resource_response(request, report_to_fhir(view.model_dump()))


@router.get("/DiagnosticReport/{report_id}/_history")
def report_history(request: Request, report_id: str) -> Response:
    """Every kept version of a lab report, with its author and time (redacted like a read)."""
    return history_response(request, "DiagnosticReport", report_id, report_to_fhir)


@router.get("/DiagnosticReport/{report_id}/_history/{version_id}")
def vread_report(request: Request, report_id: str, version_id: str) -> Response:
    return vread_response(request, "DiagnosticReport", report_id, version_id, report_to_fhir)


# == Consent ===================================================================================
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


@router.get("/Consent")
def search_consents(request: Request) -> Response:
    gate = gate_for(request, "Consent", "search")
    patient = patient_of(request, {"status"})
    status = _codes(request.query_params.get("status"))
    views = [v for v in gate.list_consents(patient_id=patient) if status is None or v.status in status]
    return paged(request, "Consent", [consent_to_fhir(v.model_dump()) for v in views])


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


# == Provenance ================================================================================
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


def everything_sections(gate: Gate) -> list[tuple[str, Any, Any]]:
    """What Patient/$everything adds from this module: (type, gate list method, mapper)."""
    return [
        ("CareTeam", gate.list_care_team, care_team_to_fhir),
        ("DiagnosticReport", gate.list_diagnostic_reports, report_to_fhir),
        ("Consent", gate.list_consents, consent_to_fhir),
    ]
