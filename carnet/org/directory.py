"""The directory: practitioners, facilities and locations of the actor's own facilities.

No patient data, but not public either: a staff member (or an API client of a facility) sees
the directory of the facilities it works in; a patient account and the system identity see
none. Every read is audited (`org:directory:read`), refusals included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.access.actor import Actor, ActorKind
from carnet.access.audited import run_audited
from carnet.access.context import AccessContext
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.kernel.errors import Forbidden, InvalidInput, NotFound
from carnet.kernel.ids import parse_id
from carnet.org.models import DirectoryEntry, Facility, Location, Practitioner
from carnet.runtime import Runtime

LIMIT = 100
KINDS = ("Practitioner", "Organization", "Location")


@dataclass(frozen=True)
class PractitionerEntry:
    id: str
    facility_id: str
    rpps: str
    family: str
    given: str
    profession: str
    specialty: str | None
    active: bool


@dataclass(frozen=True)
class FacilityEntry:
    id: str
    name: str
    finess: str
    city: str
    active: bool


@dataclass(frozen=True)
class LocationEntry:
    id: str
    facility_id: str
    name: str
    kind: str
    active: bool


@dataclass(frozen=True)
class ReceivedEntry:
    """A directory entry of another system, kept as an import received it (FHIR JSON)."""

    id: str
    resource_type: str
    resource: dict[str, Any]


Entry = PractitionerEntry | FacilityEntry | LocationEntry | ReceivedEntry


def _scope(ctx: AccessContext) -> frozenset[Any]:
    if ctx.actor.kind not in (ActorKind.STAFF, ActorKind.CLIENT) or ctx.patient_id is not None:
        raise Forbidden("the directory is for the staff of a facility")
    if not ctx.facility_ids:
        raise Forbidden("this account works in no facility")
    return ctx.facility_ids


def _entry(row: Any) -> Entry:
    if isinstance(row, Practitioner):
        return PractitionerEntry(
            str(row.id),
            str(row.facility_id),
            row.rpps,
            row.family,
            row.given,
            row.profession,
            row.specialty,
            row.active,
        )
    if isinstance(row, Facility):
        return FacilityEntry(str(row.id), row.name, row.finess, row.city, row.active)
    return LocationEntry(str(row.id), str(row.facility_id), row.name, row.kind, row.active)


def _prefix(value: str) -> str:
    escaped = value.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _record(actor: Actor, kind: str, ids: list[str], query: str) -> AuditRecord:
    return AuditRecord(
        kind=AuditKind.DIRECTORY_READ,
        outcome=Outcome.SUCCESS,
        actor=actor,
        resource_type=kind,
        resource_ids=ids[:200],
        query=query[:500],
    )


def read_entry(
    runtime: Runtime, *, actor: Actor, kind: str, entry_id: str, received_type: str | None = None
) -> Entry:
    """One practitioner, facility (Organization) or location; NotFound outside one's facilities.
    `received_type`: the FHIR type asked for, which may also be an entry another system's
    import brought (kept as received)."""
    if kind not in KINDS:
        raise InvalidInput(f"the directory holds {', '.join(KINDS)}")

    def action(session: Session, ctx: AccessContext) -> tuple[Entry, AuditRecord]:
        facilities = _scope(ctx)
        wanted = parse_id(entry_id)
        model: Any = {"Practitioner": Practitioner, "Organization": Facility, "Location": Location}[kind]
        row: Any = session.get(model, wanted) if wanted else None
        if row is None and wanted is not None:
            kept = session.get(DirectoryEntry, wanted)
            if (
                kept is not None
                and kept.resource_type == (received_type or kind)
                and kept.facility_id in facilities
            ):
                entry = ReceivedEntry(str(kept.id), kept.resource_type, dict(json.loads(kept.resource)))
                return entry, _record(actor, kept.resource_type, [str(kept.id)], "read")
        owner = row.id if isinstance(row, Facility) else getattr(row, "facility_id", None)
        if row is None or owner not in facilities:
            raise NotFound("no such resource")
        return _entry(row), _record(actor, kind, [str(row.id)], "read")

    return run_audited(runtime, actor, AuditKind.DIRECTORY_READ, action, resource_type=kind)


def search_entries(
    runtime: Runtime,
    *,
    actor: Actor,
    kind: str,
    name: str | None = None,
    identifier: str | None = None,
    location_kind: str | None = None,
) -> list[Entry]:
    """Entries of the actor's facilities, optionally by name (prefix) or national identifier;
    locations optionally of one kind (ward, room, clinic)."""
    if kind not in KINDS:
        raise InvalidInput(f"the directory holds {', '.join(KINDS)}")
    if name is not None and not 1 <= len(name.strip()) <= 100:
        raise InvalidInput("name is 1 to 100 characters")

    def action(session: Session, ctx: AccessContext) -> tuple[list[Entry], AuditRecord]:
        facilities = _scope(ctx)
        stmt: Any
        if kind == "Practitioner":
            stmt = select(Practitioner).where(Practitioner.facility_id.in_(facilities))
            if name:
                stmt = stmt.where(Practitioner.family.ilike(_prefix(name), escape="\\"))
            if identifier:
                stmt = stmt.where(Practitioner.rpps == identifier.rpartition("|")[2])
            stmt = stmt.order_by(Practitioner.family, Practitioner.given)
        elif kind == "Organization":
            stmt = select(Facility).where(Facility.id.in_(facilities))
            if name:
                stmt = stmt.where(Facility.name.ilike(_prefix(name), escape="\\"))
            if identifier:
                stmt = stmt.where(Facility.finess == identifier.rpartition("|")[2])
            stmt = stmt.order_by(Facility.name)
        else:
            stmt = select(Location).where(Location.facility_id.in_(facilities))
            if name:
                stmt = stmt.where(Location.name.ilike(_prefix(name), escape="\\"))
            if location_kind:
                stmt = stmt.where(Location.kind == location_kind)
            stmt = stmt.order_by(Location.name)
        rows = [_entry(r) for r in session.scalars(stmt.limit(LIMIT))]
        query = ",".join(n for n, v in (("name", name), ("identifier", identifier)) if v) or "all"
        return rows, _record(actor, kind, [r.id for r in rows], query)

    return run_audited(runtime, actor, AuditKind.DIRECTORY_READ, action, resource_type=kind)
