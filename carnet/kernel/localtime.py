"""The hospital's wall clock: Europe/Paris. Times are stored in UTC; a "day" people speak of
(today's list, a calendar column, a booking at 09:00) is a Paris day, whose UTC bounds move
with summer time."""

from __future__ import annotations

import datetime as dt
import zoneinfo

ZONE_NAME = "Europe/Paris"
ZONE = zoneinfo.ZoneInfo(ZONE_NAME)


def local(moment: dt.datetime) -> dt.datetime:
    """`moment` on the Paris wall clock (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(ZONE)


def local_day(moment: dt.datetime) -> dt.date:
    """The Paris date of `moment`: 23:30 UTC on 6 December is already 7 December in Paris."""
    return local(moment).date()


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the Paris day `day`, in UTC (23 or 25 hours when the clocks change)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=ZONE)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=ZONE)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def at(day: dt.date, time: dt.time) -> dt.datetime:
    """The UTC instant of the Paris wall-clock time `time` on `day`."""
    return dt.datetime.combine(day, time, tzinfo=ZONE).astimezone(dt.UTC)


def wall_clock(value: str) -> dt.datetime:
    """A datetime-local form field (no offset) read as Paris time; one with an offset is kept.
    ValueError when it is not a date and time."""
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZONE)
    return moment.astimezone(dt.UTC)
