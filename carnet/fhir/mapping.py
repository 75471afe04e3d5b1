"""The gate's schemas as FHIR R4 resources, and FHIR resources as the gate's inputs.

Mappers take plain dicts (a view's `model_dump()` or a stored version's snapshot) so a read,
a vread and a history entry render the same way. Fields the gate redacted are None and are
left out. Every resource is validated against its fhir.resources R4B model before it leaves.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.invoice import Invoice
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from carnet.fhir.api import checked, instant, parse_instant, reference_id
from carnet.kernel.errors import InvalidInput
from carnet.phi.schemas import (
    AllergyInput,
    AppointmentInput,
    ConditionInput,
    EncounterInput,
    ObservationInput,
    PatientChanges,
    PatientInput,
    PrescriptionInput,
)

INS_SYSTEM = "urn:oid:1.2.250.1.213.1.4.8"  # INS-NIR, the French national health identifier
ATC_SYSTEM = "http://www.whocc.no/atc"
CIP_SYSTEM = "urn:oid:1.2.250.1.213.2.3.1"  # CIP13 medication codes
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
EXT = "https://carnet.example.org/fhir/StructureDefinition/"
AMENDMENT_REASON = EXT + "amendment-reason"
ALLERGY_OVERRIDE = EXT + "allergy-override-reason"
OPPOSES_OTHER_FACILITIES = EXT + "opposes-other-facilities"
INVOICE_ENCOUNTER = EXT + "invoice-encounter"  # the stay an invoice bills (R4 Invoice has no encounter)
CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ENCOUNTER_CLASS = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
COVERAGE_TYPE = "https://carnet.example.org/fhir/CodeSystem/coverage-kind"


def meta(d: dict[str, Any]) -> dict[str, Any]:
    """meta.versionId, and meta.lastUpdated when the view carries the record's last change."""
    out = {"versionId": str(d.get("version_id") or 1)}
    updated = when(d.get("updated_at"))
    if updated is not None:
        out["lastUpdated"] = updated
    return out


def ref(resource_type: str, value: Any) -> dict[str, str] | None:
    return {"reference": f"{resource_type}/{value}"} if value else None


def clean(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if v not in (None, [], {})}


