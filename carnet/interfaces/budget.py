"""An interface's volume budget: the messages it sent in the last minute, and the messages of
types it is not registered for in the last hour, counted where every listener process sees them.

With Redis (CARNET_REDIS_URL, the store detection's counters already use), the counts are
shared by every listener process and host: one sorted set per interface and window, a member
per message scored by its arrival, updated and counted by one script, so a group of messages
costs one round trip whatever its size. Without Redis, a process counts what it receives
(`LocalBudget`): right for one listener process, which is why `carnet interfaces serve
--processes N` (N > 1) needs Redis.

Fail closed: when Redis does not answer, `BudgetUnavailable` is raised and the message is
refused (AR, "resend later"), never applied uncounted.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import uuid
from collections import deque
from typing import Any, Protocol

WINDOW = dt.timedelta(minutes=1)
STRIKE_WINDOW = dt.timedelta(hours=1)


class BudgetUnavailable(Exception):
    """The shared counter could not be read or written: nothing may be applied uncounted."""


class Budget(Protocol):
    def count(self, interface_id: uuid.UUID, at: dt.datetime, n: int = 1) -> int:
        """Add `n` messages received at `at`; the messages in the window ending then, these
        included (the last one's count: the k-th of them saw the result minus n - k)."""
        ...

    def strike(self, interface_id: uuid.UUID, at: dt.datetime) -> int:
        """Add a message of a type the interface is not registered for; those in the hour."""
        ...


class LocalBudget:
    """The counts of this process alone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[uuid.UUID, deque[dt.datetime]] = {}
        self._strikes: dict[uuid.UUID, deque[dt.datetime]] = {}

    def count(self, interface_id: uuid.UUID, at: dt.datetime, n: int = 1) -> int:
        return self._add(self._seen, interface_id, at, n, WINDOW)

    def strike(self, interface_id: uuid.UUID, at: dt.datetime) -> int:
        return self._add(self._strikes, interface_id, at, 1, STRIKE_WINDOW)

    def _add(
        self,
        kept: dict[uuid.UUID, deque[dt.datetime]],
        interface_id: uuid.UUID,
        at: dt.datetime,
        n: int,
        window: dt.timedelta,
    ) -> int:
        with self._lock:
            seen = kept.setdefault(interface_id, deque())
            seen.extend(itertools.repeat(at, n))
            while seen and seen[0] <= at - window:
                seen.popleft()
            return len(seen)


# KEYS[1] the set; ARGV: the arrival (seconds), the window (seconds), the key's lifetime
# (seconds), then one member per message. Members older than the window go, the new ones come,
# the set's size is the count (members another process added a moment later included).
_ADD_AND_COUNT = """
local at = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', at - tonumber(ARGV[2]))
local args = {}
for i = 4, #ARGV do
  args[#args + 1] = ARGV[1]
  args[#args + 1] = ARGV[i]
end
redis.call('ZADD', KEYS[1], unpack(args))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[1])
"""


class RedisBudget:
    """The counts of every listener process, in Redis."""

    def __init__(self, client: Any, *, prefix: str = "carnet:hl7") -> None:
        self._redis = client
        self._prefix = prefix
        self._script = client.register_script(_ADD_AND_COUNT)
        self._origin = uuid.uuid4().hex[:12]  # this process's members are its own
        self._serial = itertools.count()
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "carnet:hl7") -> RedisBudget:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2), prefix=prefix)

    def count(self, interface_id: uuid.UUID, at: dt.datetime, n: int = 1) -> int:
        return self._add(f"{self._prefix}:{interface_id}:volume", at, n, WINDOW)

    def strike(self, interface_id: uuid.UUID, at: dt.datetime) -> int:
        return self._add(f"{self._prefix}:{interface_id}:types", at, 1, STRIKE_WINDOW)

    def _add(self, key: str, at: dt.datetime, n: int, window: dt.timedelta) -> int:
        import redis

        with self._lock:
            members = [f"{self._origin}:{next(self._serial)}" for _ in range(n)]
        seconds = int(window.total_seconds())
        try:
            return int(self._script(keys=[key], args=[repr(at.timestamp()), seconds, seconds + 60, *members]))
        except redis.RedisError as exc:
            raise BudgetUnavailable(type(exc).__name__) from None


def budget_for(redis_url: str | None) -> Budget:
    """Shared through Redis when carnet has one, else this process's."""
    return RedisBudget.from_url(redis_url) if redis_url else LocalBudget()
