"""FHIR Practitioner, PractitionerRole, Organization and Location: the directory of the actor's
own facilities (carnet.org.directory): no patient data, still authenticated and audited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.practitionerrole import PractitionerRole

from carnet.fhir.core.api import checked, resource_response
from carnet.fhir.core.bundles import paged
from carnet.fhir.core.registry import FhirModule, ResourceType
from carnet.identity.dependencies import current_actor, runtime_of
from carnet.identity.oauth import require_scope
from carnet.kernel.errors import InvalidInput
from carnet.org.directory import (
    FacilityEntry,
    LocationEntry,
    PractitionerEntry,
    ReceivedEntry,
    read_entry,
    search_entries,
)

router = APIRouter(prefix="/fhir", tags=["fhir"])
RPPS = "urn:oid:1.2.250.1.71.4.2.1"  # French national practitioner identifier (RPPS)
FINESS = "urn:oid:1.2.250.1.71.4.2.2"
ROLE_SYSTEM = "https://carnet.example.org/fhir/CodeSystem/profession"
_SEARCH = {
    "Practitioner": {"name": "string", "family": "string", "identifier": "token"},
    "PractitionerRole": {"practitioner": "reference"},
    "Organization": {"name": "string", "identifier": "token"},
    "Location": {"name": "string"},
}


def practitioner_to_fhir(e: PractitionerEntry) -> dict[str, Any]:
    return checked(
        Practitioner,
        {
            "resourceType": "Practitioner",
            "id": e.id,
            "meta": {"versionId": "1"},
            "identifier": [{"system": RPPS, "value": e.rpps}],
            "active": e.active,
            "name": [{"family": e.family, "given": [e.given]}],
        },
    )


def role_to_fhir(e: PractitionerEntry) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "id": e.id,
        "meta": {"versionId": "1"},
        "active": e.active,
        "practitioner": {"reference": f"Practitioner/{e.id}"},
        "organization": {"reference": f"Organization/{e.facility_id}"},
        "code": [{"coding": [{"system": ROLE_SYSTEM, "code": e.profession}]}],
    }
    if e.specialty:
        resource["specialty"] = [{"text": e.specialty}]
    return checked(PractitionerRole, resource)


def organization_to_fhir(e: FacilityEntry) -> dict[str, Any]:
    return checked(
        Organization,
        {
            "resourceType": "Organization",
            "id": e.id,
            "meta": {"versionId": "1"},
            "identifier": [{"system": FINESS, "value": e.finess}],
            "active": e.active,
            "name": e.name,
            "address": [{"city": e.city}],
        },
    )


# carnet's kinds of location as FHIR location-physical-type codes (a clinic has none).
PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
PHYSICAL_TYPES = {"ward": ("wa", "Ward"), "room": ("ro", "Room"), "bed": ("bd", "Bed")}


def physical_type(kind: str) -> dict[str, Any]:
    code = PHYSICAL_TYPES.get(kind)
    if code is None:
        return {"text": kind}
    return {"coding": [{"system": PHYSICAL_TYPE, "code": code[0], "display": code[1]}], "text": kind}


def location_to_fhir(e: LocationEntry) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Location",
        "id": e.id,
        "meta": {"versionId": "1"},
        "status": "active" if e.active else "inactive",
        "name": e.name,
        "physicalType": physical_type(e.kind),
        "managingOrganization": {"reference": f"Organization/{e.facility_id}"},
    }
    if e.part_of_id:
        resource["partOf"] = {"reference": f"Location/{e.part_of_id}"}  # a bed's room, a room's ward
    return checked(Location, resource)


def _to_fhir(resource_type: str, entry: Any) -> dict[str, Any]:
    if isinstance(entry, ReceivedEntry):
        # Another system's entry, as its import received it (references already carnet's).
        model: Any = {
            "Practitioner": Practitioner,
            "PractitionerRole": PractitionerRole,
            "Organization": Organization,
            "Location": Location,
        }[entry.resource_type]
        kept: dict[str, Any] = {"resourceType": entry.resource_type, "id": entry.id}
        kept.update({k: v for k, v in entry.resource.items() if k not in ("resourceType", "id")})
        kept["meta"] = {**(entry.resource.get("meta") or {}), "versionId": "1"}
        return checked(model, kept)
    if resource_type == "PractitionerRole":
        return role_to_fhir(entry)
    mapper: Any = {
        "Practitioner": practitioner_to_fhir,
        "Organization": organization_to_fhir,
        "Location": location_to_fhir,
    }[resource_type]
    result: dict[str, Any] = mapper(entry)
    return result


def _stored_kind(resource_type: str) -> str:
    # A PractitionerRole is a practitioner's role in its facility: same row, same id.
    return "Practitioner" if resource_type == "PractitionerRole" else resource_type


def _read(request: Request, resource_type: str, entry_id: str) -> Response:
    actor = current_actor(request)
    require_scope(actor, resource_type=resource_type, action="read")
    entry = read_entry(
        runtime_of(request),
        actor=actor,
        kind=_stored_kind(resource_type),
        entry_id=entry_id,
        received_type=resource_type,
    )
    return resource_response(request, _to_fhir(resource_type, entry))


def _search(request: Request, resource_type: str) -> Response:
    actor = current_actor(request)
    require_scope(actor, resource_type=resource_type, action="search")
    params = request.query_params
    unknown = sorted(set(params) - set(_SEARCH[resource_type]) - {"_count", "_page", "_format"})
    if unknown:
        raise InvalidInput("unsupported search parameters: " + ", ".join(unknown))
    entries = search_entries(
        runtime_of(request),
        actor=actor,
        kind=_stored_kind(resource_type),
        name=params.get("name") or params.get("family"),
        identifier=params.get("identifier"),
    )
    practitioner = params.get("practitioner")
    if practitioner is not None:
        wanted = practitioner.rpartition("/")[2]
        entries = [e for e in entries if e.id == wanted]
    return paged(request, resource_type, [_to_fhir(resource_type, e) for e in entries])


@router.get("/Practitioner")
def search_practitioners(request: Request) -> Response:
    return _search(request, "Practitioner")


@router.get("/Practitioner/{entry_id}")
def read_practitioner(request: Request, entry_id: str) -> Response:
    return _read(request, "Practitioner", entry_id)


@router.get("/PractitionerRole")
def search_practitioner_roles(request: Request) -> Response:
    return _search(request, "PractitionerRole")


@router.get("/PractitionerRole/{entry_id}")
def read_practitioner_role(request: Request, entry_id: str) -> Response:
    return _read(request, "PractitionerRole", entry_id)


@router.get("/Organization")
def search_organizations(request: Request) -> Response:
    return _search(request, "Organization")


@router.get("/Organization/{entry_id}")
def read_organization(request: Request, entry_id: str) -> Response:
    return _read(request, "Organization", entry_id)


@router.get("/Location")
def search_locations(request: Request) -> Response:
    return _search(request, "Location")


@router.get("/Location/{entry_id}")
def read_location(request: Request, entry_id: str) -> Response:
    return _read(request, "Location", entry_id)


MODULE = FhirModule(
    router=router,
    types=tuple(ResourceType(t, ("read", "search-type"), params) for t, params in _SEARCH.items()),
)
