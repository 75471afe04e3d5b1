"""Worker processes for the cross-process containment test (module-level for `spawn`)."""

from __future__ import annotations

import uuid
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

from carnet.access.actor import Actor
from carnet.detection.interfaces import Channel
from carnet.kernel.errors import AccountContained
from carnet.runtime import build_runtime
from carnet.settings import Environment, Settings


def _runtime(database_url: str, var_dir: str, redis_url: str | None):  # type: ignore[no-untyped-def]
    settings = Settings(
        env=Environment.TEST, var_dir=Path(var_dir), database_url=database_url, redis_url=redis_url
    )
    return build_runtime(settings)


def _record(runtime, actor: Actor, patients: list[uuid.UUID]) -> str:  # type: ignore[no-untyped-def]
    try:
        with runtime.session_factory.begin() as session:
            runtime.ledger.record(
                session, actor=actor, patient_ids=patients, channel=Channel.CHART, resource_type="Patient"
            )
    except AccountContained:
        return "contained"
    return "served"


def bystander(
    database_url: str,
    var_dir: str,
    redis_url: str | None,
    actor: Actor,
    ready: Event,
    go: Event,
    out: Queue,  # type: ignore[type-arg]
) -> None:
    """Serves the actor once, then — after the other worker contained it — is asked again."""
    runtime = _runtime(database_url, var_dir, redis_url)
    try:
        out.put(("bystander-before", _record(runtime, actor, [uuid.uuid4()])))
        ready.set()
        go.wait(60)
        out.put(("bystander-after", _record(runtime, actor, [uuid.uuid4()])))
    finally:
        runtime.close()


def attacker(
    database_url: str,
    var_dir: str,
    redis_url: str | None,
    actor: Actor,
    canary: uuid.UUID,
    ready: Event,
    go: Event,
    out: Queue,  # type: ignore[type-arg]
) -> None:
    """Touches a canary: contained here, on the first request."""
    runtime = _runtime(database_url, var_dir, redis_url)
    try:
        ready.wait(60)
        out.put(("attacker", _record(runtime, actor, [uuid.uuid4(), canary])))
        go.set()
    finally:
        runtime.close()
