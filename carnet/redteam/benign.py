"""The benign workload: clinicians working their day lists over simulated days, through the gate,
to count what detection must never do to them — contain — and how often it asks for a step-up.

Each clinician-day opens the clinician's day list (appointments and inpatients) at 08:00 local,
then, every few minutes, a patient's chart, allergies and notes. A step-up is answered the way a
clinician would (a fresh second factor, then the same request again) and counted. Simulated days
move carnet's clock: demo and test mode only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import uuid
import zoneinfo
from dataclasses import dataclass, field

from sqlalchemy import select

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.detection.config import get_detection_config
from carnet.identity.models import Account
from carnet.identity.service import roles_of
from carnet.kernel import clock
from carnet.kernel.errors import AccountContained, CarnetError, StepUpRequired, Throttled
from carnet.phi.gate import Gate
from carnet.runtime import Runtime
from carnet.settings import install_movable_clock

CLINICAL = (Role.PHYSICIAN, Role.NURSE)


@dataclass
class BenignResult:
    clinician_days: int = 0
    requests: int = 0
    patients_opened: int = 0
    step_ups: int = 0
    throttles: int = 0
    containments: list[str] = field(default_factory=list)

    @property
    def step_ups_per_clinician_week(self) -> float:
        return 7 * self.step_ups / self.clinician_days if self.clinician_days else 0.0


def clinicians(runtime: Runtime, *, limit: int | None = None) -> list[Actor]:
    actors: list[Actor] = []
    with runtime.session_factory() as session:
        accounts = session.scalars(
            select(Account)
            .where(Account.kind == "staff", Account.status == "active", Account.practitioner_id.is_not(None))
            .order_by(Account.username)
        ).all()
        for account in accounts:
            roles = roles_of(session, account=account)
            if not roles & set(CLINICAL):
                continue
            actors.append(
                Actor(
                    kind=ActorKind.STAFF,
                    username=account.username,
                    roles=roles,
                    account_id=account.id,
                    facility_id=account.facility_id,
                    practitioner_id=account.practitioner_id,
                    session_id=uuid.uuid4(),
                    address=f"10.20.{len(actors) // 250}.{len(actors) % 250 + 1}",
                )
            )
            if limit is not None and len(actors) >= limit:
                break
    return actors


def run_benign(
    runtime: Runtime,
    *,
    days: int,
    first_day: dt.date,
    limit: int | None = None,
    seed: int = 6,
    movable: clock.MovableClock | None = None,
) -> BenignResult:
    """`movable`: the clock to move (a test's); by default one is installed (refused in production)."""
    movable = movable or install_movable_clock(runtime.settings)
    rng = random.Random(seed)
    zone = zoneinfo.ZoneInfo(get_detection_config().timezone)
    staff = clinicians(runtime, limit=limit)
    result = BenignResult()
    contained: set[str] = set()
    for offset in range(days):
        day = first_day + dt.timedelta(days=offset)
        for actor in staff:
            if actor.actor_ref in contained:
                continue
            start = dt.datetime.combine(day, dt.time(8, rng.randrange(0, 30)), tzinfo=zone)
            movable.set(start)
            # A session opened at the start of the day, with its login's second factor.
            actor = dataclasses.replace(actor, session_id=uuid.uuid4(), second_factor_at=clock.now())
            result.clinician_days += 1
            try:
                actor, listed = _day(runtime, actor, day, rng, result, movable)
            except AccountContained as exc:
                contained.add(actor.actor_ref)
                result.containments.append(f"{actor.username} on {day}: {exc}")
                continue
            result.patients_opened += listed
    return result


def _call(
    runtime: Runtime, actor: Actor, result: BenignResult, op: str, **kwargs: object
) -> tuple[Actor, object]:
    """One gate call; a step-up is answered with a fresh second factor, as a clinician would."""
    for _ in range(2):
        result.requests += 1
        try:
            return actor, getattr(Gate(runtime, actor), op)(**kwargs)
        except StepUpRequired:
            result.step_ups += 1
            actor = dataclasses.replace(actor, second_factor_at=clock.now())
        except Throttled:
            result.throttles += 1
            return actor, None
        except AccountContained:
            raise
        except CarnetError:  # refused or not found: a clinician moves on
            return actor, None
    return actor, None


def _day(
    runtime: Runtime,
    actor: Actor,
    day: dt.date,
    rng: random.Random,
    result: BenignResult,
    movable: clock.MovableClock,
) -> tuple[Actor, int]:
    actor, listed = _call(runtime, actor, result, "day_list", day=day)
    patients: list[str] = []
    if listed is not None:
        patients = [a.patient.id for a in listed.appointments] + [i.patient.id for i in listed.inpatients]  # type: ignore[attr-defined]
    opened = 0
    for patient_id in dict.fromkeys(patients):
        movable.advance(dt.timedelta(minutes=rng.randrange(4, 15)))
        actor, _ = _call(runtime, actor, result, "read_patient", patient_id=patient_id)
        actor, _ = _call(runtime, actor, result, "list_allergies", patient_id=patient_id)
        if rng.random() < 0.5:
            actor, _ = _call(runtime, actor, result, "list_notes", patient_id=patient_id)
        opened += 1
    return actor, opened
