"""What the host did to a benchmark's neighbours while it measured: Redis's longest wait.

On this machine's kernel (Linux 6.18, EEVDF with session autogroups,
`kernel.sched_autogroup_enabled = 1`), Redis, started from a session of its own, was left
runnable without a CPU for up to 8.9 s at a time while a benchmark's many threads ran in
another session's group: its own schedstat said "waiting for a cpu 8,871 ms, on cpu 2 ms" over
that PING, and its slowlog showed a one-member ZADD "taking" 6 s inside detection's script.
Detection's flushes then time out ("detection: held counts not sent (TimeoutError)"), and a
read that must ask Redis in such a window would be refused (fail closed). With autogrouping
off, the same runs had no PING above 340 ms (docs/BENCHMARKS.md, "s13").

`RedisWatch` pings Redis every 50 ms beside the measured rounds and reports the longest answer
and how many took over a second, so a figure taken while Redis was starved says so; and
`scheduler_note` names the kernel setting when it is on."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType

import redis

AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


def scheduler_note() -> str | None:
    """A line for the report when the kernel groups tasks by session (see the module)."""
    try:
        enabled = AUTOGROUP.read_text().strip() == "1"
    except OSError:
        return None
    if not enabled:
        return None
    return (
        "kernel.sched_autogroup_enabled = 1: Redis and PostgreSQL, started from other sessions, "
        "are scheduled as groups of their own, and on this kernel Redis was seen waiting seconds "
        "for a CPU under this load (`sysctl -w kernel.sched_autogroup_enabled=0` before measuring; "
        "docs/BENCHMARKS.md, s13)"
    )


class RedisWatch:
    """PINGs Redis every `every` seconds from a thread of its own while the block runs."""

    def __init__(self, url: str, every: float = 0.05) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=60)
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="redis-watch", daemon=True)
        self.longest_ms = 0.0
        self.over_a_second = 0
        self.pings = 0
        self.failed = 0

    def _watch(self) -> None:
        while not self._stop.wait(self._every):
            started = time.perf_counter()
            try:
                self._client.ping()
            except redis.RedisError:
                self.failed += 1
                continue
            took = (time.perf_counter() - started) * 1000
            self.pings += 1
            self.longest_ms = max(self.longest_ms, took)
            self.over_a_second += took > 1000

    def start(self) -> RedisWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)
        self._client.close()

    def __enter__(self) -> RedisWatch:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def summary(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"Redis's longest answer to a PING every {self._every * 1000:.0f} ms beside the rounds: "
            f"{self.longest_ms:,.0f} ms ({self.over_a_second} of {self.pings} over a second{failed})"
        )
