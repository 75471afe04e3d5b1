"""Liveness and readiness for a load balancer: no patient data, no detail an attacker can use.

/healthz: the process answers. /readyz: it can serve — the database answers, Redis answers (when
configured), the key file is there and its keys are loaded, and the audit chain head is readable.
A failed check is named with its exception's kind only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import text

if TYPE_CHECKING:
    from carnet.runtime import Runtime


def _database(runtime: Runtime) -> None:
    with runtime.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _redis(runtime: Runtime) -> None:
    if not redis_up(runtime):
        raise ConnectionError("redis")


def redis_up(runtime: Runtime) -> bool:
    url = runtime.settings.redis_url
    if not url:
        return True
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _key_file(runtime: Runtime) -> None:
    path = runtime.settings.resolved_key_file
    if not os.access(path, os.R_OK):
        raise FileNotFoundError("key file")
    if not runtime.keys.active_kek_id:  # the file parses and names its active key
        raise LookupError("no active key")


def _audit_head(runtime: Runtime) -> None:
    from carnet.audit.checkpoints import read_head

    read_head(runtime.engine)


CHECKS: dict[str, Callable[[Runtime], None]] = {
    "database": _database,
    "redis": _redis,
    "key_file": _key_file,
    "audit_head": _audit_head,
}


def readiness(runtime: Runtime) -> tuple[bool, dict[str, str]]:
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        if name == "redis" and not runtime.settings.redis_url:
            results[name] = "not configured"
            continue
        try:
            check(runtime)
            results[name] = "ok"
        except Exception as exc:
            results[name] = f"failed ({type(exc).__name__})"
    return all(v in ("ok", "not configured") for v in results.values()), results
