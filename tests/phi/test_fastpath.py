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

import dataclasses
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.models import AuditEvent
from carnet.detection.models import ActorState, Exposure
from carnet.identity.models import Account
from carnet.kernel import clock
from carnet.phi import fastpath
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from tests import factories as f

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class World:
    actor: Actor
    patient_id: str
    names: dict[str, str] = field(default_factory=dict)


def _world(runtime: Runtime, case: str) -> World:
    facility = f.make_facility(runtime)
    if case in ("redacted", "kept-redacted"):
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
    }[case]
    assert got[0] == outcome
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
