"""The fast read's transaction frame (carnet/phi/fastpath.py `_Frame`): a connection checked out
of the engine's pool and an ORM session made only when something uses it.

Whatever happens in the read (an answer, a statement error, a killed backend, a decline), the
connection goes back to the pool with nothing open and nothing set (no transaction, no facility
scope, not the app's role), or is discarded; the audit event and the exposure row are committed
in the read's transaction or not at all.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.audit.models import AuditEvent
from carnet.db import roundtrip
from carnet.detection.containment import RedisContainmentFlags
from carnet.detection.counters import RedisExposureCounters
from carnet.detection.ledger import SqlExposureLedger
from carnet.detection.models import Exposure
from carnet.phi import fastpath
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from tests import factories as f


@pytest.fixture
def redis_runtime(runtime: Runtime) -> Iterator[Runtime]:
    """As served: detection's counters and flags in Redis (a quiet read asks nothing of the ORM)."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("the fast path runs on PostgreSQL")
    client = redis.Redis(host="127.0.0.1", port=6379, db=0)
    prefix = f"carnet:test:{uuid.uuid4().hex}"
    ledger = SqlExposureLedger(
        settings=runtime.settings,
        counters=RedisExposureCounters(client, prefix=prefix),
        flags=RedisContainmentFlags(client, prefix=prefix),
    )
    yield dataclasses.replace(runtime, ledger=ledger)


def _reader(runtime: Runtime) -> tuple[Actor, str]:
    facility = f.make_facility(runtime)
    actor = f.make_physician(runtime, facility)
    patient = f.register_patient(runtime, facility, family="Lemoine", given="Claire", ins="2700512345678")
    assert actor.practitioner_id is not None
    f.link_care(runtime, patient_id=patient.id, practitioner_id=actor.practitioner_id, facility_id=facility)
    # No address: detection has none to look up through the session (a quiet read uses none).
    return dataclasses.replace(actor, address=None), patient.id


def _trail(runtime: Runtime, actor: Actor) -> tuple[list[str], int]:
    """The outcomes of the actor's audit events, and how many exposure rows it has."""
    with runtime.session_factory() as session:
        mine = AuditEvent.actor_ref == actor.actor_ref
        outcomes = session.scalars(sa.select(AuditEvent.outcome).where(mine).order_by(AuditEvent.seq)).all()
        exposures = session.scalar(
            sa.select(sa.func.count()).select_from(Exposure).where(Exposure.actor_ref == actor.actor_ref)
        )
    return [str(o) for o in outcomes], int(exposures or 0)


def _pool_is_clean(runtime: Runtime) -> set[int]:
    """Every connection is back in the pool, and each one in it has nothing open or set: checks
    them all out at once (the pool hands out its idle ones first). Their backend pids."""
    pool = runtime.engine.pool
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    held = [runtime.engine.raw_connection() for _ in range(pool.checkedin())]  # type: ignore[attr-defined]
    pids = set()
    try:
        for fairy in held:
            raw: Any = fairy.dbapi_connection
            assert raw.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            user, scope = raw.execute(
                "SELECT current_user::text, coalesce(current_setting('carnet.facility_ids', true), '')"
            ).fetchone()
            raw.rollback()
            assert user != "carnet_app" and scope == ""
            pids.add(raw.info.backend_pid)
    finally:
        for fairy in held:
            fairy.close()
    return pids


