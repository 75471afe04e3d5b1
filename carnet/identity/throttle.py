"""Login throttling per account and per source address, with the `limits` package.

Redis storage when CARNET_REDIS_URL is set (shared by every worker), memory otherwise. Keys are
digests, so the store never holds usernames or addresses in clear.
"""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

from limits import RateLimitItem, parse_many, storage, strategies

# One username from one address: a person mistyping gets several tries, a guesser a few dozen a
# day. Keyed by the pair, so one attacker's failures do not lock the owner out from their desk.
ACCOUNT_FROM_ADDRESS_LIMITS = "5/minute;20/hour;50/day"
# One username from anywhere: a botnet guessing one account is held to 100 an hour (NIST 800-63B
# 5.2.2 caps consecutive failures at 100).
ACCOUNT_LIMITS = "100/hour;300/day"
# One address may serve a ward behind NAT: wider, but still far from a brute force.
ADDRESS_LIMITS = "30/minute;200/hour;1000/day"


class LoginThrottle(Protocol):
    """Counts failed logins and says when a username or an address must wait."""

    def blocked(self, *, username: str, address: str | None) -> int | None:
        """Seconds to wait before trying again, or None when an attempt may proceed."""
        ...

    def failed(self, *, username: str, address: str | None) -> None:
        """Count one failure against the username and the address."""
        ...

    def allow(self, *, bucket: str, key: str, limits: str) -> bool:
        """Count one request of `key` in `bucket`; False when it is over `limits` ("30/minute")."""
        ...

    def reset(self) -> None:
        """Forget every counter (tests and `carnet` administration)."""
        ...


def _key(kind: str, value: str) -> str:
    return f"carnet-login/{kind}/" + hashlib.sha256(value.encode()).hexdigest()[:32]


class LimitsLoginThrottle:
    """LoginThrottle on a `limits` storage: Redis for several workers, memory for one."""

    def __init__(self, storage_uri: str | None, *, key_prefix: str = "carnet-identity") -> None:
        uri = storage_uri or "memory://"
        # A prefix of our own: reset() then clears only identity's counters in a shared Redis.
        options = {"key_prefix": key_prefix} if uri.startswith(("redis", "rediss")) else {}
        self._storage = storage.storage_from_string(uri, **options)
        self._limiter = strategies.MovingWindowRateLimiter(self._storage)
        self._account: list[RateLimitItem] = parse_many(ACCOUNT_LIMITS)
        self._pair: list[RateLimitItem] = parse_many(ACCOUNT_FROM_ADDRESS_LIMITS)
        self._address: list[RateLimitItem] = parse_many(ADDRESS_LIMITS)

    def _targets(self, username: str, address: str | None) -> list[tuple[RateLimitItem, str]]:
        user = username.strip().lower()
        targets = [(item, _key("user", user)) for item in self._account]
        targets += [(item, _key("pair", f"{user}\n{address or '-'}")) for item in self._pair]
        if address:
            targets += [(item, _key("addr", address)) for item in self._address]
        return targets

    def blocked(self, *, username: str, address: str | None) -> int | None:
        wait = 0.0
        for item, key in self._targets(username, address):
            if not self._limiter.test(item, key):
                stats = self._limiter.get_window_stats(item, key)
                wait = max(wait, stats.reset_time - time.time(), 1.0)
        return int(wait) + 1 if wait else None

    def failed(self, *, username: str, address: str | None) -> None:
        for item, key in self._targets(username, address):
            self._limiter.hit(item, key)

    def allow(self, *, bucket: str, key: str, limits: str) -> bool:
        # Every item is hit, so a burst counts against the longer windows too.
        results = [self._limiter.hit(item, _key(bucket, key)) for item in parse_many(limits)]
        return all(results)

    def reset(self) -> None:
        self._storage.reset()
