"""The step-up proof service (carnet.identity.stepup): a challenge belongs to one session and is
answered once; codes only where allowed, one action per code; refusals audited."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from carnet.access.actor import Actor, ActorKind
from carnet.app import create_app
from carnet.audit.interfaces import AuditKind
from carnet.audit.models import AuditEvent
from carnet.identity import stepup
from carnet.identity.models import WebAuthnCredential
from carnet.kernel import clock
from carnet.runtime import Runtime
from carnet.settings import Environment
from tests.identity.conftest import Person, login, make_person

FAKE_CREDENTIAL = {
    "id": "c3RlcHVwLXRlc3Q",
    "rawId": "c3RlcHVwLXRlc3Q",
    "type": "public-key",
    "response": {"clientDataJSON": "e30", "authenticatorData": "AAAA", "signature": "AAAA"},
}


def _with_passkey(runtime: Runtime, person: Person) -> None:
    """A stored passkey (its key is not used: these tests stop before the signature)."""
    with runtime.session_factory.begin() as session:
        session.add(
            WebAuthnCredential(
                account_id=person.account_id,
                credential_id=FAKE_CREDENTIAL["id"],
                public_key=b"\x00" * 77,
                sign_count=0,
                label="test",
                created_at=clock.now(),
            )
        )


def _step_ups(runtime: Runtime) -> list[tuple[str, str, dict[str, str]]]:
    with runtime.session_factory() as session:
        rows = session.execute(
            sa.select(AuditEvent.kind, AuditEvent.outcome, AuditEvent.detail)
            .where(AuditEvent.kind.in_([AuditKind.STEP_UP.value, AuditKind.STEP_UP_REFUSED.value]))
            .order_by(AuditEvent.seq)
        )
        return [(k, o, json.loads(d)) for k, o, d in rows]


@pytest.fixture
def two_clients(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock
) -> Iterator[tuple[TestClient, TestClient]]:
    app = create_app(sqlite_runtime)
    with (
        TestClient(app, base_url="http://localhost:8000") as one,
        TestClient(app, base_url="http://localhost:8000") as two,
    ):
        yield one, two


def test_a_challenge_is_for_the_session_it_was_issued_to_and_is_answered_once(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock, two_clients: tuple[TestClient, TestClient]
) -> None:
    mine, stolen = two_clients
    doctor = make_person(sqlite_runtime, "doc")
    _with_passkey(sqlite_runtime, doctor)
    login(mine, doctor)
    movable_clock.advance(dt.timedelta(seconds=31))
    login(stolen, doctor)
    options = mine.post("/auth/step-up/options").json()
    assert options["publicKey"]["allowCredentials"][0]["id"] == FAKE_CREDENTIAL["id"]
    assert options["publicKey"]["userVerification"] == "required"
    answer = {"challengeId": options["challengeId"], "webauthn": FAKE_CREDENTIAL}
    # Another session (the attacker's) cannot use this session's challenge, nor spend it.
    assert stolen.post("/auth/step-up/proof", json=answer).status_code == 401
    assert mine.post("/auth/step-up/proof", json=answer).status_code == 401  # a bad signature
    assert mine.post("/auth/step-up/proof", json=answer).status_code == 401  # answered already
    late = mine.post("/auth/step-up/options").json()
    movable_clock.advance(stepup.CHALLENGE_TTL + dt.timedelta(seconds=1))
    assert (
        mine.post(
            "/auth/step-up/proof", json={"challengeId": late["challengeId"], "webauthn": FAKE_CREDENTIAL}
        ).status_code
        == 401
    )
    reasons = [d.get("reason") for k, o, d in _step_ups(sqlite_runtime) if k == AuditKind.STEP_UP.value]
    assert reasons == [
        "challenge issued to another session",
        "the assertion does not verify",
        "challenge already answered",
        "challenge expired",
    ]
    refused = [d for k, o, d in _step_ups(sqlite_runtime) if k == AuditKind.STEP_UP_REFUSED.value]
    assert [d["action"] for d in refused] == ["proof"] * 4


def test_codes_prove_nothing_unless_the_installation_allows_them(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock, two_clients: tuple[TestClient, TestClient]
) -> None:
    client, _ = two_clients
    doctor = make_person(sqlite_runtime, "doc")
    login(client, doctor)
    movable_clock.advance(dt.timedelta(seconds=31))
    # CARNET_ENV=test without the test asking for it (and production): passkeys only.
    refused = client.post("/auth/step-up/proof", json={"otp": doctor.code()})
    assert refused.status_code == 401
    assert "passkey" in refused.json()["issue"][0]["diagnostics"]
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"env": Environment.PRODUCTION})
    assert not stepup.totp_accepted(sqlite_runtime)
    with pytest.raises(Exception, match="demo and test"):
        stepup.allow_totp_in_tests(sqlite_runtime)
    sqlite_runtime.settings = sqlite_runtime.settings.model_copy(update={"env": Environment.DEMO})
    assert stepup.totp_accepted(sqlite_runtime)


def test_each_code_allows_one_action_and_is_never_accepted_twice(
    sqlite_runtime: Runtime, movable_clock: clock.MovableClock, two_clients: tuple[TestClient, TestClient]
) -> None:
    client, _ = two_clients
    stepup.allow_totp_in_tests(sqlite_runtime)
    doctor = make_person(sqlite_runtime, "doc")
    me = login(client, doctor)
    movable_clock.advance(dt.timedelta(seconds=31))
    code = doctor.code()
    assert client.get("/auth/step-up").json()["fresh"] is False
    assert client.post("/auth/step-up/proof", json={"otp": code}).status_code == 200
    assert client.get("/auth/step-up").json()["fresh"] is True
    assert client.post("/auth/step-up/proof", json={"otp": code}).status_code == 401  # a replay
    actor = Actor(
        kind=ActorKind.STAFF,
        username="doc",
        roles=frozenset(),
        account_id=doctor.account_id,
        session_id=_session_id(sqlite_runtime, str(me["account"])),
    )
    stepup.require(sqlite_runtime, actor=actor, action=stepup.Action.ROLE_GRANT_REQUEST)
    assert client.get("/auth/step-up").json()["fresh"] is False  # the code's one action is done
    with pytest.raises(stepup.ProofRequired):
        stepup.require(sqlite_runtime, actor=actor, action=stepup.Action.ROLE_GRANT_REQUEST)
    refused = [d for k, o, d in _step_ups(sqlite_runtime) if k == AuditKind.STEP_UP_REFUSED.value]
    assert refused[-1] == {"action": "role-grant-request", "reason": "code already used for another action"}


def _session_id(runtime: Runtime, account_id: str) -> uuid.UUID | None:
    from carnet.identity.models import AuthSession

    with runtime.session_factory() as session:
        return session.scalars(
            sa.select(AuthSession.id)
            .where(AuthSession.account_id == uuid.UUID(account_id), AuthSession.revoked_at.is_(None))
            .order_by(AuthSession.created_at.desc())
        ).first()


def test_an_access_token_never_stands_for_a_person(sqlite_runtime: Runtime) -> None:
    app_actor = Actor(kind=ActorKind.CLIENT, username="client:lab", roles=frozenset(), client_id="lab")
    with pytest.raises(stepup.ProofRequired):
        stepup.require(sqlite_runtime, actor=app_actor, action=stepup.Action.API_CLIENT_REGISTER)
    refused = [d for k, o, d in _step_ups(sqlite_runtime) if k == AuditKind.STEP_UP_REFUSED.value]
    assert refused == [
        {"action": "api-client-register", "reason": "an access token cannot prove a person's presence"}
    ]


def test_without_a_session_nothing_is_issued_or_proven(client: TestClient) -> None:
    assert client.get("/auth/step-up").status_code == 401
    assert client.post("/auth/step-up/options").status_code == 401
    assert client.post("/auth/step-up/proof", json={"otp": "123456"}).status_code == 401


def test_proofs_on_both_databases(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    """The service on SQLite and PostgreSQL: a code's proof is spent by one action; a passkey
    challenge answered from another session makes no proof; a stale proof is refused."""
    from carnet.identity import sessions

    stepup.allow_totp_in_tests(runtime)
    doctor = make_person(runtime, "doc")
    _with_passkey(runtime, doctor)
    rp = stepup.RelyingParty.from_origin(runtime.settings.origin)

    def session_actor() -> Actor:
        with runtime.session_factory.begin() as session:
            issued = sessions.open_session(
                session,
                account_id=doctor.account_id,
                privileged=False,
                second_factor_method="totp",
                address=None,
                user_agent=None,
            )
        return Actor(
            kind=ActorKind.STAFF,
            username="doc",
            roles=frozenset(),
            account_id=doctor.account_id,
            session_id=issued.session_id,
        )

    mine, other = session_actor(), session_actor()
    with runtime.session_factory.begin() as session:
        assert stepup.prove_with_totp(session, actor=mine, code=doctor.code(), runtime=runtime) is None
    with pytest.raises(stepup.ProofRequired):
        stepup.require(runtime, actor=other, action=stepup.Action.ACCOUNT_OPEN)
    stepup.require(runtime, actor=mine, action=stepup.Action.ACCOUNT_OPEN)
    with pytest.raises(stepup.ProofRequired):
        stepup.require(runtime, actor=mine, action=stepup.Action.ACCOUNT_OPEN)
    with runtime.session_factory.begin() as session:
        challenge_id, _options = stepup.challenge(session, actor=mine, rp=rp)
    with runtime.session_factory.begin() as session:
        why = stepup.prove_with_passkey(
            session, actor=other, challenge_id=challenge_id, credential=FAKE_CREDENTIAL, rp=rp
        )
    assert why == "challenge issued to another session"
    movable_clock.advance(dt.timedelta(seconds=31))
    with runtime.session_factory.begin() as session:
        assert stepup.prove_with_totp(session, actor=mine, code=doctor.code(), runtime=runtime) is None
    movable_clock.advance(stepup.FRESHNESS + dt.timedelta(seconds=1))
    with pytest.raises(stepup.ProofRequired):
        stepup.require(runtime, actor=mine, action=stepup.Action.ACCOUNT_OPEN)
    reasons = [d["reason"] for k, _o, d in _step_ups(runtime) if k == AuditKind.STEP_UP_REFUSED.value]
    assert reasons == [
        "no proof in this session",
        "code already used for another action",
        "proof older than 5 minutes",
    ]
