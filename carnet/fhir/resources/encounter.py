"""FHIR Encounter: stays, through the gate. Searched by patient (status), read, admitted
(create), transferred or discharged (update, If-Match), or entered in error (delete: kept, no
longer in progress); each a kept version, by vread and `_history`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.encounter import Encounter

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
from carnet.kernel.errors import InvalidInput
from carnet.phi.gate import Gate
from carnet.phi.schemas import EncounterInput, ReceivedEncounterInput

router = APIRouter(prefix="/fhir", tags=["fhir"])
ENCOUNTER = "Encounter"


ENCOUNTER_CLASS = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


# == mapping ===================================================================================
def encounter_to_fhir(d: dict[str, Any]) -> dict[str, Any]:
    received = as_received(d)
    if received is not None:
        return checked(Encounter, received)
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
            "location": _locations(d) or None,
            "participant": [{"individual": ref("Practitioner", d["attending_id"])}]
            if d.get("attending_id")
            else None,
            "serviceProvider": ref("Organization", d.get("facility_id")),
        }
    )
    return checked(Encounter, resource)


PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"


def _physical(code: str) -> dict[str, Any]:
    return {"coding": [{"system": PHYSICAL_TYPE, "code": code}]}


def _locations(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Encounter.location[]: the ward, then every bed the stay has been in with its period
    (the beds before completed, the bed held active while the stay is in progress)."""
    entries: list[dict[str, Any]] = []
    going = d.get("status") == "in-progress"
    if d.get("location_id"):
        entries.append(
            {
                "location": ref("Location", d["location_id"]),
                "status": "active" if going else "completed",
                "physicalType": _physical("wa"),
            }
        )
    for period in d.get("beds") or []:
        current = going and period.get("end") is None
        entries.append(
            {
                "location": ref("Location", period["bed_id"]),
                "status": "active" if current else "completed",
                "physicalType": _physical("bd"),
                "period": clean({"start": when(period.get("start")), "end": when(period.get("end"))}),
            }
        )
    if d.get("bed_id") and not d.get("beds"):
        entries.append(
            {
                "location": ref("Location", d["bed_id"]),
                "status": "active" if going else "completed",
                "physicalType": _physical("bd"),
            }
        )
    return entries


ENCOUNTER_KINDS = {"IMP": "inpatient", "AMB": "outpatient", "EMER": "emergency"}


def _current_locations(body: dict[str, Any]) -> list[str]:
    """Where a stay is: the entries marked active (a ward and a bed), or else the last one."""
    entries = [e for e in body.get("location") or [] if isinstance(e, dict)]
    if not entries:
        return []
    current = [e for e in entries if e.get("status") == "active"] or [entries[-1]]
    found = [reference_id((e.get("location") or {}).get("reference"), "Location") for e in current]
    return [f for f in found if f is not None]


def _encounter_location(body: dict[str, Any]) -> str | None:
    """The location a stay is at (a ward, or a bed: then its ward is the stay's)."""
    found = _current_locations(body)
    return found[0] if found else None


def _encounter_bed(body: dict[str, Any]) -> str | None:
    """A second current location: the bed beside the ward (carnet tells which is which)."""
    found = _current_locations(body)
    if len(found) > 2:
        raise InvalidInput("Encounter.location: name at most a ward and a bed as active")
    return found[1] if len(found) == 2 else None


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
        "bed_id": _encounter_bed(body),
    }
    return schema_input(EncounterInput, values, "Encounter")  # type: ignore[no-any-return]


# Another system's class codes (v3 ActCode) as the kind of stay the columns list.
RECEIVED_KINDS = {"IMP": "inpatient", "ACUTE": "inpatient", "NONAC": "inpatient", "EMER": "emergency"}


def received_encounter_input(body: dict[str, Any]) -> ReceivedEncounterInput:
    """Another system's visit or stay that is not an admission (any status but in-progress):
    kept whole; its class gives the kind, its period when."""
    patient = reference_id((body.get("subject") or {}).get("reference"), "Patient")
    if patient is None:
        raise InvalidInput("Encounter.subject: a reference Patient/<id> is required")
    period = body.get("period") or {}
    values = {
        "patient_id": patient,
        "kind": RECEIVED_KINDS.get(str((body.get("class") or {}).get("code") or ""), "outpatient"),
        "status": body.get("status"),
        "start_at": received_instant(period.get("start"), "Encounter.period.start"),
        "end_at": received_instant(period["end"], "Encounter.period.end") if period.get("end") else None,
        "received": body,
    }
    return schema_input(ReceivedEncounterInput, values, "Encounter")  # type: ignore[no-any-return]


