"""FHIR MedicationRequest: prescriptions, through the gate. Searched by patient (status), read,
prescribed (create: an active allergy to the substance refuses it unless overridden with a
reason) and stopped (update, If-Match); every version by vread and `_history`."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.medicationrequest import MedicationRequest

from carnet.fhir.core.api import (
    FhirBody,
    checked,
    expected_version,
    gate_for,
    parse_instant,
    reference_id,
    resource_response,
    validated,
)
from carnet.fhir.core.bundles import history_response, vread_response
from carnet.fhir.core.mapping import (
    ATC_SYSTEM,
    EXT,
    as_received,
    clean,
    extension_text,
    meta,
    received_instant,
    ref,
    schema_input,
    when,
)
from carnet.fhir.core.outcome import FHIR_JSON
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import Search, chart_section, date, one_record, reference, respond, token
from carnet.kernel.errors import InvalidInput
from carnet.phi.gate import AllergyWarning
from carnet.phi.schemas import PrescriptionInput, ReceivedPrescriptionInput

router = APIRouter(prefix="/fhir", tags=["fhir"])
PRESCRIPTION = "MedicationRequest"


CIP_SYSTEM = "urn:oid:1.2.250.1.213.2.3.1"  # CIP13 medication codes
ALLERGY_OVERRIDE = EXT + "allergy-override-reason"


# == mapping ===================================================================================
def prescription_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    received = as_received(d)
    if received is not None:
        return checked(MedicationRequest, received)
    codings = []
    if d.get("medication_code"):
        codings.append(
            clean(
                {"system": CIP_SYSTEM, "code": d["medication_code"], "display": d.get("medication_display")}
            )
        )
    if d.get("substance_code"):
        codings.append({"system": ATC_SYSTEM, "code": d["substance_code"]})
    contained = None
    detected = None
    if d.get("warnings"):
        contained = [
            {
                "resourceType": "DetectedIssue",
                "id": "allergy",
                "status": "final",
                "code": {"text": "drug-allergy alert"},
                "severity": "high",
                "detail": "; ".join(d["warnings"]),
            }
        ]
        detected = [{"reference": "#allergy"}]
    extension = None
    if d.get("allergy_override_reason"):
        extension = [{"url": ALLERGY_OVERRIDE, "valueString": d["allergy_override_reason"]}]
    resource = clean(
        {
            "resourceType": "MedicationRequest",
            "id": d["id"],
            "meta": meta(d),
            "contained": contained,
            "extension": extension,
            "status": d.get("status") or "unknown",
            "statusReason": {"text": d["stop_reason"]} if d.get("stop_reason") else None,
            "intent": "order",
            "medicationCodeableConcept": clean({"coding": codings, "text": d.get("medication_display")})
            or {"text": "redacted"},
            "subject": ref("Patient", d.get("patient_id")) or {"display": "redacted"},
            "requester": ref("Practitioner", d.get("prescriber_id")),
            "authoredOn": when(d.get("authored_at")),
            "detectedIssue": detected,
            "dosageInstruction": [{"text": d["dosage_text"]}] if d.get("dosage_text") else None,
            "dispenseRequest": {"validityPeriod": {"end": when(d["valid_until"])}}
            if d.get("valid_until")
            else None,
        }
    )
    return checked(MedicationRequest, resource)


def prescription_input(body: dict[str, Any]) -> PrescriptionInput:
    subject = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    concept = body.get("medicationCodeableConcept") or {}
    codings = concept.get("coding") or []
    medication = next((c for c in codings if c.get("system") == CIP_SYSTEM), None)
    substance = next((c for c in codings if c.get("system") == ATC_SYSTEM), None)
    if subject is None or medication is None or substance is None:
        raise InvalidInput(
            "a MedicationRequest needs subject and medicationCodeableConcept codings"
            f" in {CIP_SYSTEM} and {ATC_SYSTEM}"
        )
    dosage = " ".join(d.get("text", "") for d in body.get("dosageInstruction") or []).strip()
    end = ((body.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("end")
    encounter = (
        reference_id((body.get("encounter") or {}).get("reference"), "Encounter")
        if body.get("encounter")
        else None
    )
    values = {
        "patient_id": subject,
        "medication_code": medication.get("code"),
        "medication_display": medication.get("display") or concept.get("text"),
        "substance_code": substance.get("code"),
        "dosage_text": dosage or None,
        "valid_until": parse_instant(end, "validityPeriod.end") if end else None,
        "encounter_id": encounter,
        "allergy_override_reason": extension_text(body, ALLERGY_OVERRIDE),
    }
    return schema_input(PrescriptionInput, values, "MedicationRequest")  # type: ignore[no-any-return]


def _carnets(body: dict[str, Any]) -> bool:
    """A prescription carnet writes: coded in CIP (the medication) and ATC (its substance)."""
    codings = (body.get("medicationCodeableConcept") or {}).get("coding") or []
    systems = {c.get("system") for c in codings if isinstance(c, dict)}
    return CIP_SYSTEM in systems and ATC_SYSTEM in systems


def received_prescription_input(body: dict[str, Any]) -> ReceivedPrescriptionInput:
    """Another system's prescription (RxNorm, SNOMED CT, a text...): kept whole; the ATC coding,
    when there is one, is what carnet's checks read."""
    subject = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    if subject is None:
        raise InvalidInput("MedicationRequest.subject: a reference Patient/<id> is required")
    if body.get("medicationReference") is not None:
        raise InvalidInput(
            "MedicationRequest.medicationReference: carnet holds no Medication resource; send"
            " medicationCodeableConcept (refused, not dropped)"
        )
    concept = body.get("medicationCodeableConcept") or {}
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict) and c.get("code")]
    atc = next((c for c in codings if c.get("system") == ATC_SYSTEM), None)
    first = atc or (codings[0] if codings else {})
    display = str(first.get("display") or concept.get("text") or first.get("code") or "")
    if not display:
        raise InvalidInput("MedicationRequest.medicationCodeableConcept: a coding or a text is required")
    for element, value in (("coding.code", first.get("code")), ("ATC code", (atc or {}).get("code"))):
        if value is not None and len(str(value)) > 40:
            raise InvalidInput(f"MedicationRequest.medicationCodeableConcept.{element}: longer than 40")
    dosage = " ".join(str(d.get("text") or "") for d in body.get("dosageInstruction") or []).strip()
    end = ((body.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("end")
    encounter = body.get("encounter")
    values = {
        "patient_id": subject,
        "medication_code": str(first.get("code") or ""),
        "medication_display": display[:200],
        "substance_code": str((atc or {}).get("code") or ""),
        "dosage_text": dosage[:500],
        "status": body.get("status"),
        "authored_at": received_instant(body["authoredOn"], "MedicationRequest.authoredOn")
        if body.get("authoredOn")
        else None,
        "valid_until": received_instant(end, "MedicationRequest.dispenseRequest.validityPeriod.end")
        if end
        else None,
        "encounter_id": reference_id(encounter.get("reference"), "Encounter")
        if isinstance(encounter, dict) and encounter.get("reference")
        else None,
        "allergy_override_reason": extension_text(body, ALLERGY_OVERRIDE),
        "received": body,
    }
    return schema_input(ReceivedPrescriptionInput, values, "MedicationRequest")  # type: ignore[no-any-return]


def prescription_create(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A new MedicationRequest as the gate operation it is: coded in CIP and ATC, a prescription
    written here (checked, prescribed by the author); in any other system, another system's
    prescription kept whole as received (checked by its ATC coding when it has one)."""
    if _carnets(body):
        if body.get("intent") not in ("order", "original-order", None):
            raise InvalidInput("only orders are prescribed here (intent order)")
        return "prescribe", {"data": prescription_input(body)}
    return "record_prescription", {"data": received_prescription_input(body)}


def prescription_creates(body: dict[str, Any]) -> str:
    return "prescribe" if _carnets(body) else "record_prescription"


# == routes ====================================================================================
SEARCH = Search(
    PRESCRIPTION,
    {
        "patient": reference("subject", target="Patient"),
        "subject": reference("subject"),
        "status": token("status"),
        "intent": token("intent"),
        "code": token("medicationCodeableConcept"),
        "authoredon": date("authoredOn"),
        "requester": reference("requester", target="Practitioner"),
        "encounter": reference("encounter", target="Encounter"),
    },
    fetch=chart_section("list_prescriptions", prescription_to_fhir),
    read=one_record("read_prescription", "prescription_id", prescription_to_fhir),
    includes=("subject", "patient", "encounter"),
)


@router.get("/MedicationRequest")
def search_prescriptions(request: Request) -> Response:
    return respond(request, SEARCH)


@router.post("/MedicationRequest")
def create_prescription(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Prescribe. An active allergy to the substance refuses the prescription (422, nothing
    written) unless it carries an allergy-override-reason extension; then it is created and
    the answer carries the alert as a contained DetectedIssue. Not coded in CIP and ATC: another
    system's prescription, kept whole as received (its ATC coding, if any, checked the same)."""
    gate = gate_for(request, PRESCRIPTION, "create")
    resource = validated(MedicationRequest, body, PRESCRIPTION)
    name, arguments = prescription_create(resource)
    try:
        view = getattr(gate, name)(**arguments)
    except AllergyWarning as exc:
        return Response(
            content=_allergy_outcome(str(exc)),
            status_code=422,
            media_type=FHIR_JSON,
        )
    return resource_response(request, prescription_to_fhir(view.model_dump()), status=201)


def _allergy_outcome(message: str) -> str:
    return json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {"severity": "error", "code": "business-rule", "diagnostics": message},
                {
                    "severity": "warning",
                    "code": "business-rule",
                    "details": {"text": "drug-allergy alert"},
                    "diagnostics": "to prescribe anyway, add extension "
                    + f"{ALLERGY_OVERRIDE} with the reason",
                },
            ],
        }
    )


