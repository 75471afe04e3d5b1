"""Chart forms for stays and allergies: admit, transfer and discharge a patient (a physician
in the patient's care: carnet/records/stays.py), and record an allergy coded against the ATC
catalogue (carnet/prescriptions/catalogue.py) with its criticality.

Each form answers bad input with the chart again, the section open, saying why; the gate
changes nothing then (one transaction, refused as a whole).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.identity.dependencies import runtime_of
from carnet.kernel import localtime
from carnet.kernel.errors import Conflict, InvalidInput, NotFound
from carnet.phi.gate import Gate
from carnet.phi.schemas import AllergyInput, EncounterInput
from carnet.prescriptions import catalogue
from carnet.web.clinician import chart_again
from carnet.web.rendering import language_of
from carnet.web.routing import WebActor, WebRoute, redirect, refuse

router = APIRouter(route_class=WebRoute, include_in_schema=False)

STAY_KINDS = ("inpatient", "emergency", "outpatient")
CRITICALITIES = ("high", "low", "unable-to-assess")
CLINICAL_ROLES = frozenset({Role.PHYSICIAN, Role.NURSE})


def _coded(entry: str, free_text: str, language: str) -> tuple[str, str]:
    """(ATC code, what to show) for a substance picked from the list, or named in free text."""
    text = entry.strip()
    code = ""
    if text:
        tail = text.rsplit("—", 1)[1].strip().upper() if "—" in text else text.upper()
        if catalogue.is_atc(tail) and catalogue.name_of(tail) is not None:
            code = tail
        else:
            found = catalogue.resolve(text)
            code = found.atc if found is not None else ""
        if not code:
            raise InvalidInput("pick the substance from the list (a class such as penicillins, or a drug)")
    else:
        code = catalogue.recognise(free_text) or ""
        if not code:
            raise InvalidInput(
                "the description names no substance of the catalogue: pick the substance from the list"
            )
    name = catalogue.name_of(code, language) or code
    return code, (free_text.strip() or name)


def _stays_again(request: Request, actor: Actor, patient_id: str, exc: Exception) -> Response:
    status = 409 if isinstance(exc, Conflict) else 404 if isinstance(exc, NotFound) else 400
    return chart_again(request, actor, patient_id, "stays", status=status, stay_problem=str(exc))


def _require_clinician(request: Request, actor: Actor, resource_type: str, kind: AuditKind) -> None:
    if not actor.roles & CLINICAL_ROLES:
        raise refuse(
            request, actor, kind=kind, resource_type=resource_type, reason="this form is for clinicians"
        )


@router.post("/patients/{patient_id}/stays")
def admit(
    request: Request,
    actor: WebActor,
    patient_id: str,
    kind: Annotated[str, Form(max_length=12)],
    location_id: Annotated[str, Form(max_length=40)] = "",
    bed_id: Annotated[str, Form(max_length=40)] = "",
    start_at: Annotated[str, Form(max_length=30)] = "",
) -> Response:
    _require_clinician(request, actor, "Encounter", AuditKind.PHI_CREATE)
    try:
        start = None
        if start_at.strip():
            try:
                start = localtime.wall_clock(start_at.strip())
            except ValueError:
                raise InvalidInput("the admission time must be a date and time") from None
        if kind not in STAY_KINDS:
            raise InvalidInput("choose the kind of stay: inpatient, emergency or outpatient")
        if kind == "inpatient" and not (location_id or bed_id):
            raise InvalidInput("an inpatient stay needs its ward")
        try:
            data = EncounterInput(
                patient_id=patient_id,
                kind=kind,
                start_at=start,
                location_id=location_id or None,
                bed_id=bed_id or None,
            )
        except ValidationError:
            raise InvalidInput("check the kind of stay and its ward") from None
        Gate(runtime_of(request), actor).admit_patient(data=data)
    except (Conflict, InvalidInput) as exc:
        return _stays_again(request, actor, patient_id, exc)
    return redirect(f"/patients/{patient_id}#stays")


@router.post("/patients/{patient_id}/stays/{encounter_id}/transfer")
def transfer(
    request: Request,
    actor: WebActor,
    patient_id: str,
    encounter_id: str,
    expected_version: Annotated[int, Form()],
    location_id: Annotated[str, Form(max_length=40)] = "",
    bed_id: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    _require_clinician(request, actor, "Encounter", AuditKind.PHI_UPDATE)
    try:
        if not (location_id or bed_id):
            raise InvalidInput("choose the ward or the bed the patient moves to")
        Gate(runtime_of(request), actor).transfer_encounter(
            encounter_id=encounter_id,
            expected_version=expected_version,
            location_id=location_id or None,
            bed_id=bed_id or None,
        )
    except (Conflict, InvalidInput) as exc:
        return _stays_again(request, actor, patient_id, exc)
    return redirect(f"/patients/{patient_id}#stays")


@router.post("/patients/{patient_id}/stays/{encounter_id}/discharge")
def discharge(
    request: Request,
    actor: WebActor,
    patient_id: str,
    encounter_id: str,
    expected_version: Annotated[int, Form()],
    end_at: Annotated[str, Form(max_length=30)] = "",
) -> Response:
    _require_clinician(request, actor, "Encounter", AuditKind.PHI_UPDATE)
    try:
        end = None
        if end_at.strip():
            try:
                end = localtime.wall_clock(end_at.strip())
            except ValueError:
                raise InvalidInput("the discharge time must be a date and time") from None
        Gate(runtime_of(request), actor).discharge_encounter(
            encounter_id=encounter_id, expected_version=expected_version, end_at=end
        )
    except (Conflict, InvalidInput) as exc:
        return _stays_again(request, actor, patient_id, exc)
    return redirect(f"/patients/{patient_id}#stays")


@router.post("/patients/{patient_id}/allergies")
def record_allergy(
    request: Request,
    actor: WebActor,
    patient_id: str,
    criticality: Annotated[str, Form(max_length=20)],
    substance: Annotated[str, Form(max_length=200)] = "",
    description: Annotated[str, Form(max_length=200)] = "",
    reaction: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """An allergy coded from the catalogue (a class or a substance) or recognised in the free
    text; the free text, when given, is what the chart shows."""
    _require_clinician(request, actor, "AllergyIntolerance", AuditKind.PHI_CREATE)
    draft = {
        "substance": substance,
        "description": description,
        "criticality": criticality,
        "reaction": reaction,
    }
    try:
        code, display = _coded(substance, description, language_of(request))
        if criticality not in CRITICALITIES:
            raise InvalidInput("choose the criticality: high risk, low risk or not assessed")
        try:
            data = AllergyInput(
                patient_id=patient_id,
                substance_code=code,
                substance_display=display,
                criticality=criticality,
                reaction=reaction.strip() or None,
            )
        except ValidationError:
            raise InvalidInput("check the substance and its criticality") from None
        Gate(runtime_of(request), actor).record_allergy(data=data)
    except (Conflict, InvalidInput) as exc:
        status = 409 if isinstance(exc, Conflict) else 400
        return chart_again(
            request,
            actor,
            patient_id,
            "allergies",
            status=status,
            allergy_problem=str(exc),
            allergy_draft=draft,
        )
    return redirect(f"/patients/{patient_id}#allergies")
