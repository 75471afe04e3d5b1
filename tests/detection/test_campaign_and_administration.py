"""Issue 15's rules, with the movable clock: night shifts are a normal pattern, another day's
day list is browsing, fragment name searches are partial searches, new accounts are on probation,
administration is watched, and many accounts at once are one campaign."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

from carnet.access.actor import Actor
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, Outcome
from carnet.detection import services
from carnet.detection.containment import contain
from carnet.detection.counters import MemoryExposureCounters, SqlExposureCounters
from carnet.detection.interfaces import Channel, EventKind, Finding, Level, Rule, SearchEvent, SearchShape
from carnet.detection.models import ActorState, Alert, ExposureBaseline
from carnet.identity.models import Account
from carnet.identity.service import create_account
from carnet.kernel import clock
from carnet.kernel.errors import AccountContained, Forbidden, StepUpRequired
from carnet.runtime import Runtime
from tests.detection.helpers import expose, make_actor, new_patients, step_up

MORNING = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)  # 09:00 in Paris
NIGHT = dt.datetime(2026, 3, 2, 22, 30, tzinfo=dt.UTC)  # 23:30 in Paris


def _alerts(runtime: Runtime, rule: str | None = None) -> list[Alert]:
    with runtime.session_factory() as session:
        query = sa.select(Alert).order_by(Alert.created_at)
        if rule is not None:
            query = query.where(Alert.rule == rule)
        return list(session.scalars(query))


def _campaign_alerts(runtime: Runtime) -> list[Alert]:
    """The one alert that explains a campaign, under the installation's name."""
    return [a for a in _alerts(runtime, Rule.CAMPAIGN.value) if a.actor_ref == "system:campaign"]


def _contained(runtime: Runtime, actor_ref: str) -> bool:
    with runtime.session_factory() as session:
        state = session.get(ActorState, actor_ref)
        return state is not None and state.status == "contained"


def _day_list(day: dt.date) -> SearchEvent:
    return SearchEvent(shape=SearchShape.LIST, term_digest=f"day-list:{day.isoformat()}")


