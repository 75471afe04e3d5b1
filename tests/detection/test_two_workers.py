"""A containment in one worker process refuses the actor in another at once."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from carnet.access.roles import Role
from carnet.runtime import Runtime
from tests.detection import workers
from tests.detection.helpers import make_actor, make_facility, make_patients

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.mark.slow
@pytest.mark.parametrize("redis_url", [None, REDIS_URL], ids=["database", "redis"])
def test_containment_applies_in_every_worker(runtime: Runtime, redis_url: str | None) -> None:
    facility = make_facility(runtime)
    (canary,) = make_patients(
        runtime, facility, [{"family": "Decoy", "given": "Eve", "birth_date": "1970-01-01"}], canary=True
    )
    doctor = make_actor(runtime, "dr.two-workers", Role.PHYSICIAN)
    url = runtime.settings.resolved_database_url
    var = str(runtime.settings.var_dir)
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    processes = [
        ctx.Process(target=workers.bystander, args=(url, var, redis_url, doctor, ready, go, out)),
        ctx.Process(target=workers.attacker, args=(url, var, redis_url, doctor, canary, ready, go, out)),
    ]
    for process in processes:
        process.start()
    results = dict(out.get(timeout=90) for _ in range(3))
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert results == {"bystander-before": "served", "attacker": "contained", "bystander-after": "contained"}
