"""A Patient read by a session cookie with the session's lookup in the gate's first round trip
(`carnet.phi.gate.read_patient_of_session`, carnet/phi/fastpath.py `session_read`) answers,
audits and counts exactly as resolving the session first and reading on the general path.

Each case of tests/phi/test_fastpath.py is built twice (two worlds in one database), each actor
signed in with a session of its own; then the sessions' own cases: a session ended, one whose
account's roles changed since login (revoked on use), one whose minutely touch is due, an
unknown token. The route's flow is run as served in one world, and with every gate operation on
the general path (so the session is resolved first) in the other; what leaves, the audit
events, the exposures, detection's counts and the session row must agree. On PostgreSQL the
test also checks which cases the variant took and which it left to the usual flow.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from carnet.access.models import RoleGrant
from carnet.access.roles import Role
from carnet.db import roundtrip
from carnet.identity import sessions
from carnet.identity.authenticate import Authenticator, RequestContext
from carnet.identity.models import Account, AuthSession
from carnet.kernel import clock
from carnet.phi import fastpath
from carnet.phi.gate import Gate, read_patient_of_session
from carnet.runtime import Runtime
from tests import factories as f
from tests.phi.test_fastpath import CASES, World, _last_seq, _named, _outcome, _trail, _world

SESSION_CASES = ["session-ended", "roles-changed", "touch-due", "unknown-token"]
# The cases the variant leaves to the usual flow: resolving the session refuses or writes.
LEFT = {"suspended", *SESSION_CASES}
CONTEXT = RequestContext(address="10.1.2.3", user_agent="poste 12", path="/fhir/Patient/x")


def _signed_in(runtime: Runtime, case: str) -> tuple[World, str]:
    world = _world(runtime, "allowed" if case in SESSION_CASES else case)
    actor = world.actor
    assert actor.account_id is not None
    with runtime.session_factory.begin() as session:
        issued = sessions.open_session(
            session,
            account_id=actor.account_id,
            privileged=False,
            second_factor_method="totp",
            address=CONTEXT.address,
            user_agent=CONTEXT.user_agent,
        )
        row = sa.update(AuthSession).where(AuthSession.id == issued.session_id)
        if case == "stepped-up":  # the second factor proven before the campaign flag
            session.execute(row.values(second_factor_at=actor.second_factor_at))
        if case == "session-ended":
            session.execute(row.values(revoked_at=clock.now(), revoked_reason="signed out"))
        if case == "touch-due":
            session.execute(row.values(last_seen_at=clock.now() - dt.timedelta(minutes=2)))
        if case == "roles-changed":
            session.add(
                RoleGrant(
                    account_id=actor.account_id,
                    role=Role.NURSE.value,
                    facility_id=actor.facility_id,
                    status="active",
                    requested_at=clock.now(),
                    decided_at=clock.now(),
                    reason="a second role since login",
                )
            )
        username = session.scalar(sa.select(Account.username).where(Account.id == actor.account_id))
    assert username is not None
    world.names[str(issued.session_id)] = "session"
    world.names[username] = "username"  # the account's own, which the session's Actor carries
    return world, "not a session" if case == "unknown-token" else issued.token


def _served(runtime: Runtime, token: str, patient_id: str) -> Any:
    """The FHIR read route's flow (carnet.fhir.resources.patient.read_patient)."""
    view = read_patient_of_session(runtime, token=token, context=CONTEXT, patient_id=patient_id)
    if view is None:
        actor, _ = Authenticator.of(runtime).resolve(token=token, context=CONTEXT)
        view = Gate(runtime, actor).read_patient(patient_id=patient_id)
    return view


def _session_row(runtime: Runtime, world: World) -> Any:
    with runtime.session_factory() as session:
        row = session.scalars(
            sa.select(AuthSession).where(AuthSession.account_id == world.actor.account_id)
        ).one()
        return _named(
            {
                "revoked": row.revoked_reason,
                "touched": row.last_seen_at > clock.now() - dt.timedelta(seconds=30),
            },
            world.names,
        )


