"""Beds: the rules of who lies where, pure (no database, no clock), with their table of cases
in tests/records/test_beds.py. The stays operations (carnet/records/stays.py) read the facts
(the bed, its ward, who holds it) and ask these functions; the database repeats the one-stay
rule as a partial unique index (carnet/scheduling/models.py) for two desks racing.

A location is part of another: a bed of a room (or of a ward directly), a room of a ward.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Place:
    """A location as the bed rules see it: its kind and the ward it belongs to (itself for a
    ward; None for a room or bed hung nowhere, or a clinic)."""

    id: uuid.UUID
    kind: str
    ward_id: uuid.UUID | None
    active: bool = True
    name: str = ""
    part_of_id: uuid.UUID | None = None


def placement_refusal(ward: Place | None, bed: Place | None) -> str | None:
    """Why a stay cannot be placed in this location and bed (None: it can). The location may
    be left out when a bed is named (the bed's ward is taken)."""
    if bed is None:
        return None
    if bed.kind != "bed":
        return "this location is not a bed"
    if not bed.active:
        return "this bed is closed"
    if bed.ward_id is None:
        return "this bed belongs to no ward"
    if ward is not None and bed.ward_id != ward.id:
        return "this bed is not in the stay's ward: choose a bed of that ward"
    return None


def occupancy_refusal(occupant: uuid.UUID | None, stay_id: uuid.UUID | None) -> str | None:
    """One bed holds one stay in progress: refused when another stay holds it."""
    if occupant is not None and occupant != stay_id:
        return "this bed is taken by another stay in progress: choose a free bed"
    return None


# == a stay's beds over time ==================================================================
@dataclass(frozen=True)
class BedPeriod:
    bed_id: str
    ward_id: str | None
    start: dt.datetime
    end: dt.datetime | None = None


def history_of(text: str | None) -> list[BedPeriod]:
    """The stored history (JSON) as periods, oldest first."""
    if not text:
        return []
    return [
        BedPeriod(
            bed_id=str(e["bed"]),
            ward_id=e.get("ward"),
            start=dt.datetime.fromisoformat(e["start"]),
            end=dt.datetime.fromisoformat(e["end"]) if e.get("end") else None,
        )
        for e in json.loads(text)
    ]


def history_text(periods: Sequence[BedPeriod]) -> str | None:
    if not periods:
        return None
    return json.dumps(
        [
            {
                "bed": p.bed_id,
                "ward": p.ward_id,
                "start": p.start.isoformat(),
                "end": p.end.isoformat() if p.end else None,
            }
            for p in periods
        ],
        sort_keys=True,
    )


def closed(periods: Sequence[BedPeriod], at: dt.datetime) -> list[BedPeriod]:
    """The bed held now (if any) is left at `at`: its period ends."""
    return [BedPeriod(p.bed_id, p.ward_id, p.start, at) if p.end is None else p for p in periods]


def moved(
    periods: Sequence[BedPeriod], bed_id: uuid.UUID | None, ward_id: uuid.UUID | None, at: dt.datetime
) -> list[BedPeriod]:
    """The stay moves to `bed_id` at `at` (None: it leaves its bed and waits for one): the
    bed before is kept, its period ended; moving to the bed it holds changes nothing."""
    current = next((p for p in periods if p.end is None), None)
    if bed_id is not None and current is not None and current.bed_id == str(bed_id):
        return list(periods)
    kept = closed(periods, at)
    if bed_id is None:
        return kept
    return [*kept, BedPeriod(str(bed_id), str(ward_id) if ward_id else None, at)]


def bed_since(periods: Sequence[BedPeriod]) -> dt.datetime | None:
    return next((p.start for p in periods if p.end is None), None)


# == the board: rooms and beds of a ward in order =============================================
def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """ "Room 2" before "Room 10"."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.findall(r"\d+|\D+", name)
    )


@dataclass(frozen=True)
class BedSlot(Generic[T]):
    bed: Place
    occupant: T | None  # the stay shown in it
    occupied: bool  # held by a stay in progress (shown or not)


@dataclass(frozen=True)
class RoomSlots(Generic[T]):
    room: Place | None  # None: the beds hung on the ward itself
    beds: list[BedSlot[T]]


def ward_layout(
    ward_id: uuid.UUID,
    places: Iterable[Place],
    shown: Mapping[uuid.UUID, T],
    occupied: Iterable[uuid.UUID],
) -> list[RoomSlots[T]]:
    """A ward's rooms in order, each with its beds in order, each bed free or occupied (by a
    stay shown, or by one the viewer does not see: occupied all the same, never "free")."""
    taken = set(occupied) | set(shown)
    places = [p for p in places if p.active]
    rooms = sorted(
        (p for p in places if p.kind == "room" and p.part_of_id == ward_id), key=lambda p: natural_key(p.name)
    )
    beds = [p for p in places if p.kind == "bed"]

    def slots(parent: uuid.UUID) -> list[BedSlot[T]]:
        here = sorted((b for b in beds if b.part_of_id == parent), key=lambda b: natural_key(b.name))
        return [BedSlot(b, shown.get(b.id), b.id in taken) for b in here]

    layout = [RoomSlots(room, slots(room.id)) for room in rooms]
    direct = slots(ward_id)
    if direct:
        layout.append(RoomSlots(None, direct))
    return layout
