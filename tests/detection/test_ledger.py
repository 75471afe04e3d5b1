"""Each detection rule, through the ledger the gate calls, on SQLite and PostgreSQL.

Windows are exercised with the movable clock; a refused request rolls back like the gate's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import uuid

import pytest
import sqlalchemy as sa

from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.detection.interfaces import Channel, Level, SearchEvent, SearchShape
from carnet.detection.models import ActorState, Alert, Exposure
from carnet.identity.models import Account, AuthSession
from carnet.identity.sessions import open_session
from carnet.kernel import clock
from carnet.kernel.errors import AccountContained, StepUpRequired, Throttled
from carnet.runtime import Runtime
from tests.detection.helpers import (
    client_actor,
    deny,
    expose,
    expose_as_owner,
    make_actor,
    make_facility,
    make_patients,
    new_patients,
    step_up,
)

# A Monday, 09:00 in Paris.
MORNING = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)
PERSON = {"family": "Leroux", "given": "Anne", "birth_date": "1961-04-02", "phone": "0611223344"}


def _alerts(runtime: Runtime) -> list[Alert]:
    with runtime.session_factory() as session:
        return list(session.scalars(sa.select(Alert).order_by(Alert.created_at)))


def _search(shape: SearchShape, term: str, page: int = 1) -> SearchEvent:
    return SearchEvent(shape=shape, term_digest=term, page=page)


def test_a_canary_contains_on_the_first_request(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    facility = make_facility(runtime)
    canary = make_patients(runtime, facility, [PERSON], canary=True)
    doctor = make_actor(runtime, "dr.canary", Role.PHYSICIAN)
    assert doctor.account_id is not None
    with runtime.session_factory.begin() as session:
        for _ in range(2):  # the stolen session and the owner's own
            open_session(
                session,
                account_id=doctor.account_id,
                privileged=False,
                second_factor_method="totp",
                address=None,
                user_agent=None,
            )

    with pytest.raises(AccountContained, match=r"suspended.*call the hospital security office"):
        expose(runtime, doctor, [*new_patients(3), *canary], channel=Channel.SEARCH)

    with runtime.session_factory() as session:
        # The request's exposures rolled back with it: its data was never returned.
        assert session.scalar(sa.select(sa.func.count()).select_from(Exposure)) == 0
        state = session.get(ActorState, doctor.actor_ref)
        assert state is not None and state.status == "contained" and "decoy" in (state.reason or "")
        account = session.get(Account, doctor.account_id)
        assert account is not None and account.status == "suspended"
        assert "decoy" in (account.status_reason or "")
        events = session.scalars(sa.select(AuditEvent).where(AuditEvent.kind == AuditKind.CONTAINMENT)).all()
        assert [e.actor_ref for e in events] == [doctor.actor_ref]
        live = session.scalars(sa.select(AuthSession).where(AuthSession.revoked_at.is_(None))).all()
        assert live == []  # every session revoked
        revoked = session.scalars(
            sa.select(AuditEvent).where(AuditEvent.kind == AuditKind.SESSION_REVOKED)
        ).all()
        assert [json.loads(e.detail)["sessions"] for e in revoked] == ["2"]
    assert [(a.rule, a.level) for a in _alerts(runtime)] == [("canary", 4)]
    # Every later request is refused, whatever it asks.
    with pytest.raises(AccountContained):
        expose(runtime, doctor, new_patients(1))


def test_a_benign_clinician_week_is_never_stopped(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    """40 patients of their own care a day, lists, charts and searches, over a working week."""
    rng = random.Random(6)
    doctor = make_actor(runtime, "dr.benign", Role.PHYSICIAN)
    care = new_patients(150)
    for day in range(5):
        movable_clock.set(MORNING + dt.timedelta(days=day))
        todays = rng.sample(care, 40)
        expose(runtime, doctor, todays[:20], channel=Channel.LIST, resource_type="Appointment")
        for i, patient in enumerate(todays):
            movable_clock.advance(dt.timedelta(minutes=12))
            expose(runtime, doctor, [patient], channel=Channel.CHART)
            if i % 8 == 0:
                term = f"name-{day}-{i}"
                expose(
                    runtime,
                    doctor,
                    [patient],
                    channel=Channel.SEARCH,
                    query_shape=_search(SearchShape.NAME, term),
                )
    assert [a for a in _alerts(runtime) if a.level >= 2] == []


def test_volume_windows_slide_and_escalate(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    nurse = make_actor(runtime, "nurse.volume", Role.NURSE)
    expose(runtime, nurse, new_patients(39), channel=Channel.SEARCH)
    movable_clock.advance(dt.timedelta(minutes=16))
    expose(runtime, nurse, new_patients(39), channel=Channel.SEARCH)  # 39 per 15 min, 78 per hour
    movable_clock.advance(dt.timedelta(minutes=16))
    with pytest.raises(StepUpRequired, match=r"81 different patients in the last hour"):
        expose(runtime, nurse, new_patients(3))
    # The second factor proven at login does not answer a step-up; one proven after it does,
    # and the work goes on, up to twice the threshold.
    fresh = make_actor(runtime, "nurse.fresh", Role.NURSE, second_factor_at=clock.now())
    with pytest.raises(StepUpRequired):
        expose(runtime, fresh, new_patients(45))
    fresh = step_up(fresh)
    expose(runtime, fresh, new_patients(45))
    with pytest.raises(Throttled) as throttled:
        expose(runtime, fresh, new_patients(40))
    assert throttled.value.retry_after_seconds > 0
    with pytest.raises(AccountContained, match="in the last 15 minutes"):
        expose(runtime, fresh, new_patients(80))
    # A ward's day list of the nurse's own patients is the work itself: not counted by the hour.
    ward = make_actor(runtime, "nurse.ward", Role.NURSE)
    expose(runtime, ward, new_patients(70), channel=Channel.LIST, resource_type="DayList")
    rules = {(a.username, a.rule) for a in _alerts(runtime)}
    assert rules == {("nurse.volume", "volume"), ("nurse.fresh", "volume")}


def test_patients_outside_care_step_up_then_contain(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    doctor = make_actor(runtime, "dr.outside", Role.PHYSICIAN)
    strangers = new_patients(10)
    expose(runtime, doctor, strangers[:2], outside_care=strangers[:2])
    with pytest.raises(StepUpRequired, match="3 different patients outside their care"):
        expose(runtime, doctor, strangers[2:3], outside_care=strangers[2:3])
    proven = make_actor(runtime, "dr.proven", Role.PHYSICIAN)
    proven = expose_as_owner(runtime, proven, strangers[:7], outside_care=strangers[:7])
    with pytest.raises(AccountContained, match="8 different patients outside their care"):
        expose(runtime, proven, strangers[7:8], outside_care=strangers[7:8])


def test_a_high_share_outside_care_contains(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    doctor = make_actor(runtime, "dr.share", Role.PHYSICIAN)
    mine, strangers = new_patients(8), new_patients(9)
    expose(runtime, doctor, mine)
    doctor = expose_as_owner(runtime, doctor, strangers[:4], outside_care=strangers[:4])
    movable_clock.advance(dt.timedelta(hours=2))  # the hourly count starts again, the day's does not
    expose(runtime, doctor, strangers[4:6], outside_care=strangers[4:6])
    with pytest.raises(AccountContained, match=r"53% of the 17 patients"):
        expose(runtime, doctor, strangers[6:], outside_care=strangers[6:])


@pytest.mark.parametrize(
    ("shape", "step_up_at", "contain_at", "words"),
    [
        (SearchShape.IDENTIFIER, 8, 15, "identifier sweep"),
        (SearchShape.NAME, 15, 25, "search sweep"),
        (SearchShape.WILDCARD, 2, 5, "alphabetical sweep"),
    ],
)
def test_enumeration_by_searches(
    sqlite_runtime: Runtime,
    movable_clock: clock.MovableClock,
    shape: SearchShape,
    step_up_at: int,
    contain_at: int,
    words: str,
) -> None:
    runtime = sqlite_runtime
    movable_clock.set(MORNING)
    clerk = make_actor(runtime, f"desk.{shape.value}", Role.FRONT_DESK)
    for i in range(1, step_up_at):
        expose(runtime, clerk, new_patients(1), channel=Channel.SEARCH, query_shape=_search(shape, f"t{i}"))
    if shape is not SearchShape.WILDCARD:  # wildcard searches count each time; others once each
        expose(runtime, clerk, new_patients(1), channel=Channel.SEARCH, query_shape=_search(shape, "t1"))
    with pytest.raises(StepUpRequired):
        expose(runtime, clerk, [], channel=Channel.SEARCH, query_shape=_search(shape, "new"))
    proven = make_actor(runtime, f"proven.{shape.value}", Role.FRONT_DESK)
    for i in range(1, contain_at):
        proven = expose_as_owner(
            runtime, proven, new_patients(1), channel=Channel.SEARCH, query_shape=_search(shape, f"t{i}")
        )
    with pytest.raises(AccountContained, match=words):
        expose(runtime, proven, new_patients(1), channel=Channel.SEARCH, query_shape=_search(shape, "last"))


def test_deep_paging(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    biller = make_actor(runtime, "billing.pager", Role.BILLING)
    for page in range(1, 6):
        expose(
            runtime,
            biller,
            new_patients(4),
            channel=Channel.LIST,
            query_shape=_search(SearchShape.LIST, "inv", page),
        )
    with pytest.raises(StepUpRequired, match="beyond page 5"):
        expose(
            runtime,
            biller,
            new_patients(4),
            channel=Channel.LIST,
            query_shape=_search(SearchShape.LIST, "inv", 6),
        )
    proven = make_actor(runtime, "billing.proven", Role.BILLING)
    for page in range(6, 9):
        proven = expose_as_owner(
            runtime,
            proven,
            new_patients(4),
            channel=Channel.LIST,
            query_shape=_search(SearchShape.LIST, "inv", page),
        )
    with pytest.raises(AccountContained, match="paging through everything"):
        expose(
            runtime,
            proven,
            new_patients(4),
            channel=Channel.LIST,
            query_shape=_search(SearchShape.LIST, "inv", 9),
        )


def test_an_administrator_knocking_on_patient_data_is_contained(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    admin = make_actor(runtime, "admin.knock", Role.SYSTEM_ADMINISTRATOR)
    deny(runtime, admin)
    deny(runtime, admin, resource_type="Appointment")
    assert [(a.rule, a.level) for a in _alerts(runtime)] == [("denials", 1)]
    deny(runtime, admin)  # the hook never raises: the request is already refused
    with pytest.raises(AccountContained, match="system administrator, who reads no patient data"):
        expose(runtime, admin, [])
    with runtime.session_factory() as session:
        account = session.get(Account, admin.account_id)
        assert account is not None and account.status == "suspended"


def test_an_administrator_shown_patient_data_is_contained(sqlite_runtime: Runtime) -> None:
    admin = make_actor(sqlite_runtime, "admin.reads", Role.SYSTEM_ADMINISTRATOR)
    with pytest.raises(AccountContained, match="holds no role that reads patient data"):
        expose(sqlite_runtime, admin, new_patients(1))


def test_exports_and_refused_exports(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    doctor = make_actor(runtime, "dr.export", Role.PHYSICIAN)
    expose(runtime, doctor, new_patients(1), channel=Channel.EXPORT)
    assert [(a.rule, a.level) for a in _alerts(runtime)] == [("export", 1)]
    with pytest.raises(StepUpRequired, match="exported the data of 10 different patients"):
        expose(runtime, doctor, new_patients(9), channel=Channel.EXPORT)
    clerk = make_actor(runtime, "desk.export", Role.FRONT_DESK)
    deny(runtime, clerk, channel=Channel.EXPORT)
    deny(runtime, clerk, channel=Channel.EXPORT)
    with pytest.raises(AccountContained, match="without an approved export"):
        expose(runtime, clerk, new_patients(1))


def test_a_large_approved_export_is_never_contained_for_its_size(
    runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    """The export channel is the gate's approved export: a step-up at most, never containment,
    and its patients do not count toward the sweep windows of the requester's ordinary reads."""
    movable_clock.set(MORNING)
    doctor = make_actor(runtime, "dr.bigexport", Role.PHYSICIAN)
    with pytest.raises(StepUpRequired, match="under approved exports"):
        expose(runtime, doctor, new_patients(500), channel=Channel.EXPORT)
    with runtime.session_factory() as session:
        account = session.get(Account, doctor.account_id)
        assert account is not None and account.status == "active"
    # Until the step-up is answered, nothing more leaves (a session that cannot answer stops here).
    with pytest.raises(StepUpRequired, match=r"was asked to confirm their identity at .* has not done so"):
        expose(runtime, doctor, new_patients(1))
    # Answered: the same physician's ordinary work is judged on its own volume.
    expose(runtime, step_up(doctor), new_patients(5))
    assert all(a.level < Level.THROTTLE for a in _alerts(runtime))  # never throttled or contained


