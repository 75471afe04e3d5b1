"""What chart forms offer to pick from: the facility's wards, the allergy catalogue."""

from __future__ import annotations

from fastapi import Request

from carnet.access.actor import Actor
from carnet.identity.dependencies import runtime_of
from carnet.org import directory as org_directory
from carnet.phi.gate import Gate
from carnet.phi.schemas import FreeBed
from carnet.prescriptions import catalogue


def wards(request: Request, actor: Actor) -> list[org_directory.LocationEntry]:
    """The wards of the actor's facilities (a staff directory read, audited; no patient data)."""
    found = org_directory.search_entries(
        runtime_of(request), actor=actor, kind="Location", location_kind="ward"
    )
    return [e for e in found if isinstance(e, org_directory.LocationEntry) and e.active]


def free_beds(request: Request, actor: Actor) -> list[FreeBed]:
    """The free beds of the actor's facilities, ward by ward (a gate read: which beds no stay
    in progress holds; no patient)."""
    return Gate(runtime_of(request), actor).free_beds()


def place_labels(request: Request, actor: Actor, location_ids: list[str]) -> dict[str, str]:
    """Beds as "room · bed", wards by name (the directory's audited read)."""
    return org_directory.place_labels(runtime_of(request), actor=actor, location_ids=location_ids)


def allergy_choices(language: str) -> list[str]:
    """What the allergy's substance field suggests: the allergy classes, then the substances."""
    classes = [f"{c.name.in_(language)} — {c.atc}" for c in catalogue.classes()]
    return classes + [d.label(language) for d in catalogue.drugs()]
