"""FHIR DiagnosticReport: a lab report and the Observations it groups (`result`), through the
gate. Read, searched by patient and created (its results: Observations of the same patient, in
no other report), amended or entered-in-error with If-Match (PUT, DELETE); every kept version
by vread and `_history`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydantic import ValidationError

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
    LOINC,
    as_received,
    clean,
    meta,
    ref,
    when,
)
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import Search, chart_section, date, one_record, reference, respond, token
from carnet.kernel.errors import InvalidInput
from carnet.phi.schemas import DiagnosticReportInput

router = APIRouter(prefix="/fhir", tags=["fhir"])


REPORT_CATEGORY = "http://terminology.hl7.org/CodeSystem/v2-0074"


# == mapping ===================================================================================
def report_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    received = as_received(d)
    if received is not None:
        return checked(DiagnosticReport, received)
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
            "basedOn": [ref("ServiceRequest", d["order_id"])] if d.get("order_id") else None,
            "result": [ref("Observation", o) for o in d.get("result_ids") or []],
            "conclusion": d.get("conclusion"),
        }
    )
    return checked(DiagnosticReport, resource)


# == routes ====================================================================================
SEARCH = Search(
    "DiagnosticReport",
    {
        "patient": reference("subject", target="Patient"),
        "subject": reference("subject"),
        "status": token("status"),
        "code": token("code"),
        "category": token("category"),
        # R4: the clinically relevant time (effective[x]); a lab report without it, its issue time
        "date": date("effectiveDateTime", "effectivePeriod", "issued"),
        "issued": date("issued"),
        "result": reference("result", target="Observation"),
        "encounter": reference("encounter", target="Encounter"),
        "based-on": reference("basedOn", target="ServiceRequest"),
    },
    fetch=chart_section("list_diagnostic_reports", report_to_fhir),
    read=one_record("read_diagnostic_report", "report_id", report_to_fhir),
    includes=("subject", "patient", "result", "encounter", "based-on"),
)


@router.get("/DiagnosticReport")
def search_reports(request: Request) -> Response:
    return respond(request, SEARCH)


def _based_on(body: dict[str, Any], what: str) -> str | None:
    """The lab order (ServiceRequest) a result answers; any other basedOn is refused by name."""
    found = None
    for item in body.get("basedOn") or []:
        target = reference_id((item or {}).get("reference"), "ServiceRequest")
        if target is None or found is not None:
            raise InvalidInput(f"{what}.basedOn: one reference ServiceRequest/<id> (a lab order)")
        found = target
    return found


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
        "order_id": _based_on(body, "DiagnosticReport"),
        "received": body,
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


# == declaration ===============================================================================
MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            "DiagnosticReport",
            ("read", "vread", "history-instance", "search-type", "create", "update", "delete"),
            searcher=SEARCH,
            writes=Writes(
                DiagnosticReport,
                report_to_fhir,
                creates="record_diagnostic_report",
                create=lambda r, g, m: ("record_diagnostic_report", {"data": report_input(r)}),
                updates="amend_diagnostic_report",
                update=report_change,
                delete=lambda rid, v: (
                    "amend_diagnostic_report",
                    {"report_id": rid, "expected_version": v, "status": "entered-in-error"},
                ),
                current=lambda g, rid: g.read_diagnostic_report(report_id=rid),
            ),
        ),
    ),
)
