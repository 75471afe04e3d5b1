"""The gate's fast read (carnet/phi/fastpath.py) and the kernel's general path decide, redact,
audit and count identically.

Each case is built twice, the same way (two worlds in one database); the patient is read on the
general path in one world and by `Gate.read_patient` as served (the fast path on PostgreSQL) in
the other. What leaves (the view, or the error and its words), the audit events, the exposure
rows and detection's window counts must be the same once each world's ids are named alike. On
SQLite the fast path declines and both reads are the general path; on PostgreSQL the test also
checks that the fast path ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.db import roundtrip
from carnet.detection.containment import RedisContainmentFlags
from carnet.detection.counters import RedisExposureCounters
from carnet.detection.ledger import SqlExposureLedger
from carnet.detection.models import ActorState, DetectionEvent, Exposure
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.kernel.errors import StepUpRequired
from carnet.patients.models import Patient
from carnet.phi import fastpath
from carnet.phi.gate import Gate
from carnet.phi.system import system_access
from carnet.runtime import Runtime
from carnet.scheduling.models import Appointment
from tests import factories as f

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class World:
    actor: Actor
    patient_id: str
    names: dict[str, str] = field(default_factory=dict)


def _world(runtime: Runtime, case: str) -> World:
    facility = f.make_facility(runtime)
    if case in ("redacted", "kept-redacted", "ward"):  # a ward opens a chart to its nurses
        actor = f.make_nurse(runtime, facility)
    elif case == "no-grant":
        practitioner = f.make_practitioner(runtime, facility)
        actor = f.make_account(
            runtime, roles=[Role.PHYSICIAN], facility_id=facility, practitioner_id=practitioner, grant=False
        )
    else:
        actor = f.make_physician(runtime, facility)
    # Kept as received (another system's Patient, with elements carnet has no column for).
    received = KEPT if case.startswith("kept") else None
    patient = f.register_patient(
        runtime, facility, family="Lemoine", given="Claire", ins="2700512345678", received=received
    )
    names = {str(facility): "facility", patient.id: "patient", str(actor.account_id): "account"}
    if actor.practitioner_id is not None:
        names[str(actor.practitioner_id)] = "practitioner"
    if case in (
        "allowed",
        "redacted",
        "contained",
        "stepped-up",
        "suspended",
        "no-grant",
        "kept",
        "kept-redacted",
    ):
        assert actor.practitioner_id is not None
        f.link_care(
            runtime, patient_id=patient.id, practitioner_id=actor.practitioner_id, facility_id=facility
        )
    if case in RELATIONSHIP_CASES:
        _relate(runtime, case, actor, facility, patient.id)
    if case == "break-glass":
        actor = dataclasses.replace(actor, second_factor_at=clock.now())
        Gate(runtime, actor).break_glass(
            patient_id=patient.id, reason="emergency", justification="arrêt cardiaque aux urgences"
        )
    if case == "contained":
        with runtime.session_factory.begin() as session:
            session.add(
                ActorState(
                    actor_ref=actor.actor_ref,
                    account_id=actor.account_id,
                    status="contained",
                    reason="test containment.",
                    contained_at=clock.now(),
                )
            )
    if case == "suspended":
        with runtime.session_factory.begin() as session:
            session.execute(
                sa.update(Account).where(Account.id == actor.account_id).values(status="suspended")
            )
    if case == "stepped-up":
        # A campaign flagged this account after its last second factor: its next read must wait.
        actor = dataclasses.replace(actor, second_factor_at=clock.now() - dt.timedelta(minutes=30))
        flag = f"{(clock.now() - dt.timedelta(minutes=1)).timestamp()}|test campaign"
        runtime.ledger.flags.set(f"campaign:{actor.actor_ref}", flag)  # type: ignore[attr-defined]
    patient_id = str(uuid.uuid4()) if case == "missing" else patient.id
    return World(actor, patient_id, names)


def _relate(runtime: Runtime, case: str, actor: Actor, facility: uuid.UUID, patient_id: str) -> None:
    """The actor's one relationship to the patient in a relationship case (each kind the
    relationships statement reads, and a care relationship that ended)."""
    me = actor.practitioner_id
    assert me is not None
    now = clock.now()
    if case in ("referral", "care-ended"):
        ended = case == "care-ended"
        f.link_care(
            runtime,
            patient_id=patient_id,
            practitioner_id=me,
            facility_id=facility,
            kind="care_team" if ended else "referral",
            start=now - dt.timedelta(days=10) if ended else None,
            end=now - dt.timedelta(days=1) if ended else None,
        )
    elif case == "attending":
        f.admit(runtime, patient_id=patient_id, facility_id=facility, location_id=None, attending_id=me)
    elif case == "ward":
        ward = f.make_location(runtime, facility)
        f.admit(runtime, patient_id=patient_id, facility_id=facility, location_id=ward)
        f.assign_ward(runtime, practitioner_id=me, location_id=ward, facility_id=facility)
    elif case in ("appointment", "appointment-cancelled"):
        with system_access(runtime, reason="test fixture: appointment") as door:
            door.session.add(
                Appointment(
                    facility_id=facility,
                    patient_id=uuid.UUID(patient_id),
                    practitioner_id=me,
                    start_at=now + dt.timedelta(days=2),
                    end_at=now + dt.timedelta(days=2, minutes=20),
                    status="cancelled" if case == "appointment-cancelled" else "booked",
                    version_id=1,
                    created_at=now,
                    updated_at=now,
                )
            )
    elif case == "designated":
        with system_access(runtime, reason="test fixture: designated physician") as door:
            designate = sa.update(Patient).where(Patient.id == uuid.UUID(patient_id))
            door.session.execute(designate.values(designated_physician_id=me))


def _named(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _named(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_named(v, names) for v in value]
    if isinstance(value, uuid.UUID):
        return names.get(str(value), "<other id>")
    if isinstance(value, dt.datetime):
        return "<time>"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        for raw, name in names.items():
            value = value.replace(raw, name)
        return _UUID.sub("<other id>", value)  # an alert's own id, say
    return value


def _outcome(read: Callable[[], Any], names: dict[str, str]) -> Any:
    try:
        view = read()
    except Exception as exc:
        return (type(exc).__name__, _named(str(exc), names))
    return ("ok", _named(view.model_dump(), names))


def _trail(runtime: Runtime, world: World, since: int) -> dict[str, Any]:
    actor_ref = world.actor.actor_ref
    with runtime.session_factory() as session:
        events = session.scalars(
            sa.select(AuditEvent)
            .where(AuditEvent.actor_ref == actor_ref, AuditEvent.seq > since)
            .order_by(AuditEvent.seq)
        ).all()
        exposures = session.scalars(
            sa.select(Exposure).where(Exposure.actor_ref == actor_ref).order_by(Exposure.at)
        ).all()
        counts = runtime.ledger.counters.counts(  # type: ignore[attr-defined]
            session, actor_ref=actor_ref, at=clock.now(), since=None
        )
    audit = [
        (
            e.kind,
            e.outcome,
            e.resource_type,
            json.loads(e.patient_ids),
            json.loads(e.resource_ids),
            e.query,
            e.policy_reason,
            e.break_glass_reason,
            e.roles,
        )
        for e in events
    ]
    shown = [(x.patient_id, x.channel, x.resource_type, x.outside_care, x.fields) for x in exposures]
    timeless = {k: v for k, v in dataclasses.asdict(counts).items() if not k.startswith("first_")}
    named: dict[str, Any] = _named({"audit": audit, "exposures": shown, "counts": timeless}, world.names)
    return named


def _last_seq(runtime: Runtime) -> int:
    with runtime.session_factory() as session:
        return int(session.scalar(sa.select(sa.func.coalesce(sa.func.max(AuditEvent.seq), 0))) or 0)


CASES = ["allowed", "refused", "missing", "break-glass", "contained", "redacted", "stepped-up", "suspended"]
CASES += ["no-grant", "kept", "kept-redacted"]
# Each kind of relationship the relationships statement reads (care team: "allowed";
# break-the-glass: "break-glass"), and two that are no longer one.
RELATIONSHIP_CASES = ["referral", "attending", "ward", "appointment", "designated"]
RELATIONSHIP_CASES += ["care-ended", "appointment-cancelled"]
CASES += RELATIONSHIP_CASES
KEPT = {
    "resourceType": "Patient",
    "name": [{"use": "official", "family": "Lemoine", "given": ["Claire"]}],
    "gender": "female",
    "birthDate": "1970-05-17",
    "maritalStatus": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]
    },
    "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "fr-FR"}]}}],
}


@pytest.mark.parametrize("case", CASES)
def test_fast_and_general_paths_agree(runtime: Runtime, case: str) -> None:
    on_postgres = runtime.engine.dialect.name == "postgresql"
    general, fast = _world(runtime, case), _world(runtime, case)

    since = _last_seq(runtime)
    with fastpath.general_only():
        before = fastpath.taken
        expected = _outcome(
            lambda: Gate(runtime, general.actor).read_patient(patient_id=general.patient_id), general.names
        )
        assert fastpath.taken == before
    expected_trail = _trail(runtime, general, since)

    since = _last_seq(runtime)
    before = fastpath.taken
    got = _outcome(lambda: Gate(runtime, fast.actor).read_patient(patient_id=fast.patient_id), fast.names)
    assert fastpath.taken == before + (1 if on_postgres else 0)
    got_trail = _trail(runtime, fast, since)

    assert got == expected
    assert got_trail == expected_trail
    # The cases are what they say (not all equal by being all refused, say).
    outcome = {
        "allowed": "ok",
        "break-glass": "ok",
        "redacted": "ok",
        "refused": "NotFound",
        "missing": "NotFound",
        "no-grant": "NotFound",
        "contained": "AccountContained",
        "suspended": "AccountContained",
        "stepped-up": "StepUpRequired",
        "kept": "ok",
        "kept-redacted": "ok",
        "referral": "ok",
        "attending": "ok",
        "ward": "ok",
        "appointment": "ok",
        "designated": "ok",
        "care-ended": "NotFound",
        "appointment-cancelled": "NotFound",
    }[case]
    assert got[0] == outcome
    kind = {"designated": "designated_physician"}.get(case, case)
    if case in RELATIONSHIP_CASES and outcome == "ok":  # read by that relationship, on both paths
        assert kind in got_trail["audit"][-1][6]
    if case.startswith("kept"):
        # A reader of every field gets the Patient as received; a nurse (identity only), none of it.
        received = got[1]["received"]
        assert (received is not None) == (case == "kept")
        if received is not None:
            assert received["maritalStatus"] == KEPT["maritalStatus"]
    assert expected_trail["audit"], "every read is audited"
    if case == "redacted":  # a nurse in the care team: the identity, not the contact
        assert got[1]["family"] == "Lemoine" and got[1]["phone"] is None and got[1]["address"] is None
    if case == "allowed":  # a physician in the care team: identity and contact
        assert got[1]["phone"] is not None and expected_trail["exposures"]


@pytest.fixture
def redis_runtime(runtime: Runtime) -> Runtime:
    """The runtime with detection's counters and flags in Redis, as served (a read then asks
    nothing of the ORM session once detection's caches are warm)."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("the fast path runs on PostgreSQL")
    client = redis.Redis(host="127.0.0.1", port=6379, db=0)
    prefix = f"carnet:test:{uuid.uuid4().hex}"
    ledger = SqlExposureLedger(
        settings=runtime.settings,
        counters=RedisExposureCounters(client, prefix=prefix),
        flags=RedisContainmentFlags(client, prefix=prefix),
    )
    return dataclasses.replace(runtime, ledger=ledger)