def when(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return instant(value)
    return instant(dt.datetime.fromisoformat(str(value)))


# == Patient ===================================================================================
def patient_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    telecom = []
    if d.get("phone"):
        telecom.append({"system": "phone", "value": d["phone"]})
    if d.get("email"):
        telecom.append({"system": "email", "value": d["email"]})
    name = None
    if d.get("family") or d.get("given"):
        name = [
            clean(
                {
                    "use": "official",
                    "family": d.get("family"),
                    "given": [d["given"]] if d.get("given") else None,
                }
            )
        ]
    address = None
    if isinstance(d.get("address"), dict):
        a = d["address"]
        address = [
            clean(
                {
                    "line": [a["line"]] if a.get("line") else None,
                    "city": a.get("city"),
                    "postalCode": a.get("postalCode") or a.get("postal_code"),
                    "country": a.get("country"),
                }
            )
        ]
    extension = None
    if d.get("opposes_other_facilities") is not None:
        extension = [{"url": OPPOSES_OTHER_FACILITIES, "valueBoolean": bool(d["opposes_other_facilities"])}]
    resource = clean(
        {
            "resourceType": "Patient",
            "id": d["id"],
            "meta": meta(d),
            "extension": extension,
            "identifier": [{"system": INS_SYSTEM, "value": d["ins"]}] if d.get("ins") else None,
            "active": d.get("active"),
            "name": name,
            "telecom": telecom,
            "gender": d.get("gender"),
            "birthDate": d.get("birth_date"),
            "address": address,
            "generalPractitioner": [ref("Practitioner", d["designated_physician_id"])]
            if d.get("designated_physician_id")
            else None,
            "managingOrganization": ref("Organization", d.get("facility_id")),
            "link": _patient_links(d),
        }
    )
    return checked(Patient, resource)


def _patient_links(d: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A merged duplicate points to the record kept (replaced-by); the kept one to its duplicates."""
    links = []
    if d.get("merged_into_id"):
        links.append({"other": ref("Patient", d["merged_into_id"]), "type": "replaced-by"})
    links.extend({"other": ref("Patient", other), "type": "replaces"} for other in d.get("replaces") or [])
    return links or None


def _patient_fields(body: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    names = body.get("name") or []
    if names:
        official = next((n for n in names if n.get("use") == "official"), names[0])
        if official.get("family"):
            fields["family"] = official["family"]
        if official.get("given"):
            fields["given"] = " ".join(official["given"])
    if body.get("birthDate"):
        try:
            fields["birth_date"] = dt.date.fromisoformat(str(body["birthDate"]))
        except ValueError:
            raise InvalidInput("birthDate must be a full date (YYYY-MM-DD)") from None
    if body.get("gender"):
        fields["gender"] = body["gender"]
    for ident in body.get("identifier") or []:
        if ident.get("system") == INS_SYSTEM and ident.get("value"):
            fields["ins"] = ident["value"]
    for telecom in body.get("telecom") or []:
        if telecom.get("system") in ("phone", "email") and telecom.get("value"):
            fields.setdefault(telecom["system"], telecom["value"])
    addresses = body.get("address") or []
    if addresses:
        a = addresses[0]
        address = {
            "line": ", ".join(a.get("line") or []),
            "city": a.get("city"),
            "postalCode": a.get("postalCode"),
            "country": a.get("country"),
        }
        fields["address"] = {k: v for k, v in address.items() if v}
    gps = body.get("generalPractitioner") or []
    if gps:
        fields["designated_physician_id"] = reference_id(gps[0].get("reference"), "Practitioner")
    for ext in body.get("extension") or []:
        if ext.get("url") == OPPOSES_OTHER_FACILITIES and "valueBoolean" in ext:
            fields["opposes_other_facilities"] = bool(ext["valueBoolean"])
    return fields


def _schema(schema: Any, values: dict[str, Any], what: str) -> Any:
    try:
        return schema(**values)
    except ValidationError as exc:
        places = sorted({".".join(str(p) for p in err.get("loc", ())) or what for err in exc.errors()})
        raise InvalidInput(f"invalid {what}: check " + ", ".join(places)) from None


def patient_input(body: dict[str, Any], default_facility: str | None) -> PatientInput:
    fields = _patient_fields(body)
    org = body.get("managingOrganization") or {}
    facility = reference_id(org.get("reference"), "Organization") if org else default_facility
    if facility is None:
        raise InvalidInput("managingOrganization is required (the facility that registers the patient)")
    missing = [
        n
        for n, k in (
            ("name.family", "family"),
            ("name.given", "given"),
            ("birthDate", "birth_date"),
            ("gender", "gender"),
        )
        if k not in fields
    ]
    if missing:
        raise InvalidInput("a Patient needs " + ", ".join(missing))
    return _schema(PatientInput, dict(fields, facility_id=facility), "Patient")  # type: ignore[no-any-return]


def patient_changes(body: dict[str, Any]) -> PatientChanges:
    """What a PUT sets: the fields it carries (the gate cannot blank a field, by design:
    identity data is amended, never erased through the API)."""
    return _schema(PatientChanges, _patient_fields(body), "Patient")  # type: ignore[no-any-return]


# == Appointment ===============================================================================
def appointment_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    participants: list[dict[str, Any]] = [
        {"actor": ref(t, d.get(key)), "status": "accepted"}
        for t, key in (
            ("Patient", "patient_id"),
            ("Practitioner", "practitioner_id"),
            ("Location", "location_id"),
        )
        if d.get(key)
    ]
    if not participants:  # R4 needs one; a redacted view still names nobody
        participants = [{"status": "accepted", "type": [{"text": "redacted"}]}]
    resource = clean(
        {
            "resourceType": "Appointment",
            "id": d["id"],
            "meta": meta(d),
            "status": d.get("status") or "booked",
            "description": d.get("reason"),
            "cancelationReason": {"text": d["cancel_reason"]} if d.get("cancel_reason") else None,
            "start": when(d.get("start_at")),
            "end": when(d.get("end_at")),
            "participant": participants,
        }
    )
    return checked(Appointment, resource)


def _participant(body: dict[str, Any], resource_type: str) -> str | None:
    for p in body.get("participant") or []:
        ref = (p.get("actor") or {}).get("reference") or ""
        if ref.split("/")[-2:-1] == [resource_type]:
            return reference_id(ref, resource_type)
    return None


def appointment_times(body: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    if not body.get("start") or not body.get("end"):
        raise InvalidInput("an Appointment needs start and end")
    return parse_instant(body["start"], "start"), parse_instant(body["end"], "end")


def appointment_input(body: dict[str, Any]) -> AppointmentInput:
    patient = _participant(body, "Patient")
    practitioner = _participant(body, "Practitioner")
    if patient is None or practitioner is None:
        raise InvalidInput("an Appointment needs a Patient and a Practitioner participant")
    start, end = appointment_times(body)
    values = {
        "patient_id": patient,
        "practitioner_id": practitioner,
        "location_id": _participant(body, "Location"),
        "start_at": start,
        "end_at": end,
        "reason": body.get("description"),
    }
    return _schema(AppointmentInput, values, "Appointment")  # type: ignore[no-any-return]


# == DocumentReference (clinical notes) ========================================================
def note_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    versions = d.get("versions") or []
    latest = versions[-1] if versions else None
    content = [
        {"attachment": {"contentType": "text/plain; charset=utf-8", "title": d.get("title") or "note"}}
    ]
    if latest is not None:
        text = latest["text"] if isinstance(latest, dict) else latest.text
        content[0]["attachment"]["data"] = base64.b64encode(text.encode()).decode()
    version = int(d.get("version_id") or 1)
    resource = clean(
        {
            "resourceType": "DocumentReference",
            "id": d["id"],
            "meta": meta(d),
            "status": "entered-in-error" if d.get("status") == "entered-in-error" else "current",
            "docStatus": "amended" if version > 1 else "final",
            "type": {"coding": [{"system": LOINC, "code": d["kind"]}]} if d.get("kind") else None,
            "description": d.get("title"),
            "subject": ref("Patient", d.get("patient_id")),
            "author": [ref("Practitioner", d["author_id"])] if d.get("author_id") else None,
            "context": {"encounter": [ref("Encounter", d["encounter_id"])]}
            if d.get("encounter_id")
            else None,
            "content": content,
        }
    )
    return checked(DocumentReference, resource)


def note_text(body: dict[str, Any]) -> str:
    for item in body.get("content") or []:
        data = (item.get("attachment") or {}).get("data")
        if data:
            try:
                return base64.b64decode(data, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidInput("content.attachment.data must be base64 of UTF-8 text") from None
    raise InvalidInput("a DocumentReference needs content.attachment.data (the note's text)")


def note_fields(body: dict[str, Any]) -> dict[str, Any]:
    subject = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    if subject is None:
        raise InvalidInput("a DocumentReference needs a subject (Patient)")
    codings = (body.get("type") or {}).get("coding") or []
    kind = next((c.get("code") for c in codings if c.get("code")), None)
    title = body.get("description") or next(
        (
            i.get("attachment", {}).get("title")
            for i in body.get("content") or []
            if i.get("attachment", {}).get("title")
        ),
        None,
    )
    if not kind or not title:
        raise InvalidInput("a DocumentReference needs type.coding (LOINC) and a description (its title)")
    encounters = (body.get("context") or {}).get("encounter") or []
    encounter = reference_id(encounters[0].get("reference"), "Encounter") if encounters else None
    return {
        "patient_id": subject,
        "kind": kind,
        "title": title,
        "text": note_text(body),
        "encounter_id": encounter,
    }


def extension_text(body: dict[str, Any], url: str) -> str | None:
    for ext in body.get("extension") or []:
        if ext.get("url") == url and isinstance(ext.get("valueString"), str):
            value: str = ext["valueString"]
            return value
    return None


# == MedicationRequest =========================================================================
def prescription_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
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
    return _schema(PrescriptionInput, values, "MedicationRequest")  # type: ignore[no-any-return]


# == AllergyIntolerance ========================================================================
def allergy_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
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
        }
    )
    return checked(AllergyIntolerance, resource)


def allergy_input(body: dict[str, Any]) -> AllergyInput:
    patient = reference_id((body.get("patient") or {}).get("reference"), "Patient")
    codings = (body.get("code") or {}).get("coding") or []
    substance = next((c for c in codings if c.get("system") == ATC_SYSTEM), None)
    if patient is None or substance is None:
        raise InvalidInput(f"an AllergyIntolerance needs patient and a code.coding in {ATC_SYSTEM}")
    values = {
        "patient_id": patient,
        "substance_code": substance.get("code"),
        "substance_display": substance.get("display") or (body.get("code") or {}).get("text"),
        "criticality": body.get("criticality") or "unable-to-assess",
    }
    return _schema(AllergyInput, values, "AllergyIntolerance")  # type: ignore[no-any-return]


# == Condition (problems and diagnoses, ICD-10) =================================================
def condition_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
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


def condition_input(body: dict[str, Any]) -> ConditionInput:
    """A problem or diagnosis: subject, a code.coding in ICD-10, clinicalStatus (default
    active), verificationStatus (default confirmed), optionally onsetDateTime."""
    patient = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    codings = (body.get("code") or {}).get("coding") or []
    code = next((c for c in codings if c.get("system") == ICD10), None)
    if patient is None or code is None:
        raise InvalidInput(f"a Condition needs subject (Patient/<id>) and a code.coding in {ICD10}")
    onset = body.get("onsetDateTime")
    if onset is None and any(k.startswith("onset") for k in body):
        raise InvalidInput("a Condition's onset is given as onsetDateTime")
    values = {
        "patient_id": patient,
        "code": code.get("code"),
        "display": code.get("display") or (body.get("code") or {}).get("text") or code.get("code"),
        "clinical_status": _coded(body, "clinicalStatus", CONDITION_CLINICAL) or "active",
        "verification_status": _coded(body, "verificationStatus", CONDITION_VERIFICATION) or "confirmed",
        "onset_at": parse_instant(onset, "onsetDateTime") if onset else None,
    }
    return _schema(ConditionInput, values, "Condition")  # type: ignore[no-any-return]


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


# == read-only sections ========================================================================


def observation_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
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
            "subject": ref("Patient", d.get("patient_id")),
            "effectiveDateTime": when(d.get("effective_at")),
            **value,
        }
    )
    return checked(Observation, resource)


def coverage_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
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


def invoice_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    currency = d.get("currency") or "EUR"
    lines = [
        {
            "sequence": i,
            "chargeItemCodeableConcept": {"coding": [{"code": line["code"], "display": line["description"]}]},
            "priceComponent": [
                {"type": "base", "amount": {"value": line["amount_cents"] / 100, "currency": currency}}
            ],
        }
        for i, line in enumerate(d.get("lines") or [], start=1)
    ]
    encounter = ref("Encounter", d.get("encounter_id"))
    resource = clean(
        {
            "resourceType": "Invoice",
            "id": d["id"],
            "meta": meta(d),
            "extension": [{"url": INVOICE_ENCOUNTER, "valueReference": encounter}] if encounter else None,
            "identifier": [{"value": d["number"]}] if d.get("number") else None,
            "status": d.get("status") or "draft",
            "cancelledReason": d.get("cancel_reason"),
            "subject": ref("Patient", d.get("patient_id")),
            "date": when(d.get("issued_at")),
            "lineItem": lines,
            "totalGross": {"value": d["total_cents"] / 100, "currency": currency}
            if d.get("total_cents") is not None
            else None,
        }
    )
    return checked(Invoice, resource)


def encounter_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    klass = {"inpatient": "IMP", "outpatient": "AMB", "emergency": "EMER"}.get(d.get("kind") or "", "AMB")
    resource = clean(
        {
            "resourceType": "Encounter",
            "id": d["id"],
            "meta": meta(d),
            "status": d.get("status") or "unknown",
            "class": {"system": ENCOUNTER_CLASS, "code": klass},
            "subject": ref("Patient", d.get("patient_id")),
            "period": clean({"start": when(d.get("start_at")), "end": when(d.get("end_at"))}),
            "location": [{"location": ref("Location", d["location_id"])}] if d.get("location_id") else None,
            "participant": [{"individual": ref("Practitioner", d["attending_id"])}]
            if d.get("attending_id")
            else None,
            "serviceProvider": ref("Organization", d.get("facility_id")),
        }
    )
    return checked(Encounter, resource)


# == Encounter (stays: admit, transfer, discharge) =============================================
ENCOUNTER_KINDS = {"IMP": "inpatient", "AMB": "outpatient", "EMER": "emergency"}


def _encounter_location(body: dict[str, Any]) -> str | None:
    """The location a stay is at: the entry marked active, or else the last one listed."""
    entries = [e for e in body.get("location") or [] if isinstance(e, dict)]
    if not entries:
        return None
    current = next((e for e in entries if e.get("status") == "active"), entries[-1])
    return reference_id((current.get("location") or {}).get("reference"), "Location")


def _encounter_attending(body: dict[str, Any]) -> str | None:
    for participant in body.get("participant") or []:
        individual = (participant or {}).get("individual") or {}
        if individual.get("reference"):
            return reference_id(individual["reference"], "Practitioner")
    return None


def encounter_input(body: dict[str, Any]) -> EncounterInput:
    """An admission: status in-progress, class IMP/AMB/EMER, subject, and optionally
    period.start, the location and the attending physician (participant.individual)."""
    if body.get("status") != "in-progress":
        raise InvalidInput("a new Encounter is an admission: status in-progress")
    patient = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    if patient is None:
        raise InvalidInput("an Encounter needs subject (a reference Patient/<id>)")
    klass = (body.get("class") or {}).get("code")
    if klass not in ENCOUNTER_KINDS:
        raise InvalidInput("Encounter.class must be IMP, AMB or EMER (" + ENCOUNTER_CLASS + ")")
    start = (body.get("period") or {}).get("start")
    values = {
        "patient_id": patient,
        "kind": ENCOUNTER_KINDS[klass],
        "start_at": parse_instant(start, "period.start") if start else None,
        "location_id": _encounter_location(body),
        "attending_id": _encounter_attending(body),
    }
    return _schema(EncounterInput, values, "Encounter")  # type: ignore[no-any-return]


def encounter_change(body: dict[str, Any], encounter_id: str, version: int) -> tuple[str, dict[str, Any]]:
    """A PUT of an Encounter as the gate operation it is: status finished = discharge (at
    period.end, or now); status in-progress = transfer to its (active) location and attending;
    status entered-in-error = a stay opened by mistake (kept, no longer in progress)."""
    status = body.get("status")
    if status == "finished":
        end = (body.get("period") or {}).get("end")
        return "discharge_encounter", {
            "encounter_id": encounter_id,
            "expected_version": version,
            "end_at": parse_instant(end, "period.end") if end else None,
        }
    if status == "in-progress":
        return "transfer_encounter", {
            "encounter_id": encounter_id,
            "expected_version": version,
            "location_id": _encounter_location(body),
            "attending_id": _encounter_attending(body),
        }
    if status == "entered-in-error":
        return "mark_encounter_entered_in_error", {"encounter_id": encounter_id, "expected_version": version}
    raise InvalidInput(
        "an Encounter is changed by a transfer (status in-progress, a new location), a discharge"
        " (status finished) or marked entered-in-error (a stay opened by mistake)"
    )


def encounter_operation(body: dict[str, Any]) -> str:
    return {
        "finished": "discharge_encounter",
        "entered-in-error": "mark_encounter_entered_in_error",
    }.get(str(body.get("status")), "transfer_encounter")


# == Observation (vital signs, lab results) =====================================================
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


def observation_input(body: dict[str, Any]) -> ObservationInput:
    patient = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    codings = (body.get("code") or {}).get("coding") or []
    code = next((c for c in codings if c.get("system") == LOINC), None)
    category = next(
        (
            c.get("code")
            for concept in body.get("category") or []
            for c in (concept or {}).get("coding") or []
            if c.get("system") == OBSERVATION_CATEGORY
        ),
        None,
    )
    effective = body.get("effectiveDateTime")
    if patient is None or code is None or effective is None:
        raise InvalidInput(f"an Observation needs subject, a code.coding in {LOINC} and effectiveDateTime")
    quantity = body.get("valueQuantity") or {}
    encounter = (
        reference_id((body.get("encounter") or {}).get("reference"), "Encounter")
        if body.get("encounter")
        else None
    )
    values = {
        "patient_id": patient,
        "category": category or "laboratory",
        "code": code.get("code"),
        "display": code.get("display") or (body.get("code") or {}).get("text") or code.get("code"),
        "value_number": quantity.get("value"),
        "unit": quantity.get("unit") or quantity.get("code"),
        "value_text": body.get("valueString"),
        "effective_at": parse_instant(effective, "effectiveDateTime"),
        "status": body.get("status") or "final",
        "encounter_id": encounter,
    }
    return _schema(ObservationInput, values, "Observation")  # type: ignore[no-any-return]
