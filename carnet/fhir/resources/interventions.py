"""FHIR Immunization, Procedure, MedicationAdministration and MedicationStatement, through the
gate: each kept whole as received (any code system, every element), searched by patient (and
code), read, recorded (create, alone or in a transaction Bundle); every version by vread and
`_history`. A reference carnet cannot resolve is refused, naming the element."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.immunization import Immunization
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.specimen import Specimen

from carnet.fhir.core.api import (
    FhirBody,
    checked,
    gate_for,
    reference_id,
    resource_response,
    validated,
)
from carnet.fhir.core.bundles import history_response, vread_response
from carnet.fhir.core.mapping import as_received, clean, meta, received_instant, ref, schema_input, when
from carnet.fhir.core.registry import FhirModule, ResourceType, Writes
from carnet.fhir.core.search import Search, chart_section, date, one_record, reference, respond, token
from carnet.interventions.schemas import InterventionInput
from carnet.kernel.errors import InvalidInput
from carnet.phi.gate import Gate

router = APIRouter(prefix="/fhir", tags=["fhir"])


@dataclass(frozen=True)
class Kind:
    """One of the four types: where its patient, code, time and stay are in the resource."""

    name: str
    model: Any
    operation: str  # the gate's suffix: record_<operation>, read_<operation>, list_<operation>s
    patient: str  # the element naming the patient
    code: str  # the CodeableConcept the columns index
    times: tuple[str, ...]  # the elements giving when, in order of preference
    encounter: str | None  # the element naming the stay (a Specimen names none)
    required_time: bool = False


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "Immunization",
            Immunization,
            "immunization",
            "patient",
            "vaccineCode",
            ("occurrenceDateTime", "recorded"),
            "encounter",
        ),
        Kind(
            "Procedure",
            Procedure,
            "procedure",
            "subject",
            "code",
            ("performedDateTime", "performedPeriod.start"),
            "encounter",
        ),
        Kind(
            "MedicationAdministration",
            MedicationAdministration,
            "medication_administration",
            "subject",
            "medicationCodeableConcept",
            ("effectiveDateTime", "effectivePeriod.start"),
            "context",
        ),
        Kind(
            "MedicationStatement",
            MedicationStatement,
            "medication_statement",
            "subject",
            "medicationCodeableConcept",
            ("effectiveDateTime", "effectivePeriod.start", "dateAsserted"),
            "context",
        ),
        Kind(
            "Specimen",
            Specimen,
            "specimen",
            "subject",
            "type",
            ("collection.collectedDateTime", "collection.collectedPeriod.start", "receivedTime"),
            None,
        ),
    )
}


def _at(body: dict[str, Any], path: str) -> Any:
    value: Any = body
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


# == mapping ===================================================================================
def to_fhir(kind: Kind) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def render(d: dict[str, Any]) -> dict[str, Any]:
        received = as_received(d)
        if received is not None:
            if d.get("patient_id") and isinstance(received.get(kind.patient), dict):
                # The patient the record belongs to now (a merge moves records to the record kept).
                received[kind.patient] = {**received[kind.patient], "reference": f"Patient/{d['patient_id']}"}
            return checked(kind.model, received)
        # Not received whole (or not shown): the columns, as much of the type as they hold.
        concept = {
            "coding": [
                clean({"system": d.get("code_system"), "code": d.get("code"), "display": d.get("display")})
            ]
        }
        resource = clean(
            {
                "resourceType": kind.name,
                "id": d["id"],
                "meta": meta(d),
                "status": d.get("status") or "unknown",
                kind.patient: ref("Patient", d.get("patient_id")),
                kind.code: concept if d.get("code") else {"text": "redacted"},
            }
        )
        moment = when(d.get("occurred_at"))
        first_time = kind.times[0]
        if "." not in first_time:
            resource[first_time] = moment or "unknown" if first_time == "occurrenceDateTime" else moment
        return checked(kind.model, clean(resource))

    return render


def intervention_input(kind: Kind, body: dict[str, Any]) -> InterventionInput:
    """The columns policy and search need; the resource kept whole. A medication named by
    reference (a Medication resource, which carnet does not hold) is refused, naming it."""
    patient = reference_id((body.get(kind.patient) or {}).get("reference"), "Patient")
    if patient is None:
        raise InvalidInput(f"{kind.name}.{kind.patient}: a reference to a Patient is required")
    if body.get("medicationReference") is not None:
        raise InvalidInput(
            f"{kind.name}.medicationReference: carnet holds no Medication resource; send"
            " medicationCodeableConcept (refused, not dropped)"
        )
    codings = [
        c for c in (body.get(kind.code) or {}).get("coding") or [] if isinstance(c, dict) and c.get("code")
    ]
    coding = codings[0] if codings else {}
    text = (body.get(kind.code) or {}).get("text")
    if coding.get("code") is not None and len(str(coding["code"])) > 40:
        raise InvalidInput(f"{kind.name}.{kind.code}.coding[0].code: longer than carnet indexes (40)")
    system = coding.get("system")
    if system is not None and len(str(system)) > 200:
        raise InvalidInput(f"{kind.name}.{kind.code}.coding[0].system: longer than carnet indexes (200)")
    occurred = None
    for path in kind.times:
        value = _at(body, path)
        if value:
            occurred = received_instant(value, f"{kind.name}.{path}")
            break
    encounter_ref = (body.get(kind.encounter) or {}).get("reference") if kind.encounter else None
    encounter = reference_id(encounter_ref, "Encounter") if encounter_ref else None
    display = coding.get("display") or text
    values = {
        "patient_id": patient,
        "code_system": system,
        "code": None if coding.get("code") is None else str(coding["code"]),
        # The column is a listing aid; the resource keeps the text whole.
        "display": None if display is None else str(display)[:200],
        "status": str(body.get("status") or "unknown"),
        "occurred_at": occurred,
        "encounter_id": encounter,
        "received": body,
    }
    return schema_input(InterventionInput, values, kind.name)  # type: ignore[no-any-return]


def record(kind: Kind, gate: Gate, resource: dict[str, Any]) -> Any:
    return getattr(gate, f"record_{kind.operation}")(data=intervention_input(kind, resource))


# == search ====================================================================================
# R4's date parameter of each type (occurrence, performed, effective) and its stay reference.
_DATES = {
    "Immunization": ("date", ("occurrenceDateTime",)),
    "Procedure": ("date", ("performedDateTime", "performedPeriod")),
    "MedicationAdministration": ("effective-time", ("effectiveDateTime", "effectivePeriod")),
    "MedicationStatement": ("effective", ("effectiveDateTime", "effectivePeriod")),
    "Specimen": ("collected", ("collection.collectedDateTime", "collection.collectedPeriod")),
}


def _search(kind: Kind) -> Search:
    date_name, date_paths = _DATES[kind.name]
    params = {
        "patient": reference(kind.patient, target="Patient"),
        kind.patient: reference(kind.patient, target="Patient"),
        "code": token(kind.code),
        "status": token("status"),
        date_name: date(*date_paths),
    }
    if kind.encounter is not None:
        params[kind.encounter] = reference(kind.encounter, target="Encounter")
    if kind.name == "Immunization":
        params["vaccine-code"] = token(kind.code)
    return Search(
        kind.name,
        params,
        fetch=chart_section(f"list_{kind.operation}s", to_fhir(kind)),
        read=one_record(f"read_{kind.operation}", "intervention_id", to_fhir(kind)),
        subjects=tuple(dict.fromkeys(("patient", kind.patient))),
        includes=tuple(dict.fromkeys(n for n in ("patient", kind.patient, kind.encounter) if n)),
    )


SEARCHES = {name: _search(kind) for name, kind in KINDS.items()}


# == routes ====================================================================================
def _routes(kind: Kind) -> None:
    render = to_fhir(kind)
    path = f"/{kind.name}"

    searcher = SEARCHES[kind.name]

    def search(request: Request) -> Response:
        return respond(request, searcher)

    def read(request: Request, resource_id: str) -> Response:
        gate = gate_for(request, kind.name, "read")
        view = getattr(gate, f"read_{kind.operation}")(intervention_id=resource_id)
        return resource_response(request, render(view.model_dump()))

    def create(request: Request, body: dict[str, Any] = FhirBody) -> Response:
        gate = gate_for(request, kind.name, "create")
        resource = validated(kind.model, body, kind.name)
        view = record(kind, gate, resource)
        return resource_response(request, render(view.model_dump()), status=201)

    def history(request: Request, resource_id: str) -> Response:
        return history_response(request, kind.name, resource_id, render)

    def vread(request: Request, resource_id: str, version_id: str) -> Response:
        return vread_response(request, kind.name, resource_id, version_id, render)

    name = kind.operation
    router.add_api_route(path, search, methods=["GET"], name=f"search_{name}")
    router.add_api_route(
        path, create, methods=["POST"], name=f"create_{name}", summary=f"Record a {kind.name}"
    )
    router.add_api_route(f"{path}/{{resource_id}}", read, methods=["GET"], name=f"read_{name}")
    router.add_api_route(f"{path}/{{resource_id}}/_history", history, methods=["GET"], name=f"history_{name}")
    router.add_api_route(
        f"{path}/{{resource_id}}/_history/{{version_id}}", vread, methods=["GET"], name=f"vread_{name}"
    )


for _kind in KINDS.values():
    _routes(_kind)


def _declared(kind: Kind) -> ResourceType:
    return ResourceType(
        kind.name,
        ("read", "vread", "history-instance", "search-type", "create"),
        searcher=SEARCHES[kind.name],
        writes=Writes(
            kind.model,
            to_fhir(kind),
            creates=f"record_{kind.operation}",
            create=lambda r, g, m: (f"record_{kind.operation}", {"data": intervention_input(kind, r)}),
        ),
    )


# == declaration ===============================================================================
MODULE = FhirModule(router=router, types=tuple(_declared(k) for k in KINDS.values()))