@contextlib.contextmanager
def _orm_transactions() -> Iterator[list[Any]]:
    """The ORM sessions' root transactions begun within the block."""
    began: list[Any] = []

    def created(_session: Session, transaction: Any) -> None:
        if transaction.parent is None:
            began.append(transaction)

    sa.event.listen(Session, "after_transaction_create", created)
    try:
        yield began
    finally:
        sa.event.remove(Session, "after_transaction_create", created)


def test_a_read_needing_no_orm_transaction_is_committed_and_notified(
    redis_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast read whose session is used by nothing begins no ORM transaction; it is committed
    all the same, and the audit checkpointer hears of its event as after any commit."""
    runtime = redis_runtime
    world = _world(runtime, "allowed")
    gate = Gate(runtime, world.actor)
    for _ in range(2):  # detection's caches: the address noted after the first, known after the second
        gate.read_patient(patient_id=world.patient_id)
    notified: list[int] = []
    monkeypatch.setattr(fastpath._writer(runtime.audit), "on_commit", notified.append)
    sent = roundtrip._send
    savepoints: list[bool] = []  # whether each round trip took one (`roundtrip._send`'s rule)

    def spied(conn: Any, state: Any, queued: Any, commit: bool, **kw: Any) -> Any:
        status = conn.pgconn.transaction_status
        within = status == psycopg.pq.TransactionStatus.INTRANS
        savepoints.append(within and not (kw.get("continues") and state.known))
        return sent(conn, state, queued, commit, **kw)

    monkeypatch.setattr(roundtrip, "_send", spied)
    before = fastpath.taken
    with _orm_transactions() as began:
        view = gate.read_patient(patient_id=world.patient_id)
    assert fastpath.taken == before + 1
    assert began == []  # the path under test: no ORM transaction at all
    # Two round trips; the closing one continues the first, which proved its statements known:
    # the audit append and the exposure row are the transaction's own, not a subtransaction's.
    assert savepoints == [False, False]
    assert view.family == "Lemoine"
    seq = _last_seq(runtime)
    assert notified == [seq]
    with runtime.session_factory() as session:  # committed: another connection sees it
        event = session.get(AuditEvent, seq)
        assert event is not None and event.actor_ref == world.actor.actor_ref


def test_a_step_up_without_an_orm_transaction_still_writes_its_refusal(
    redis_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Detection's writes after a refused request (the refusal, the alert) run once the read's
    transaction has ended, also when nothing had begun the session's transaction before."""
    runtime = redis_runtime
    world = _world(runtime, "allowed")
    actor = dataclasses.replace(world.actor, second_factor_at=clock.now() - dt.timedelta(minutes=30))
    gate = Gate(runtime, actor)
    for _ in range(2):  # as above: detection's caches warm
        gate.read_patient(patient_id=world.patient_id)
    ledger = cast(SqlExposureLedger, runtime.ledger)
    flag = f"{(clock.now() - dt.timedelta(minutes=1)).timestamp()}|test campaign"
    ledger.flags.set(f"campaign:{actor.actor_ref}", flag)
    ledger._campaign_flags.clear()  # this worker's cache of the flags (2 seconds)
    began_before: list[bool] = []
    after = ledger._after

    def spied(session: Session, action: Any) -> None:
        began_before.append(session.in_transaction())
        after(session, action)

    monkeypatch.setattr(ledger, "_after", spied)
    with pytest.raises(StepUpRequired):
        gate.read_patient(patient_id=world.patient_id)
    assert began_before and began_before[0] is False  # the case under test
    with runtime.session_factory() as session:
        counts = ledger.counters.counts(session, actor_ref=actor.actor_ref, at=clock.now(), since=None)
        refusals = session.scalars(
            sa.select(DetectionEvent).where(
                DetectionEvent.actor_ref == actor.actor_ref, DetectionEvent.kind == "refusal"
            )
        ).all()
    assert counts.refusals_1h == 1 and len(refusals) == 1
