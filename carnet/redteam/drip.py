"""The slow drip: a stolen session that reads a few patients every hour, day and night, for
days, staying under the volume floors. Simulated days move carnet's clock, so it runs in this
process through the gate (as `carnet redteam benign` does), not over HTTP: demo and test only.

At each simulated midnight the nightly baseline job runs, as it would in production, so the
drip can try to teach the detector that its volume is usual (baselines are capped at twice the
role's floor). What it exposes before containment, if ever, is the result.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select

from carnet.access.actor import Actor, ActorKind
from carnet.detection.baselines import refresh_baselines
from carnet.detection.config import get_detection_config
from carnet.detection.models import Exposure
from carnet.identity.models import Account
from carnet.identity.service import roles_of
from carnet.kernel import clock
from carnet.kernel.errors import (
    AccountContained,
    CarnetError,
    InvalidInput,
    NotFound,
    StepUpRequired,
    Throttled,
)
from carnet.phi.exercise import ExerciseTargets
from carnet.phi.gate import Gate
from carnet.redteam.playbooks import PlaybookResult
from carnet.runtime import Runtime
from carnet.settings import install_movable_clock

# What each role drips through: the call that shows a patient's data to that role.
DRIP_CALLS: dict[str, Callable[[Gate, str], object]] = {
    "billing": lambda gate, pid: gate.list_invoices(patient_id=pid),
    "front_desk": lambda gate, pid: gate.list_appointments(patient_id=pid),
    "physician": lambda gate, pid: gate.read_patient(patient_id=pid),
    "nurse": lambda gate, pid: gate.read_patient(patient_id=pid),
}


@dataclass
class DripResult:
    result: PlaybookResult
    hours: int = 0
    hours_to_containment: int | None = None
    step_ups: int = 0
    throttles: int = 0
    # Most distinct patients exposed in one simulated day.
    busiest_day: int = 0


def _actor(runtime: Runtime, username: str) -> Actor:
    with runtime.session_factory() as session:
        account = session.scalar(select(Account).where(Account.username == username))
        if account is None or account.kind != "staff":
            raise NotFound(f"no staff account named {username!r}")
        return Actor(
            kind=ActorKind.STAFF,
            username=account.username,
            roles=roles_of(session, account=account),
            account_id=account.id,
            facility_id=account.facility_id,
            practitioner_id=account.practitioner_id,
            session_id=uuid.uuid4(),
            address="10.66.0.7",
        )


def run_drip(
    runtime: Runtime,
    *,
    role: str,
    targets: ExerciseTargets,
    days: int,
    per_hour: int,
    movable: clock.MovableClock | None = None,
) -> DripResult:
    """Drip `per_hour` patients every simulated hour for `days` days from a fresh `role` account.
    A step-up is a refusal (a stolen cookie has no second factor); a throttle waits the hour."""
    if not runtime.settings.exercise_mode:
        raise InvalidInput("the slow drip runs only when CARNET_ENV is demo or test")
    if role not in DRIP_CALLS:
        raise InvalidInput(f"role must be one of: {', '.join(sorted(DRIP_CALLS))}")
    accounts = targets.accounts.get(role, [])
    if not accounts:
        raise NotFound(f"no {role} account to steal")
    movable = movable or install_movable_clock(runtime.settings)
    username = accounts[-1]  # the last one: the HTTP playbooks take them from the front
    start = clock.now().replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    movable.set(start)
    # The stolen session: its owner proved a second factor when signing in, hours ago.
    actor = dataclasses.replace(_actor(runtime, username), second_factor_at=start - dt.timedelta(hours=2))
    drip = DripResult(result=PlaybookResult(playbook=f"slow-drip-{role}", username=username))
    result = drip.result
    call = DRIP_CALLS[role]
    people = iter(targets.people)
    config = get_detection_config()
    per_day: dict[dt.date, int] = {}
    for hour in range(days * 24):
        now = start + dt.timedelta(hours=hour)
        movable.set(now)
        if hour and now.hour == 0:  # the nightly baseline job
            with runtime.session_factory.begin() as session:
                refresh_baselines(session, config=config)
        drip.hours = hour + 1
        for k in range(per_hour):
            person = next(people, None)
            if person is None:
                result.note = "ran out of target patients"
                break
            movable.set(now + dt.timedelta(minutes=k * 60 // per_hour))
            result.requests += 1
            try:
                call(Gate(runtime, actor), str(person.patient_id))
                result.answers["ok"] = result.answers.get("ok", 0) + 1
                result.exposed.add(str(person.patient_id))
                per_day[now.date()] = per_day.get(now.date(), 0) + 1
            except AccountContained:
                result.answers["contained"] = result.answers.get("contained", 0) + 1
                result.contained = True
                result.requests_to_containment = result.requests
                drip.hours_to_containment = hour + 1
                break
            except StepUpRequired:
                drip.step_ups += 1
                result.answers["step-up"] = result.answers.get("step-up", 0) + 1
            except Throttled:
                drip.throttles += 1
                result.answers["throttled"] = result.answers.get("throttled", 0) + 1
                break
            except CarnetError as exc:
                name = type(exc).__name__
                result.answers[name] = result.answers.get(name, 0) + 1
        if result.contained or result.note:
            break
    drip.busiest_day = max(per_day.values(), default=0)
    with runtime.session_factory() as session:
        result.exposed_ledger = int(
            session.scalar(
                select(func.count(func.distinct(Exposure.patient_id))).where(
                    Exposure.actor_ref == actor.actor_ref, Exposure.at >= start
                )
            )
            or 0
        )
    if not result.contained:
        result.note = result.note or f"not contained after {drip.hours} simulated hours"
    return drip