@pytest.mark.parametrize("case", CASES + SESSION_CASES)
def test_session_read_agrees_with_resolving_first(runtime: Runtime, case: str) -> None:
    on_postgres = runtime.engine.dialect.name == "postgresql"
    (general, general_token), (fast, fast_token) = _signed_in(runtime, case), _signed_in(runtime, case)

    def read(world: World, token: str) -> Callable[[], Any]:
        return lambda: _served(runtime, token, world.patient_id)

    since = _last_seq(runtime)
    with fastpath.general_only():
        before = fastpath.taken
        expected = _outcome(read(general, general_token), general.names)
        assert fastpath.taken == before
    expected_trail = _trail(runtime, general, since)

    since = _last_seq(runtime)
    before, before_session = fastpath.taken, fastpath.taken_with_session
    got = _outcome(read(fast, fast_token), fast.names)
    taken, with_session = fastpath.taken - before, fastpath.taken_with_session - before_session
    got_trail = _trail(runtime, fast, since)

    assert got == expected
    assert got_trail == expected_trail
    if case != "unknown-token":
        assert _session_row(runtime, fast) == _session_row(runtime, general)
    if on_postgres:
        # Taken by the variant, or left to the usual flow, whose own fast read then runs when the
        # session resolves (the touch done): once in all, what is left is never half done.
        assert with_session == (0 if case in LEFT else 1), with_session
        assert taken == (0 if case in LEFT - {"touch-due"} else 1), taken
    else:
        assert with_session == taken == 0
    outcome = {
        "session-ended": "AuthenticationRequired",
        "roles-changed": "AuthenticationRequired",
        "unknown-token": "AuthenticationRequired",
        "touch-due": "ok",
        "suspended": "AccountContained",
    }
    if case in outcome:
        assert got[0] == outcome[case]
    assert expected_trail["audit"] or case in LEFT - {"touch-due"}
    if case == "roles-changed":
        assert _session_row(runtime, fast)["revoked"] == "roles changed"


def test_a_bearer_token_or_sqlite_is_left_to_the_usual_flow(sqlite_runtime: Runtime) -> None:
    facility = f.make_facility(sqlite_runtime)
    doctor = f.make_physician(sqlite_runtime, facility)
    assert doctor.account_id is not None
    with sqlite_runtime.session_factory.begin() as session:
        token = sessions.open_session(
            session,
            account_id=doctor.account_id,
            privileged=False,
            second_factor_method="totp",
            address=None,
            user_agent=None,
        ).token
    assert read_patient_of_session(sqlite_runtime, token=token, context=CONTEXT, patient_id="x") is None


def test_a_read_after_the_connections_forgot_their_statements(runtime: Runtime) -> None:
    """The read's statements are prepared once per connection (carnet.db.roundtrip); after every
    pooled connection lost them (DISCARD ALL, or psycopg deallocating all after a rollback), the
    next read is still the fast one, answering and auditing as before."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("the fast path runs on PostgreSQL")
    world, token = _signed_in(runtime, "allowed")
    first = _outcome(lambda: _served(runtime, token, world.patient_id), world.names)
    since = _last_seq(runtime)
    held = [runtime.engine.connect() for _ in range(runtime.engine.pool.size())]
    try:
        assert any(roundtrip.prepared_on(c.connection.driver_connection) for c in held)
        for connection in held:
            raw: Any = connection.connection.driver_connection
            raw.autocommit = True
            raw.execute("DISCARD ALL")
            raw.autocommit = False
    finally:
        for connection in held:
            connection.close()
    before, before_session = fastpath.taken, fastpath.taken_with_session
    again = _outcome(lambda: _served(runtime, token, world.patient_id), world.names)
    assert (fastpath.taken - before, fastpath.taken_with_session - before_session) == (1, 1)
    assert again == first
    assert [event[1] for event in _trail(runtime, world, since)["audit"]] == ["success"]
