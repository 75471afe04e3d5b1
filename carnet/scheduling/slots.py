"""Free slots of a practitioner's day (pure): the opening hours cut into slots, minus what is
booked. The calendar grid offers them; booking one still goes through the double-booking rule
(carnet.scheduling.rules.check_slot), so a slot taken meanwhile is refused, never doubled."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from carnet.kernel import localtime

OPENING = dt.time(8, 0)  # Paris wall clock
CLOSING = dt.time(18, 0)
SLOT = dt.timedelta(minutes=20)


@dataclass(frozen=True)
class Slot:
    start: dt.datetime  # UTC
    end: dt.datetime
    free: bool
    past: bool


def day_slots(
    day: dt.date,
    busy: Iterable[tuple[dt.datetime, dt.datetime]],
    *,
    now: dt.datetime,
    opening: dt.time = OPENING,
    closing: dt.time = CLOSING,
    length: dt.timedelta = SLOT,
) -> list[Slot]:
    """The slots of `day` from `opening` to `closing` (Paris time, so 08:00 stays 08:00 across
    summer time), each free unless it overlaps a busy interval; `past` when it has begun."""
    if length <= dt.timedelta(0):
        raise ValueError("a slot lasts some time")
    intervals = sorted(busy)
    start = localtime.at(day, opening)
    close = localtime.at(day, closing)
    slots: list[Slot] = []
    while start + length <= close:
        end = start + length
        taken = any(b_start < end and b_end > start for b_start, b_end in intervals)
        slots.append(Slot(start=start, end=end, free=not taken, past=start < now))
        start = end
    return slots
