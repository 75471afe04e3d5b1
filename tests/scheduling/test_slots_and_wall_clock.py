"""Pure: the Paris wall clock (days, their UTC bounds across summer time) and the free slots of
a practitioner's day; and which day lists detection takes for browsing another day."""

from __future__ import annotations

import datetime as dt

import pytest

from carnet.detection.config import DetectionConfig
from carnet.detection.interfaces import SearchEvent, SearchShape
from carnet.detection.ledger import _other_day_list
from carnet.kernel import localtime
from carnet.scheduling.slots import day_slots

UTC = dt.UTC


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        (dt.datetime(2026, 12, 8, 22, 59, tzinfo=UTC), dt.date(2026, 12, 8)),  # 23:59 in Paris
        (dt.datetime(2026, 12, 8, 23, 0, tzinfo=UTC), dt.date(2026, 12, 9)),  # midnight in Paris
        (dt.datetime(2026, 12, 8, 23, 30, tzinfo=UTC), dt.date(2026, 12, 9)),
        (dt.datetime(2026, 7, 14, 21, 59, tzinfo=UTC), dt.date(2026, 7, 14)),  # summer: UTC+2
        (dt.datetime(2026, 7, 14, 22, 0, tzinfo=UTC), dt.date(2026, 7, 15)),
        (dt.datetime(2026, 7, 14, 22, 0), dt.date(2026, 7, 15)),  # naive: taken as UTC
    ],
)
def test_the_paris_day_of_a_moment(moment: dt.datetime, day: dt.date) -> None:
    assert localtime.local_day(moment) == day


@pytest.mark.parametrize(
    ("day", "start", "hours"),
    [
        (dt.date(2026, 12, 9), dt.datetime(2026, 12, 8, 23, 0, tzinfo=UTC), 24),
        (dt.date(2026, 7, 15), dt.datetime(2026, 7, 14, 22, 0, tzinfo=UTC), 24),
        (dt.date(2026, 3, 29), dt.datetime(2026, 3, 28, 23, 0, tzinfo=UTC), 23),  # clocks go forward
        (dt.date(2026, 10, 25), dt.datetime(2026, 10, 24, 22, 0, tzinfo=UTC), 25),  # and back
    ],
)
def test_day_bounds_in_utc(day: dt.date, start: dt.datetime, hours: int) -> None:
    begin, end = localtime.day_bounds(day)
    assert begin == start and end - begin == dt.timedelta(hours=hours)


@pytest.mark.parametrize(
    ("typed", "utc"),
    [
        ("2026-12-09T09:00", dt.datetime(2026, 12, 9, 8, 0, tzinfo=UTC)),
        ("2026-07-15T09:00", dt.datetime(2026, 7, 15, 7, 0, tzinfo=UTC)),
        ("2026-07-15T09:00+00:00", dt.datetime(2026, 7, 15, 9, 0, tzinfo=UTC)),  # an offset is kept
    ],
)
def test_a_form_time_is_the_wall_clock(typed: str, utc: dt.datetime) -> None:
    assert localtime.wall_clock(typed) == utc


def test_a_form_time_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError):
        localtime.wall_clock("tomorrow at nine")


DAY = dt.date(2026, 12, 9)  # a Wednesday in winter
NIGHT_BEFORE = dt.datetime(2026, 12, 8, 12, 0, tzinfo=UTC)


def _at(hour: int, minute: int = 0) -> dt.datetime:
    return localtime.at(DAY, dt.time(hour, minute))


@pytest.mark.parametrize(
    ("busy", "taken"),
    [
        ([], set()),
        ([(_at(9), _at(9, 20))], {"09:00"}),  # one slot exactly
        ([(_at(9, 10), _at(9, 30))], {"09:00", "09:20"}),  # across two slots
        ([(_at(7, 0), _at(8, 10))], {"08:00"}),  # begun before opening
        ([(_at(17, 50), _at(19, 0))], {"17:40"}),  # runs past closing
        ([(_at(9, 20), _at(9, 20))], set()),  # empty: takes nothing
        ([(_at(12), _at(13)), (_at(10), _at(10, 40))], {"10:00", "10:20", "12:00", "12:20", "12:40"}),
    ],
)
def test_free_slots_of_a_day(busy: list[tuple[dt.datetime, dt.datetime]], taken: set[str]) -> None:
    slots = day_slots(DAY, busy, now=NIGHT_BEFORE)
    assert len(slots) == 30  # 08:00 to 18:00 in 20 minutes
    assert localtime.local(slots[0].start).strftime("%H:%M") == "08:00"
    assert localtime.local(slots[-1].end).strftime("%H:%M") == "18:00"
    assert {localtime.local(s.start).strftime("%H:%M") for s in slots if not s.free} == taken
    assert not any(s.past for s in slots)


def test_slots_already_begun_are_past() -> None:
    slots = day_slots(DAY, [], now=_at(10, 5))
    assert [localtime.local(s.start).strftime("%H:%M") for s in slots if s.past] == [
        "08:00",
        "08:20",
        "08:40",
        "09:00",
        "09:20",
        "09:40",
        "10:00",
    ]


def test_a_slot_has_a_length() -> None:
    with pytest.raises(ValueError):
        day_slots(DAY, [], now=NIGHT_BEFORE, length=dt.timedelta(0))


@pytest.mark.parametrize(
    ("digest", "at", "other"),
    [
        ("arrivals:2026-12-09", dt.datetime(2026, 12, 9, 9, 0, tzinfo=UTC), False),
        ("arrivals:2026-12-10", dt.datetime(2026, 12, 9, 9, 0, tzinfo=UTC), True),  # another day: browsing
        ("arrivals:2026-12-09", dt.datetime(2026, 12, 8, 23, 30, tzinfo=UTC), False),  # 00:30 in Paris
        ("day-list:2026-12-01", dt.datetime(2026, 12, 9, 9, 0, tzinfo=UTC), True),
        ("unpaid-invoices", dt.datetime(2026, 12, 9, 9, 0, tzinfo=UTC), False),
        ("ward-board:2026-12-01", dt.datetime(2026, 12, 9, 9, 0, tzinfo=UTC), False),  # not a day list
    ],
)
def test_which_lists_are_of_another_day(digest: str, at: dt.datetime, other: bool) -> None:
    shape = SearchEvent(shape=SearchShape.LIST, term_digest=digest, page=1)
    assert _other_day_list(shape, at, DetectionConfig()) is other