def encounter_create(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A new Encounter as the gate operation it is: in progress, an admission here (carnet's
    stay: attending, ward, care relationships); any other status, another system's visit or
    stay, kept whole as received."""
    if body.get("status") == "in-progress":
        return "admit_patient", {"data": encounter_input(body)}
    return "record_encounter", {"data": received_encounter_input(body)}


def encounter_creates(body: dict[str, Any]) -> str:
    return "admit_patient" if body.get("status") == "in-progress" else "record_encounter"


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
            "bed_id": _encounter_bed(body),
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


# == routes ====================================================================================
def worklist(gate: Gate, query: Query) -> Found | None:
    """`participant=<me>` (status in-progress): my current inpatients, as my day list shows
    them, counted as a list; another practitioner's is refused by the gate (audited)."""
    named = query.named("participant", "practitioner")
    if not named:
        return None
    values = [v for c in named for v in c.values]
    practitioner = reference_id(values[0], "Practitioner") if len(values) == 1 else None
    if practitioner is None:
        raise InvalidInput("a worklist is one practitioner's: participant=Practitioner/<id>")
    views = gate.stays_worklist(practitioner_id=practitioner)
    return Found([encounter_to_fhir(v.model_dump()) for v in views])


SEARCH = Search(
    ENCOUNTER,
    {
        "patient": reference("subject", target="Patient"),
        "subject": reference("subject"),
        "status": token("status"),
        "class": token("class"),
        "date": date("period"),
        "participant": reference("participant.individual", target="Practitioner"),
        "practitioner": reference("participant.individual", target="Practitioner"),
        "location": reference("location.location", target="Location"),
    },
    fetch=chart_section("list_encounters", encounter_to_fhir),
    read=one_record("read_encounter", "encounter_id", encounter_to_fhir),
    source=worklist,
    includes=("subject", "patient"),
)


@router.get("/Encounter")
def search_encounters(request: Request) -> Response:
    return respond(request, SEARCH)


@router.post("/Encounter")
def admit(request: Request, body: dict[str, Any] = FhirBody) -> Response:
    """Admit a patient: a stay in progress (class IMP, AMB or EMER), at a location, with an
    attending physician (the admitting practitioner when none is named). Any other status is
    another system's visit or stay, kept whole as received."""
    gate = gate_for(request, ENCOUNTER, "create")
    resource = validated(Encounter, body, ENCOUNTER)
    name, arguments = encounter_create(resource)
    view = getattr(gate, name)(**arguments)
    return resource_response(request, encounter_to_fhir(view.model_dump()), status=201)


@router.get("/Encounter/{encounter_id}")
def read_encounter(request: Request, encounter_id: str) -> Response:
    gate = gate_for(request, ENCOUNTER, "read")
    view = gate.read_encounter(encounter_id=encounter_id)
    return resource_response(request, encounter_to_fhir(view.model_dump()))


@router.put("/Encounter/{encounter_id}")
def update_encounter(request: Request, encounter_id: str, body: dict[str, Any] = FhirBody) -> Response:
    """A transfer (status in-progress, a new location or attending) or a discharge (status
    finished, period.end or now), with If-Match; every earlier version stays in _history."""
    gate = gate_for(request, ENCOUNTER, "update")
    resource = validated(Encounter, body, ENCOUNTER)
    if resource.get("id") != encounter_id:
        raise InvalidInput("the resource id must match the URL")
    version = expected_version(request, resource)
    name, arguments = encounter_change(resource, encounter_id, version)
    view = getattr(gate, name)(**arguments)
    return resource_response(request, encounter_to_fhir(view.model_dump()))


@router.delete("/Encounter/{encounter_id}")
def delete_encounter(request: Request, encounter_id: str) -> Response:
    """A stay opened by mistake: marked entered-in-error, kept and readable; no longer in
    progress (the patient can be admitted again), so the care relationships it made end."""
    gate = gate_for(request, ENCOUNTER, "delete")
    version = version_or_current(request, lambda: gate.read_encounter(encounter_id=encounter_id))
    view = gate.mark_encounter_entered_in_error(encounter_id=encounter_id, expected_version=version)
    return resource_response(request, encounter_to_fhir(view.model_dump()))


@router.get("/Encounter/{encounter_id}/_history")
def encounter_history(request: Request, encounter_id: str) -> Response:
    return history_response(request, ENCOUNTER, encounter_id, encounter_to_fhir)


@router.get("/Encounter/{encounter_id}/_history/{version_id}")
def vread_encounter(request: Request, encounter_id: str, version_id: str) -> Response:
    return vread_response(request, ENCOUNTER, encounter_id, version_id, encounter_to_fhir)


# == declaration ===============================================================================
MODULE = FhirModule(
    router=router,
    types=(
        ResourceType(
            ENCOUNTER,
            ("read", "vread", "history-instance", "search-type", "create", "update", "delete"),
            searcher=SEARCH,
            writes=Writes(
                Encounter,
                encounter_to_fhir,
                creates=encounter_creates,
                create=lambda r, g, m: encounter_create(r),
                updates=encounter_operation,
                update=encounter_change,
                # A stay opened by mistake: marked entered-in-error, kept and readable.
                delete=lambda rid, v: (
                    "mark_encounter_entered_in_error",
                    {"encounter_id": rid, "expected_version": v},
                ),
                current=lambda g, rid: g.read_encounter(encounter_id=rid),
            ),
        ),
    ),
)