def test_off_hours_and_new_addresses(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(dt.datetime(2026, 3, 2, 22, 30, tzinfo=dt.UTC))  # 23:30 in Paris
    # Front desk does not work nights: ten patients in the hour at 23:30 ask for a second factor.
    desk = make_actor(runtime, "desk.night", Role.FRONT_DESK)
    expose(runtime, desk, new_patients(1))
    assert _alerts(runtime) == []  # no pattern of its own yet, no volume: nothing to say
    with pytest.raises(StepUpRequired, match="does not usually work at night"):
        expose(runtime, desk, new_patients(9))

    movable_clock.set(MORNING)
    day = make_actor(runtime, "dr.day", Role.PHYSICIAN, address="10.1.1.1")
    expose(runtime, day, new_patients(1))  # the first address is the usual one
    moved = make_actor(runtime, "dr.day2", Role.PHYSICIAN, address="10.1.1.1")
    expose(runtime, moved, new_patients(1))
    elsewhere = dataclasses.replace(moved, address="203.0.113.9")
    expose(runtime, elsewhere, new_patients(1))
    new_address = [a for a in _alerts(runtime) if a.rule == "new-address"]
    assert [(a.username, a.level) for a in new_address] == [("dr.day2", 1)]
    assert "203.0.113.9" in new_address[0].sentence


def test_api_client_volume_throttles_then_contains(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> None:
    movable_clock.set(MORNING)
    client = client_actor("lab-connector")
    expose(sqlite_runtime, client, new_patients(499), channel=Channel.SEARCH)
    with pytest.raises(Throttled, match="API client lab-connector"):
        expose(sqlite_runtime, client, new_patients(1), channel=Channel.SEARCH)
    with pytest.raises(AccountContained):
        expose(sqlite_runtime, client, new_patients(1000), channel=Channel.SEARCH)
    with pytest.raises(AccountContained):
        expose(sqlite_runtime, client, new_patients(1), channel=Channel.SEARCH)


def test_insisting_after_refusals_contains(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    movable_clock.set(MORNING)
    doctor = make_actor(runtime, "dr.insist", Role.PHYSICIAN)
    strangers = new_patients(20)
    expose(runtime, doctor, strangers[:2], outside_care=strangers[:2])
    for i in range(5):
        with pytest.raises(StepUpRequired):
            expose(runtime, doctor, [strangers[2 + i]], outside_care=[strangers[2 + i]])
    with pytest.raises(AccountContained, match="kept requesting patient data after being stopped 5 times"):
        expose(runtime, doctor, [strangers[10]], outside_care=[strangers[10]])


def test_unknown_actor_refs_do_not_collide(sqlite_runtime: Runtime) -> None:
    one = make_actor(sqlite_runtime, "dr.one", Role.PHYSICIAN)
    two = make_actor(sqlite_runtime, "dr.two", Role.PHYSICIAN)
    shared = [uuid.uuid4()]
    expose(sqlite_runtime, one, shared)
    expose(sqlite_runtime, two, shared)
    with sqlite_runtime.session_factory() as session:
        refs = session.scalars(sa.select(Exposure.actor_ref).order_by(Exposure.actor_ref)).all()
    assert sorted(refs) == sorted([one.actor_ref, two.actor_ref])
