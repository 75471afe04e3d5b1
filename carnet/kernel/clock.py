"""Time, injectable so tests and simulations move it instead of sleeping.

Only the demo and test environments may install a movable clock (see carnet.settings);
production always reads the system clock.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Protocol


class Clock(Protocol):
    """Source of the current time, always timezone-aware UTC."""

    def now(self) -> dt.datetime: ...


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class MovableClock:
    """A clock that advances with real time from an offset that tests can shift."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._offset = dt.timedelta(0)
        if start is not None:
            self._offset = start - dt.datetime.now(dt.UTC)

    def now(self) -> dt.datetime:
        with self._lock:
            return dt.datetime.now(dt.UTC) + self._offset

    def advance(self, delta: dt.timedelta) -> None:
        with self._lock:
            self._offset += delta

    def set(self, moment: dt.datetime) -> None:
        with self._lock:
            self._offset = moment - dt.datetime.now(dt.UTC)


_clock: Clock = SystemClock()


def now() -> dt.datetime:
    return _clock.now()


def current() -> Clock:
    return _clock


def install(clock: Clock) -> None:
    """Replace the process clock. Guarded by carnet.settings.install_movable_clock."""
    global _clock
    _clock = clock
