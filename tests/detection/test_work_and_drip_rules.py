"""The rules that stop a slow drip: front desk and billing judged against their facility work,
a seven-day window, a pending step-up, and step-ups left unanswered over 24 hours."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from carnet.access.roles import Role
from carnet.billing.models import Invoice
from carnet.detection.config import DetectionConfig, RoleVolume
from carnet.detection.counters import MemoryExposureCounters
from carnet.detection.interfaces import Channel, SearchEvent, SearchShape
from carnet.detection.ledger import SqlExposureLedger
from carnet.detection.models import Alert
from carnet.kernel import clock
from carnet.kernel.errors import AccountContained, StepUpRequired
from carnet.phi.work import SqlFacilityWork
from carnet.runtime import Runtime
from tests import factories as f
from tests.detection.helpers import deny, expose, make_actor, make_patients, new_patients, step_up

MORNING = dt.datetime(2026, 3, 3, 9, 0, tzinfo=dt.UTC)  # a Tuesday, 10:00 in Paris


def _people(n: int) -> list[dict[str, str]]:
    return [{"family": f"Nom{i}", "given": "Test", "birth_date": "1960-01-01"} for i in range(n)]


def _alert_rules(runtime: Runtime, username: str) -> set[str]:
    with runtime.session_factory() as session:
        return {a.rule for a in session.query(Alert).filter(Alert.username == username)}


def test_facility_work_is_an_appointment_a_stay_an_invoice_or_a_new_registration(
    runtime: Runtime, movable_clock: clock.MovableClock, facility_work: SqlFacilityWork
) -> None:
    movable_clock.set(MORNING - dt.timedelta(days=60))
    facility = f.make_facility(runtime)
    old = make_patients(runtime, facility, _people(5))  # registered two months ago
    movable_clock.set(MORNING)
    admitted, invoiced, idle = old[0], old[1], old[2:]
    f.admit(runtime, patient_id=admitted, facility_id=facility, location_id=None)
    f.make_invoice(runtime, patient_id=invoiced, facility_id=facility)
    (new,) = make_patients(runtime, facility, _people(1))  # registered today
    with runtime.session_factory() as session:
        found = facility_work.in_work(session, patient_ids=[*old, new, uuid.uuid4()], at=clock.now())
    assert found == {admitted, invoiced, new}
    assert not found & set(idle)
    months_on = MORNING + dt.timedelta(days=120)
    with runtime.session_factory() as session:  # months on, still unpaid: billing's work (its worklist)
        later = facility_work.in_work(session, patient_ids=old, at=months_on)
    assert later == {admitted, invoiced}
    with runtime.session_factory.begin() as session:  # the invoice is settled, the stay goes on
        session.execute(sa.update(Invoice).values(status="balanced"))
    with runtime.session_factory() as session:
        later = facility_work.in_work(session, patient_ids=old, at=months_on)
    assert later == {admitted}
    # Settled by a payment taken now: the clerk's own work, judged in the payment's transaction
    # (the invoice already balanced) and in the months of questions that follow it.
    with runtime.session_factory.begin() as session:
        session.execute(sa.update(Invoice).values(updated_at=months_on))
    with runtime.session_factory() as session:
        paid_now = facility_work.in_work(session, patient_ids=old, at=months_on)
        long_after = facility_work.in_work(session, patient_ids=old, at=months_on + dt.timedelta(days=100))
    assert paid_now == {admitted, invoiced}
    assert long_after == {admitted}


def test_front_desk_reading_the_register_is_asked_for_a_second_factor_then_contained(
    runtime: Runtime, movable_clock: clock.MovableClock, facility_work: SqlFacilityWork
) -> None:
    movable_clock.set(MORNING - dt.timedelta(days=60))
    facility = f.make_facility(runtime)
    register = make_patients(runtime, facility, _people(30))
    movable_clock.set(MORNING)
    desk = make_actor(runtime, "desk.register", Role.FRONT_DESK)
    # Patients with business (a stay) never count, however many.
    for patient in register[:10]:
        f.admit(runtime, patient_id=patient, facility_id=facility, location_id=None)
    for patient in register[:10]:
        expose(runtime, desk, [patient])
    assert "outside-work" not in _alert_rules(runtime, "desk.register")
    # Five from the register without business: recorded; the sixth asks for a second factor.
    for patient in register[10:15]:
        expose(runtime, desk, [patient])
    with pytest.raises(StepUpRequired, match="6 different patients in the last hour who have no business"):
        expose(runtime, desk, [register[15]])
    # A stolen session cannot answer: even a patient with business is refused now, then contained.
    with pytest.raises(StepUpRequired, match="has not done so yet"):
        expose(runtime, desk, [register[0]])
    for _ in range(3):
        with pytest.raises(StepUpRequired):
            expose(runtime, desk, [register[1]])
    with pytest.raises(AccountContained, match="stopped 5 times in the last hour"):
        expose(runtime, desk, [register[2]])


def test_front_desk_answering_its_step_up_is_contained_only_by_a_register_sweep(
    runtime: Runtime, movable_clock: clock.MovableClock, facility_work: SqlFacilityWork
) -> None:
    movable_clock.set(MORNING - dt.timedelta(days=60))
    facility = f.make_facility(runtime)
    register = make_patients(runtime, facility, _people(20))
    movable_clock.set(MORNING)
    desk = make_actor(runtime, "desk.sweep", Role.FRONT_DESK)
    for patient in register[:5]:
        expose(runtime, desk, [patient])
    with pytest.raises(StepUpRequired):
        expose(runtime, desk, [register[5]])
    desk = step_up(desk)  # the agent confirms it is them
    for patient in register[5:19]:
        expose(runtime, desk, [patient])
    with pytest.raises(AccountContained, match=r"20 different patients .* a sweep of the patient register"):
        expose(runtime, desk, [register[19]])


def _weekly_ledger(runtime: Runtime) -> SqlExposureLedger:
    config = DetectionConfig(
        role_volume={"billing": RoleVolume(m15=1000, h1=1000, h24=1000)},
        weekly_volume={"billing": 50},
        outside_work={},
    )
    return SqlExposureLedger(settings=runtime.settings, config=config, counters=MemoryExposureCounters())


def test_a_week_of_reading_under_every_daily_floor_asks_for_a_second_factor(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    runtime = sqlite_runtime
    runtime.ledger = _weekly_ledger(runtime)
    movable_clock.set(MORNING)
    clerk = make_actor(runtime, "billing.week", Role.BILLING)
    for day in range(4):  # 12 a day: nothing on any day
        movable_clock.set(MORNING + dt.timedelta(days=day))
        expose(runtime, clerk, new_patients(12))
    movable_clock.set(MORNING + dt.timedelta(days=4))
    with pytest.raises(StepUpRequired, match="50 different patients in the last 7 days, beyond the 50"):
        expose(runtime, clerk, new_patients(2))
    # Seven days on, the first days have left the window.
    movable_clock.set(MORNING + dt.timedelta(days=11))
    expose(runtime, step_up(clerk), new_patients(12))


def test_step_ups_left_unanswered_all_day_contain_and_answered_ones_never_do(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    runtime = sqlite_runtime
    runtime.ledger = _weekly_ledger(runtime)
    for name, answers in (("billing.drip", False), ("billing.busy", True)):
        movable_clock.set(MORNING)
        clerk = make_actor(runtime, name, Role.BILLING)
        expose(runtime, clerk, new_patients(49))
        outcome: str | None = None
        for hour in range(10):  # one request an hour: never five refusals in one hour
            movable_clock.set(MORNING + dt.timedelta(hours=hour, minutes=30))
            try:
                expose(runtime, clerk, new_patients(1))
            except StepUpRequired:
                if answers:
                    clerk = step_up(clerk)
                    expose(runtime, clerk, new_patients(1))
            except AccountContained as exc:
                outcome = str(exc)
                break
        if answers:
            assert outcome is None
        else:
            assert outcome is not None and "without once confirming their identity" in outcome


def test_refusals_spread_over_a_day_ask_for_a_second_factor_then_contain(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    doctor = make_actor(runtime, "dr.knocking", Role.PHYSICIAN)
    for i in range(19):  # one refused chart every half hour: under 10 in 15 minutes, always
        movable_clock.set(MORNING + dt.timedelta(minutes=30 * i))
        deny(runtime, doctor)
    expose(runtime, doctor, new_patients(1))  # 19 in a day: nothing yet
    movable_clock.set(MORNING + dt.timedelta(minutes=30 * 19))
    deny(runtime, doctor)  # the 20th: asked for a second factor
    with pytest.raises(StepUpRequired, match="has not done so yet"):
        expose(runtime, doctor, new_patients(1))
    with runtime.session_factory() as session:
        sentences = [a.sentence for a in session.query(Alert).filter(Alert.username == "dr.knocking")]
    assert any("refused patient data 20 times in the last 24 hours" in s for s in sentences), sentences
    for i in range(20, 40):
        movable_clock.set(MORNING + dt.timedelta(minutes=30 * i))
        deny(runtime, doctor)
    with pytest.raises(AccountContained):
        expose(runtime, doctor, new_patients(1))


def test_opening_many_practitioners_calendars_asks_then_contains(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    desk = make_actor(runtime, "desk.calendars", Role.FRONT_DESK)

    def calendar(n: int) -> SearchEvent:
        return SearchEvent(shape=SearchShape.LIST, term_digest=f"schedule:{n}:2026-03-03")

    for n in range(5):  # five calendars, and the first again: a busy desk's quarter of an hour
        expose(runtime, desk, new_patients(5), channel=Channel.LIST, query_shape=calendar(n))
    expose(runtime, desk, new_patients(5), channel=Channel.LIST, query_shape=calendar(0))
    with pytest.raises(StepUpRequired, match="opened 6 different patient lists"):
        expose(runtime, desk, new_patients(5), channel=Channel.LIST, query_shape=calendar(5))
    desk = step_up(desk)
    for n in range(5, 11):
        expose(runtime, desk, new_patients(5), channel=Channel.LIST, query_shape=calendar(n))
    with pytest.raises(AccountContained, match="the whole facility's schedule"):
        expose(runtime, desk, new_patients(5), channel=Channel.LIST, query_shape=calendar(11))