# -- night shifts ------------------------------------------------------------------------------
def test_a_new_night_nurse_and_physician_are_not_stepped_up(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(NIGHT)
    nurse = make_actor(runtime, "nurse.night", Role.NURSE)
    doctor = make_actor(runtime, "dr.urgences", Role.PHYSICIAN)
    for actor in (nurse, doctor):
        expose(runtime, actor, new_patients(20), channel=Channel.LIST, query_shape=_day_list(NIGHT.date()))
        for _ in range(12):  # a chart every few minutes through the night
            movable_clock.advance(dt.timedelta(minutes=4))
            expose(runtime, actor, new_patients(1))
    assert _alerts(runtime) == []


def test_a_day_physician_at_night_is_noted_and_front_desk_asked(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(NIGHT)
    doctor = make_actor(runtime, "dr.days", Role.PHYSICIAN)
    with runtime.session_factory.begin() as session:
        session.add(
            ExposureBaseline(
                subject=doctor.actor_ref, m15=5, h1=10, h24=30, off_hours_share=0.0, computed_at=NIGHT
            )
        )
    expose(runtime, doctor, new_patients(12))  # noted for the officer, never stopped
    assert [(a.rule, a.level) for a in _alerts(runtime)] == [("off-hours", Level.RECORD)]
    billing = make_actor(runtime, "billing.night", Role.BILLING)
    with pytest.raises(StepUpRequired, match="does not usually work at night"):
        expose(runtime, billing, new_patients(10), channel=Channel.SEARCH)


# -- one budget: other days' lists, fragment searches -------------------------------------------
def test_another_days_list_is_browsing(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    doctor = make_actor(runtime, "dr.lists", Role.PHYSICIAN)
    # Today's list is the work itself, however long.
    expose(runtime, doctor, new_patients(30), channel=Channel.LIST, query_shape=_day_list(MORNING.date()))
    assert _alerts(runtime) == []
    # Three days ago: each patient on it weighs as one outside care; three ask for a second factor.
    past = MORNING.date() - dt.timedelta(days=3)
    with pytest.raises(StepUpRequired, match="outside their care"):
        expose(runtime, doctor, new_patients(3), channel=Channel.LIST, query_shape=_day_list(past))
    # Answered, the walk goes on: eight such patients in the hour contain.
    owner = step_up(doctor)
    expose(runtime, owner, new_patients(4), channel=Channel.LIST, query_shape=_day_list(past))
    with pytest.raises(AccountContained):
        expose(
            runtime,
            owner,
            new_patients(6),
            channel=Channel.LIST,
            query_shape=_day_list(past - dt.timedelta(1)),
        )


def test_a_night_shift_still_works_on_the_list_of_the_evening_it_started(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    evening = dt.datetime(2026, 3, 2, 21, 30, tzinfo=dt.UTC)  # 22:30 in Paris
    movable_clock.set(evening + dt.timedelta(hours=5))  # 04:30 in Paris, the next day
    nurse = make_actor(runtime, "nurse.rota", Role.NURSE)
    expose(runtime, nurse, new_patients(25), channel=Channel.LIST, query_shape=_day_list(evening.date()))
    assert _alerts(runtime) == []


def test_fragment_name_searches_are_partial_searches(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    doctor = make_actor(runtime, "dr.fragments", Role.PHYSICIAN)
    # A name with a birth date finds one patient: an ordinary lookup.
    expose(
        runtime,
        doctor,
        new_patients(1),
        channel=Channel.SEARCH,
        query_shape=SearchEvent(shape=SearchShape.NAME, term_digest="one"),
    )
    # Four letters of a family name among one's own patients find several: partial searches.
    fragment = SearchEvent(shape=SearchShape.NAME, term_digest="bert")
    expose(runtime, doctor, new_patients(3), channel=Channel.SEARCH, query_shape=fragment)
    with pytest.raises(StepUpRequired, match="partial or wildcard"):
        expose(
            runtime,
            doctor,
            new_patients(2),
            channel=Channel.SEARCH,
            query_shape=SearchEvent(shape=SearchShape.NAME, term_digest="rous"),
        )


def test_a_partial_name_search_counts_even_with_one_result(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    doctor = make_actor(runtime, "dr.partial", Role.PHYSICIAN)
    expose(
        runtime,
        doctor,
        new_patients(1),
        channel=Channel.SEARCH,
        query_shape=SearchEvent(shape=SearchShape.PARTIAL, term_digest="bert"),
    )
    with pytest.raises(StepUpRequired, match="partial or wildcard"):
        expose(
            runtime,
            doctor,
            new_patients(1),
            channel=Channel.SEARCH,
            query_shape=SearchEvent(shape=SearchShape.PARTIAL, term_digest="rous"),
        )


# -- probation ---------------------------------------------------------------------------------
def _open_account(runtime: Runtime, admin: Actor, username: str) -> Actor:
    """An account opened by an administrator, audited through the runtime's (watched) writer."""
    with runtime.session_factory.begin() as session:
        account_id = create_account(
            session,
            username=username,
            display_name=username,
            kind="staff",
            password="a long enough passphrase for tests 42",
            check_password_policy=False,
            audit=runtime.audit,
            created_by=admin,
        )
    return dataclasses.replace(
        make_actor(runtime, f"{username}.shadow", Role.PHYSICIAN), account_id=account_id, username=username
    )


def test_a_new_account_has_a_smaller_budget(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    admin = make_actor(runtime, "admin.one", Role.SYSTEM_ADMINISTRATOR)
    newcomer = _open_account(runtime, admin, "dr.new")
    veteran = make_actor(runtime, "dr.veteran", Role.PHYSICIAN)  # made by the seed: not new staff
    expose(runtime, veteran, new_patients(20))
    with pytest.raises(StepUpRequired, match="on probation"):
        expose(runtime, newcomer, new_patients(20))
    # Eight days later the same volume is ordinary.
    movable_clock.advance(dt.timedelta(days=8))
    runtime.ledger._probation.clear()  # type: ignore[attr-defined]
    expose(runtime, step_up(newcomer), new_patients(20))


# -- administration ----------------------------------------------------------------------------
def test_a_burst_of_accounts_opened_alerts_then_contains_the_admin_and_its_accounts(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    admin = make_actor(runtime, "admin.burst", Role.SYSTEM_ADMINISTRATOR)
    opened = []
    for i in range(3):
        movable_clock.advance(dt.timedelta(minutes=2))
        opened.append(_open_account(runtime, admin, f"desk.made{i}"))
    alerts = _alerts(runtime, Rule.ADMINISTRATION.value)
    assert [(a.username, a.level) for a in alerts] == [("admin.burst", Level.RECORD)]
    assert "accounts opened" in alerts[0].sentence
    assert not _contained(runtime, admin.actor_ref)
    # The fourth in the hour is refused and contains the administrator and what it made.
    with pytest.raises(AccountContained, match="access-widening"):
        _open_account(runtime, admin, "desk.made3")
    with runtime.session_factory() as session:
        assert session.scalar(sa.select(Account.id).where(Account.username == "desk.made3")) is None
    assert _contained(runtime, admin.actor_ref)
    assert all(_contained(runtime, f"account:{a.account_id}") for a in opened)


def test_an_administrators_usual_lifts_the_alert(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    admin = make_actor(runtime, "admin.busy", Role.SYSTEM_ADMINISTRATOR)
    with runtime.session_factory.begin() as session:
        for subject in (f"admin:{admin.actor_ref}", "admin:installation"):
            session.add(
                ExposureBaseline(
                    subject=subject, m15=0, h1=3, h24=6, off_hours_share=0.0, computed_at=MORNING
                )
            )
    for i in range(8):  # below 3 x 3 an hour and 3 x 6 a day, as for the installation
        _open_account(runtime, admin, f"intern{i}")
    assert _alerts(runtime, Rule.ADMINISTRATION.value) == []


def _restore(runtime: Runtime, first: Actor, second: Actor, actor_ref: str) -> None:
    request = services.request_restore(
        runtime, officer=first, actor_ref=actor_ref, reason="verified in person with the owner"
    )
    services.approve_restore(runtime, officer=second, request_id=request.id)


def test_a_restore_loop_contains_the_officers(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    first = make_actor(runtime, "officer.a", Role.SECURITY_OFFICER)
    second = make_actor(runtime, "officer.b", Role.SECURITY_OFFICER)
    victim = make_actor(runtime, "dr.loop", Role.PHYSICIAN)
    finding = Finding(Rule.VOLUME, Level.CONTAIN, "test containment")

    def contain_victim() -> None:
        with runtime.session_factory.begin() as session:
            contain(session, actor=victim, findings=[finding], audit=runtime.audit, at=clock.now())

    contain_victim()
    _restore(runtime, first, second, victim.actor_ref)  # once: an honest mistake happens
    assert not _contained(runtime, second.actor_ref)
    movable_clock.advance(dt.timedelta(hours=2))
    contain_victim()
    # Contained again within the new probation: the owner re-enrols in person first, then the
    # second restore in a few hours is the loop this rule is about.
    with pytest.raises(Forbidden, match="re-enrols in person"):
        _restore(runtime, first, second, victim.actor_ref)
    with runtime.session_factory.begin() as session:
        session.get_one(Account, victim.account_id).reenrolled_at = clock.now()
    with pytest.raises(AccountContained, match="restore loop"):
        _restore(runtime, first, second, victim.actor_ref)
    assert _contained(runtime, first.actor_ref) and _contained(runtime, second.actor_ref)
    assert _contained(runtime, victim.actor_ref)  # the second restore rolled back


# -- campaigns ---------------------------------------------------------------------------------
def _anomalous(runtime: Runtime, actor: Actor) -> None:
    """A stolen session: stopped for patients outside its care, then asking again unanswered."""
    strangers = new_patients(3)
    with pytest.raises(StepUpRequired):
        expose(runtime, actor, strangers, outside_care=strangers)
    with pytest.raises((StepUpRequired, AccountContained)):
        expose(runtime, actor, new_patients(1))


def test_accounts_behind_one_address_are_one_campaign(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    address = "198.51.100.7"
    bystander = make_actor(runtime, "nurse.same.net", Role.NURSE, address=address)
    expose(runtime, bystander, new_patients(1))  # seen from the address, nothing unusual
    first = make_actor(runtime, "dr.one", Role.PHYSICIAN, address=address)
    second = make_actor(runtime, "dr.two", Role.PHYSICIAN, address=address)
    _anomalous(runtime, first)
    assert _campaign_alerts(runtime) == []  # one account is that account's business
    _anomalous(runtime, second)
    # Two anomalous accounts behind one address: the cohort is asked for a second factor.
    campaign = _campaign_alerts(runtime)
    assert len(campaign) == 1 and campaign[0].level == Level.STEP_UP
    assert all(name in campaign[0].sentence for name in ("dr.one", "dr.two", "nurse.same.net"))
    with pytest.raises(StepUpRequired):
        expose(runtime, bystander, new_patients(1))
    expose(runtime, step_up(bystander), new_patients(1))  # its owner answers: back to work
    newcomer = make_actor(runtime, "desk.newcomer", Role.FRONT_DESK, address=address)
    with pytest.raises(StepUpRequired, match="campaign"):
        expose(runtime, newcomer, new_patients(1))
    # A third: the cohort is contained, explained in the same single alert.
    third = make_actor(runtime, "dr.three", Role.PHYSICIAN, address=address)
    _anomalous(runtime, third)
    campaign = _campaign_alerts(runtime)
    assert len(campaign) == 1 and campaign[0].level == Level.CONTAIN
    for actor in (first, second, third):
        assert _contained(runtime, actor.actor_ref)
    assert "dr.three" in campaign[0].sentence


def test_several_accounts_anomalous_anywhere_are_contained_together(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    actors = [make_actor(runtime, f"spread{i}", Role.PHYSICIAN, address=f"203.0.113.{i}") for i in range(5)]
    for actor in actors[:4]:
        _anomalous(runtime, actor)
        movable_clock.advance(dt.timedelta(minutes=5))
    assert not any(_contained(runtime, a.actor_ref) for a in actors[:3])
    _anomalous(runtime, actors[4])
    assert all(_contained(runtime, a.actor_ref) for a in actors)
    (alert,) = _campaign_alerts(runtime)
    assert all(f"spread{i}" in alert.sentence for i in range(5))


def test_honest_step_ups_never_make_a_campaign(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    for i in range(8):
        actor = make_actor(runtime, f"honest{i}", Role.PHYSICIAN, address="10.0.0.1")
        strangers = new_patients(3)
        with pytest.raises(StepUpRequired):
            expose(runtime, actor, strangers, outside_care=strangers)
        expose(runtime, step_up(actor), new_patients(1))  # answered at once
    assert _campaign_alerts(runtime) == []


# -- counters ----------------------------------------------------------------------------------
@pytest.mark.parametrize("counters", [MemoryExposureCounters, SqlExposureCounters])
def test_installation_window_and_keys(
    sqlite_runtime: Runtime, counters: type[MemoryExposureCounters] | type[SqlExposureCounters]
) -> None:
    store = counters()
    patients = [uuid.uuid4() for _ in range(5)]
    store.add_installation(patient_ids=patients[:3], at=MORNING)
    store.add_installation(patient_ids=patients[2:], at=MORNING + dt.timedelta(minutes=30))
    with sqlite_runtime.session_factory() as session:
        assert store.installation_counts(session, at=MORNING + dt.timedelta(minutes=31)) == (3, 5)
    memory = MemoryExposureCounters()
    memory.add_event(actor_ref="net:x", kind=EventKind.SEEN, key="account:a", at=MORNING)
    memory.add_event(actor_ref="net:x", kind=EventKind.SEEN, key="account:a", at=MORNING)
    memory.add_event(
        actor_ref="net:x", kind=EventKind.SEEN, key="account:b", at=MORNING - dt.timedelta(hours=2)
    )
    with sqlite_runtime.session_factory() as session:
        found = memory.keys(
            session, actor_ref="net:x", kind=EventKind.SEEN, at=MORNING, window=dt.timedelta(hours=1)
        )
    assert found == ["account:a"]


def test_admin_events_of_other_outcomes_are_not_counted(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    admin = make_actor(runtime, "admin.denied", Role.SYSTEM_ADMINISTRATOR)
    with runtime.session_factory.begin() as session:
        for _ in range(20):
            runtime.audit.append(
                session,
                AuditRecord(kind=AuditKind.ACCOUNT_CREATED, outcome=Outcome.DENIED, actor=admin),
            )
    assert _alerts(runtime, Rule.ADMINISTRATION.value) == []


def test_many_accounts_from_one_machine_in_minutes_are_asked_once(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    stolen = [
        dataclasses.replace(
            make_actor(runtime, f"same.machine{i}", Role.NURSE, address="192.0.2.50"),
            user_agent="Firefox/140",
        )
        for i in range(5)
    ]
    for actor in stolen[:3]:
        expose(runtime, actor, new_patients(2))
    # The fourth account from the same address and browser within 15 minutes: session timing.
    with pytest.raises(StepUpRequired, match="one machine"):
        expose(runtime, stolen[3], new_patients(2))
    with pytest.raises(StepUpRequired):
        expose(runtime, stolen[0], new_patients(1))  # signed in before: asked too
    expose(runtime, step_up(stolen[0]), new_patients(1))  # answered once, back to work
    (alert,) = _campaign_alerts(runtime)
    assert all(f"same.machine{i}" in alert.sentence for i in range(4))
    # Another browser on the same address is another machine: not asked.
    other = dataclasses.replace(
        make_actor(runtime, "other.pc", Role.NURSE, address="192.0.2.50"), user_agent="Edge"
    )
    expose(runtime, other, new_patients(1))