def test_a_quiet_read_makes_no_session_and_returns_its_connection_clean(
    redis_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = redis_runtime
    actor, patient_id = _reader(runtime)
    gate = Gate(runtime, actor)
    gate.read_patient(patient_id=patient_id)  # detection's caches warm
    opened: list[object] = []
    open_ = fastpath._Frame._open

    def spied(frame: Any) -> None:
        opened.append(frame)
        open_(frame)

    monkeypatch.setattr(fastpath._Frame, "_open", spied)
    taken = fastpath.taken
    view = gate.read_patient(patient_id=patient_id)
    assert view.family == "Lemoine"
    assert fastpath.taken == taken + 1
    assert opened == []  # no ORM session, no engine Connection
    assert _trail(runtime, actor) == (["success", "success"], 2)
    _pool_is_clean(runtime)


def test_a_session_used_in_the_read_is_in_its_transaction(
    redis_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something that uses the session (here, before the closing pipeline) is made one on the
    read's own connection, in the transaction the first pipeline began: the scope it set."""
    runtime = redis_runtime
    actor, patient_id = _reader(runtime)
    seen: list[tuple[Any, ...]] = []
    closing = fastpath._closing_round_trip

    def using(core: Any, session: Session, guard: Any, tx: Any) -> None:
        assert not fastpath._opened(session)
        scope = "current_setting('carnet.facility_ids', true)"
        row = session.execute(sa.text(f"SELECT current_user::text, {scope}, pg_backend_pid()")).one()
        seen.append((*row, tx.raw.info.backend_pid, session.in_transaction()))
        closing(core, session, guard, tx)

    monkeypatch.setattr(fastpath, "_closing_round_trip", using)
    Gate(runtime, actor).read_patient(patient_id=patient_id)
    (user, scope, pid, raw_pid, began) = seen[0]
    assert user == "carnet_app" and scope != "" and pid == raw_pid and began
    assert _trail(runtime, actor) == (["success"], 1)
    _pool_is_clean(runtime)


def test_a_statement_error_rolls_back_and_returns_the_connection_clean(
    redis_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = redis_runtime
    actor, patient_id = _reader(runtime)
    gate = Gate(runtime, actor)
    gate.read_patient(patient_id=patient_id)
    monkeypatch.setattr(fastpath, "_audit_statement", lambda *_a: roundtrip.Statement("SELECT 1/0"))
    with pytest.raises(psycopg.errors.DivisionByZero):
        gate.read_patient(patient_id=patient_id)
    outcomes, exposures = _trail(runtime, actor)
    assert exposures == 1  # the failed read's exposure row was not committed
    assert outcomes[0] == "success" and outcomes[1:] == ["error"]  # the failure audited (kernel's _fail)
    _pool_is_clean(runtime)


@pytest.mark.parametrize("found_by", ["pipeline", "session"])
def test_a_backend_killed_mid_read_is_discarded(
    redis_runtime: Runtime, monkeypatch: pytest.MonkeyPatch, found_by: str
) -> None:
    """The backend killed before the closing pipeline: the failure found by the pipeline
    (psycopg's), or by the ORM session on the connection (SQLAlchemy's)."""
    runtime = redis_runtime
    actor, patient_id = _reader(runtime)
    gate = Gate(runtime, actor)
    gate.read_patient(patient_id=patient_id)
    killed: list[int] = []
    closing = fastpath._closing_round_trip

    def killing(core: Any, session: Session, guard: Any, tx: Any) -> None:
        pid = tx.raw.info.backend_pid
        with runtime.engine.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        killed.append(pid)
        if found_by == "session":
            session.execute(sa.text("SELECT 1"))
        closing(core, session, guard, tx)

    monkeypatch.setattr(fastpath, "_closing_round_trip", killing)
    with pytest.raises((psycopg.OperationalError, sa.exc.OperationalError)):
        gate.read_patient(patient_id=patient_id)
    monkeypatch.undo()
    assert killed and killed[0] not in _pool_is_clean(runtime)
    assert _trail(runtime, actor)[1] == 1  # nothing of the killed read committed
    gate.read_patient(patient_id=patient_id)  # the pool serves on
    assert _trail(runtime, actor)[1] == 2


def test_a_decline_returns_the_connection_clean(
    redis_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Declined after the first pipeline (its scope and role set in the transaction): rolled
    back, and the kernel's general path answers."""
    runtime = redis_runtime
    actor, patient_id = _reader(runtime)
    judged = fastpath._judged

    def declining(*args: Any, **kwargs: Any) -> Any:
        judged(*args, **kwargs)
        raise fastpath._Decline

    monkeypatch.setattr(fastpath, "_judged", declining)
    taken = fastpath.taken
    view = Gate(runtime, actor).read_patient(patient_id=patient_id)
    assert view.family == "Lemoine" and fastpath.taken == taken
    assert _trail(runtime, actor) == (["success"], 1)
    _pool_is_clean(runtime)
