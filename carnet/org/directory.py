"""The directory: practitioners, facilities and locations of the actor's own facilities.

No patient data, but not public either: a staff member (or an API client of a facility) sees
the directory of the facilities it works in; a patient account and the system identity see
none. Every read is audited (`org:directory:read`), refusals included.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from carnet.access.actor import Actor, ActorKind
from carnet.access.audited import run_audited
from carnet.access.context import AccessContext
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.kernel import clock
from carnet.kernel.errors import Forbidden, InvalidInput, NotFound
from carnet.kernel.ids import new_id, parse_id
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
    part_of_id: str | None = None  # the room of a bed, the ward of a room


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
    part_of = str(row.part_of_id) if row.part_of_id else None
    return LocationEntry(str(row.id), str(row.facility_id), row.name, row.kind, row.active, part_of)


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


RPPS = "urn:oid:1.2.250.1.71.4.2.1"
FINESS = "urn:oid:1.2.250.1.71.4.2.2"
RECEIVED_KINDS = ("Practitioner", "PractitionerRole", "Organization", "Location")


def _identifier(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") and identifier.get("value"):
            return str(identifier["system"])[:200], str(identifier["value"])[:100]
    return None, None


def keep_entries(
    session: Session,
    ctx: AccessContext,
    *,
    resources: list[dict[str, Any]],
    rewrite: Callable[[dict[str, Any], dict[str, str]], dict[str, Any]],
    names: Callable[[int], list[str]],
) -> list[tuple[str, bool]]:
    """Another system's Practitioner, PractitionerRole, Organization and Location entries of a
    transaction Bundle: each matched by identifier to carnet's directory (a practitioner by RPPS,
    the facility by FINESS, an entry kept before) or kept as received, in the actor's one
    facility. Run inside the Bundle's own transaction (the gate's), so a Bundle refused keeps
    none of them. `names(i)`: how the Bundle names entry i (fullUrl, `Type/<id>`);
    `rewrite(resource, known)`: its references rewritten (refused, naming the element, when one
    resolves to nothing). Returns ("Type/<carnet id>", created) per entry, in order."""
    facilities = sorted(_scope(ctx))
    if len(facilities) != 1:
        raise InvalidInput("directory entries of a Bundle go to one facility: this account works in several")
    facility = facilities[0]
    out: list[tuple[str, bool]] = []
    known: dict[str, str] = {}
    fresh: list[tuple[int, DirectoryEntry]] = []
    for number, resource in enumerate(resources):
        kind = str(resource.get("resourceType"))
        if kind not in RECEIVED_KINDS:
            raise InvalidInput(f"{kind} is not a directory entry")
        system, value = _identifier(resource)
        found: Any = None
        if system is not None and value is not None:
            if kind == "Practitioner" and system == RPPS:
                found = session.scalar(
                    select(Practitioner.id).where(
                        Practitioner.rpps == value, Practitioner.facility_id == facility
                    )
                )
            elif kind == "Organization" and system == FINESS:
                found = session.scalar(
                    select(Facility.id).where(Facility.finess == value, Facility.id == facility)
                )
            if found is None:
                found = session.scalar(
                    select(DirectoryEntry.id).where(
                        DirectoryEntry.facility_id == facility,
                        DirectoryEntry.resource_type == kind,
                        DirectoryEntry.identifier_system == system,
                        DirectoryEntry.identifier_value == value,
                    )
                )
        if found is None:
            entry = DirectoryEntry(
                id=new_id(),
                facility_id=facility,
                resource_type=kind,
                identifier_system=system,
                identifier_value=value,
                resource="{}",
                created_at=clock.now(),
            )
            fresh.append((number, entry))
            found = entry.id
        out.append((f"{kind}/{found}", any(e.id == found for _n, e in fresh)))
        for name in names(number):
            known[name] = f"{kind}/{found}"
    for number, entry in fresh:
        kept = {k: v for k, v in rewrite(resources[number], known).items() if k not in ("id", "meta")}
        meta = {
            k: v
            for k, v in (resources[number].get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated")
        }
        if meta:
            kept["meta"] = meta  # the sender's profiles, tags and security labels stay
        entry.resource = json.dumps(kept, ensure_ascii=False, sort_keys=True)
        session.add(entry)
    session.flush()
    return out


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


def place_labels(runtime: Runtime, *, actor: Actor, location_ids: list[str]) -> dict[str, str]:
    """What to call these locations on a page, in one audited read: a bed "room · bed", a
    room or ward its name (the ward of a stay is shown beside it). Unknown ids are left out."""
    wanted = [lid for lid in (parse_id(v) for v in dict.fromkeys(location_ids)) if lid is not None][:LIMIT]
    if not wanted:
        return {}

    def action(session: Session, ctx: AccessContext) -> tuple[dict[str, str], AuditRecord]:
        facilities = _scope(ctx)
        rows = list(
            session.scalars(
                select(Location).where(Location.id.in_(wanted), Location.facility_id.in_(facilities))
            )
        )
        parents = {r.part_of_id for r in rows if r.kind == "bed" and r.part_of_id}
        rooms = (
            {
                r.id: r
                for r in session.scalars(
                    select(Location).where(Location.id.in_(parents), Location.kind == "room")
                )
            }
            if parents
            else {}
        )
        labels: dict[str, str] = {}
        for row in rows:
            room = rooms.get(row.part_of_id) if row.kind == "bed" and row.part_of_id else None
            labels[str(row.id)] = f"{room.name} · {row.name}" if room is not None else row.name
        return labels, _record(actor, "Location", list(labels), "labels")

    return run_audited(runtime, actor, AuditKind.DIRECTORY_READ, action, resource_type="Location")