@router.get("/MedicationRequest/{prescription_id}")
def read_prescription(request: Request, prescription_id: str) -> Response:
    gate = gate_for(request, PRESCRIPTION, "read")
    view = gate.read_prescription(prescription_id=prescription_id)
    return resource_response(request, prescription_to_fhir(view.model_dump()))


@router.put("/MedicationRequest/{prescription_id}")
def update_prescription(request: Request, prescription_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """The one change a prescription takes: stop it (status stopped, statusReason.text)."""
    gate = gate_for(request, PRESCRIPTION, "update")
    resource = validated(MedicationRequest, body, PRESCRIPTION)
    if resource.get("id") != prescription_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    reason = (resource.get("statusReason") or {}).get("text")
    if resource.get("status") != "stopped" or not reason:
        raise InvalidInput("a prescription is changed by stopping it: status stopped with statusReason.text")
    view = gate.stop_prescription(prescription_id=prescription_id, expected_version=version, reason=reason)
    return resource_response(request, prescription_to_fhir(view.model_dump()))


@router.get("/MedicationRequest/{prescription_id}/_history")
def prescription_history(request: Request, prescription_id: str) -> Response:
    return history_response(request, PRESCRIPTION, prescription_id, prescription_to_fhir)


@router.get("/MedicationRequest/{prescription_id}/_history/{version_id}")
def vread_prescription(request: Request, prescription_id: str, version_id: str) -> Response:
    return vread_response(request, PRESCRIPTION, prescription_id, version_id, prescription_to_fhir)


# == in a Bundle, and the declaration ==========================================================
def prescription_change(r: dict[str, Any], rid: str, version: int) -> tuple[str, dict[str, Any]]:
    reason = (r.get("statusReason") or {}).get("text")
    if r.get("status") != "stopped" or not reason:
        raise InvalidInput("a prescription is changed by stopping it: status stopped with statusReason.text")
    return "stop_prescription", {"prescription_id": rid, "expected_version": version, "reason": reason}


MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            PRESCRIPTION,
            ("read", "vread", "history-instance", "search-type", "create", "update"),
            searcher=SEARCH,
            writes=Writes(
                MedicationRequest,
                prescription_to_fhir,
                creates=prescription_creates,
                create=lambda r, g, m: prescription_create(r),
                updates="stop_prescription",
                update=prescription_change,
            ),
        ),
    ),
)
