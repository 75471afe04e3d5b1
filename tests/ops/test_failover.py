"""Failover under load (issue 19): a Patroni pair with a synchronous standby on loopback ports,
carnet following the leader through a libpq multi-host URL (target_session_attrs=read-write).

Guarded reads and writes run steadily through a real `carnet serve`; the leader's Patroni and
postmaster are killed with SIGKILL; Patroni promotes the standby and carnet reconnects by
itself. Counted from the client's side: every write that got a success answer is on the new
primary with its audit event, every answered read is audited there, `carnet audit verify
--strict` passes. The outage seen by clients and the failed requests are printed (BENCHMARKS).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from carnet.db import migrate
from carnet.db.engine import make_engine
from carnet.operations.ha import LocalCluster, missing_tools
from carnet.runtime import build_runtime
from carnet.settings import Settings
from tests.audit.test_crash_tail import audit_verify
from tests.ops.helpers import Reader, ServerProcess, physician_with_patient, server_env

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.ha]


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    missing = missing_tools()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"`make test` installs {missing} (make ha-tools)")
        pytest.skip(f"needs {missing}: run `make ha-tools`")
    ha = LocalCluster.create()
    try:
        ha.start()
        yield ha
    finally:
        ha.stop()  # every process it started, and its directory


@dataclass
class Ledger:
    """What the clients saw: each answered write's id, answered reads, failures with times."""

    writes: list[str] = field(default_factory=list)
    reads: int = 0
    failures: list[float] = field(default_factory=list)
    failure_kinds: dict[str, int] = field(default_factory=dict)
    successes: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _condition(patient_id: str, n: int) -> dict[str, object]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9", "display": f"n{n}"}]
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "onsetDateTime": (dt.datetime.now(dt.UTC) - dt.timedelta(days=400)).isoformat(),
    }


def _load(url: str, reader: Reader, ledger: Ledger, stop: threading.Event, *, writer: bool) -> None:
    n = 0
    with httpx.Client(base_url=url, headers=reader.headers, timeout=15) as client:
        while not stop.is_set():
            n += 1
            try:
                if writer:
                    response = client.post(
                        "/fhir/Condition",
                        content=json.dumps(_condition(reader.patient_id, n)),
                        headers={"Content-Type": "application/fhir+json"},
                    )
                    ok = response.status_code == 201
                else:
                    response = client.get(f"/fhir/Patient/{reader.patient_id}")
                    ok = response.status_code == 200
            except httpx.HTTPError:
                ok, response = False, None
            now = time.monotonic()
            with ledger.lock:
                if ok and response is not None:
                    ledger.successes.append(now)
                    if writer:
                        ledger.writes.append(str(response.json()["id"]))
                    else:
                        ledger.reads += 1
                else:
                    ledger.failures.append(now)
                    kind = str(response.status_code) if response is not None else "no answer"
                    ledger.failure_kinds[kind] = ledger.failure_kinds.get(kind, 0) + 1
            time.sleep(0.02 if ok else 0.2)  # a steady load, not a flood; back off while down


def test_failover_under_load_loses_no_acknowledged_write_or_audited_read(
    cluster: LocalCluster, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = make_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("CREATE DATABASE carnet"))
    admin.dispose()
    url = cluster.url("carnet")
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    runtime = build_runtime(settings.model_copy(update={"database_url": url}))
    reader = physician_with_patient(runtime)
    runtime.close()
    # Checkpoints every 2 s during the test: the signed stream spans the failover.
    env = server_env(runtime, CARNET_AUDIT_CHECKPOINT_SECONDS="2")
    server = ServerProcess(env, tmp_path / "serve.log")
    ledger = Ledger()
    stop = threading.Event()
    first = cluster.leader()
    assert first is not None and cluster.sync_standby() is not None
    threads = [
        threading.Thread(target=_load, args=(server.url, reader, ledger, stop), kwargs={"writer": w})
        for w in (True, True, False, False)
    ]
    try:
        server.wait_ready()
        for t in threads:
            t.start()
        LocalCluster.wait_for(lambda: len(ledger.successes) >= 40, 60, "load before the kill")
        killed_at = time.monotonic()
        cluster.kill_node(first)
        LocalCluster.wait_for(
            lambda: (leader := cluster.leader()) is not None and leader is not first, 90, "new leader"
        )
        # Carnet reconnects by itself: answers come back without restarting anything.
        LocalCluster.wait_for(
            lambda: sum(1 for s in ledger.successes if s > killed_at) >= 40, 90, "answers after failover"
        )
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        stop.set()
        server.stop()  # a clean shutdown signs the tail on the new primary
    new = cluster.leader()
    assert new is not None and new is not first
    # The outage clients saw: the longest stretch without any success around the kill.
    around = sorted(s for s in ledger.successes if s > killed_at - 5)
    outage = max(b - a for a, b in itertools.pairwise(around))
    failed = len(ledger.failures)
    print(
        f"\nFAILOVER: outage seen by clients {outage:.1f}s, failed requests {failed} {ledger.failure_kinds},"
        f" answered writes {len(ledger.writes)}, answered reads {ledger.reads},"
        f" new leader {new.name} (was {first.name})"
    )

    primary = make_engine(cluster.node_url(new, "carnet"))
    try:
        with primary.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar() is False
            ids = {str(i) for i in conn.execute(sa.text("SELECT id FROM conditions")).scalars()}
            created = conn.execute(
                sa.text("SELECT resource_ids FROM audit_events WHERE kind = 'phi:resource:create'")
            ).scalars()
            audited_writes = {
                str(r) for row in created for r in (row if isinstance(row, list) else json.loads(row))
            }
            audited_reads = conn.execute(
                sa.text(
                    "SELECT count(*) FROM audit_events WHERE kind = 'phi:resource:read'"
                    " AND outcome = 'success' AND resource_type = 'Patient'"
                )
            ).scalar_one()
    finally:
        primary.dispose()
    lost = [w for w in ledger.writes if w not in ids]
    unaudited = [w for w in ledger.writes if w not in audited_writes]
    assert lost == [] and unaudited == [], (lost, unaudited)
    assert audited_reads >= ledger.reads  # a failed read may be audited too; an answered one always
    code, out = audit_verify(env, monkeypatch, "--strict")
    assert code == 0, out
