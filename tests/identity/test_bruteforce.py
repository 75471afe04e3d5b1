"""Brute force is slowed (throttled per account and per address) and every attempt is audited,
with the same answers for existing and unknown accounts. Timing is measured in
benchmarks/login_timing.py, not asserted here."""

from __future__ import annotations

import json
from collections import Counter
from typing import Literal

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from carnet.audit.models import AuditEvent
from carnet.identity import passwords
from carnet.identity.authenticate import (
    Authenticator,
    LoginRequest,
    LoginThrottled,
    RequestContext,
)
from carnet.kernel.errors import AuthenticationRequired
from carnet.runtime import Runtime
from tests.identity.conftest import make_person


def _failures(runtime: Runtime) -> Counter[str]:
    with runtime.session_factory() as session:
        details = session.scalars(select(AuditEvent.detail).where(AuditEvent.kind == "account:login:failure"))
        return Counter(json.loads(d)["reason"] for d in details)


def _attack(client: TestClient, username: str, attempts: int) -> list[tuple[int, str]]:
    answers = []
    for i in range(attempts):
        r = client.post(
            "/auth/login", json={"username": username, "password": f"guess number {i:04d}", "otp": "123456"}
        )
        body = r.json()
        answers.append((r.status_code, body.get("error") or body["issue"][0]["diagnostics"]))
    return answers


@pytest.mark.slow
def test_1000_wrong_passwords_against_one_account_are_throttled_and_audited(
    client: TestClient, sqlite_runtime: Runtime
) -> None:
    make_person(sqlite_runtime, "target")
    answers = _attack(client, "target", 1000)
    # 5 a minute, then 20 an hour: the count depends on how long the attack ran on this machine.
    guessed = sum(1 for status, _ in answers if status == 401)
    assert answers[:6] == [(401, "the username, password or code is not right")] * 5 + [(429, answers[5][1])]
    assert 5 <= guessed <= 20 and len(answers) - guessed >= 980
    assert _failures(sqlite_runtime) == Counter({"wrong password": guessed, "throttled": 1000 - guessed})
    # The owner sees the attack in their security history.
    with sqlite_runtime.session_factory() as session:
        from carnet.identity.models import AccountEvent

        denied = select(func.count()).select_from(AccountEvent).where(AccountEvent.outcome == "denied")
        assert session.scalar(denied) == guessed


@pytest.mark.slow
def test_an_unknown_account_answers_exactly_like_an_existing_one(
    sqlite_runtime: Runtime, movable_clock: object
) -> None:
    from carnet.app import create_app

    make_person(sqlite_runtime, "exists")
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as c:
        existing = _attack(c, "exists", 40)
    Authenticator.of(sqlite_runtime).throttle.reset()
    with TestClient(create_app(sqlite_runtime), base_url="http://localhost:8000") as c:
        unknown = _attack(c, "does-not-exist", 40)
    assert existing == unknown
    assert _failures(sqlite_runtime) == Counter({"wrong password": 5, "unknown account": 5, "throttled": 70})


def test_unknown_accounts_cost_one_argon2_verification_like_known_ones(
    sqlite_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_person(sqlite_runtime, "known")
    calls: list[str] = []

    class CountingHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            calls.append(str(hash).split("$")[3])  # the parameters, identical for both
            return super().verify(hash, password)

    base = passwords.HASHER
    monkeypatch.setattr(
        passwords,
        "HASHER",
        CountingHasher(time_cost=base.time_cost, memory_cost=base.memory_cost, parallelism=base.parallelism),
    )
    auth = Authenticator.of(sqlite_runtime)
    for username in ("known", "unknown"):
        with pytest.raises(AuthenticationRequired):
            auth.log_in(LoginRequest(username=username, password="not the password", otp="000000"))
    assert calls == ["m=19456,t=2,p=1", "m=19456,t=2,p=1"]


@pytest.mark.slow
def test_spraying_100_accounts_and_a_botnet_on_one_account_are_throttled(sqlite_runtime: Runtime) -> None:
    people = [make_person(sqlite_runtime, f"staff{i:03d}") for i in range(100)]
    auth = Authenticator.of(sqlite_runtime)
    pauses: list[float] = []
    auth.sleep = pauses.append  # record the padding instead of waiting it out

    def attempt(username: str, address: str) -> str:
        try:
            auth.log_in(
                LoginRequest(
                    username=username,
                    password="Summer2026-hospital",
                    otp="000000",
                    context=RequestContext(address=address, user_agent="spray"),
                )
            )
        except LoginThrottled:
            return "throttled"
        except AuthenticationRequired:
            return "refused"
        return "opened"

    # From one address: 10 passwords x 100 accounts; the address limit stops it after 30.
    one_address = Counter(attempt(p.username, "203.0.113.9") for _ in range(10) for p in people)
    # 30 a minute, then 200 an hour from one address (the count depends on the machine's speed).
    assert 30 <= one_address["refused"] <= 200 and one_address["opened"] == 0
    assert one_address["refused"] + one_address["throttled"] == 1000
    # From a botnet (a new address for every try) against one account: 100 an hour, then no more.
    auth.throttle.reset()
    botnet = Counter(attempt("staff000", f"198.51.{i // 250}.{i % 250}") for i in range(120))
    assert botnet == Counter({"refused": 100, "throttled": 20})
    assert sum(_failures(sqlite_runtime).values()) == 1120  # every attempt is in the audit chain
    # Refusals are padded (one that itself outlasted the floor on a loaded machine needs none).
    assert pauses and all(0 < p < auth.failure_floor for p in pauses)


def test_every_kind_of_failure_is_padded_to_the_same_floor(sqlite_runtime: Runtime) -> None:
    person = make_person(sqlite_runtime, "padded")
    auth = Authenticator.of(sqlite_runtime)
    for username, password, otp in [
        ("nobody", "whatever password", "000000"),  # unknown account
        ("padded", "whatever password", person.code()),  # wrong password
        ("padded", person.password, person.code(offset_steps=5)),  # wrong code
    ]:
        ticks = iter([10.0, 10.04])  # a fake timer: the attempt "took" 40 ms
        pauses: list[float] = []
        auth.timer = ticks.__next__
        auth.sleep = pauses.append
        with pytest.raises(AuthenticationRequired):
            auth.log_in(LoginRequest(username=username, password=password, otp=otp))
        assert pauses == [pytest.approx(auth.failure_floor - 0.04)]


def test_unauthenticated_endpoints_are_rate_limited_per_address(client: TestClient) -> None:
    answers = Counter(client.post("/auth/webauthn/login-options").status_code for _ in range(35))
    assert answers == Counter({200: 30, 429: 5})
    tokens = Counter(
        client.post("/oauth/token", data={"grant_type": "client_credentials"}).status_code for _ in range(65)
    )
    assert tokens == Counter({401: 60, 429: 5})


def test_workers_share_login_counts_through_redis(sqlite_runtime: Runtime) -> None:
    import uuid as _uuid

    from carnet.identity.throttle import LimitsLoginThrottle

    prefix = f"carnet-test-{_uuid.uuid4().hex[:8]}"
    url = "redis://127.0.0.1:6379/0"
    first = LimitsLoginThrottle(url, key_prefix=prefix)
    second = LimitsLoginThrottle(url, key_prefix=prefix)  # another worker, same Redis
    try:
        for _ in range(5):
            assert second.blocked(username="shared", address="192.0.2.7") is None
            first.failed(username="shared", address="192.0.2.7")
        assert second.blocked(username="shared", address="192.0.2.7") is not None
        assert second.blocked(username="someone-else", address="192.0.2.8") is None
    finally:
        first.reset()


def test_an_attacker_cannot_lock_the_owner_out_from_another_address(sqlite_runtime: Runtime) -> None:
    person = make_person(sqlite_runtime, "owner")
    auth = Authenticator.of(sqlite_runtime)
    auth.sleep = lambda _s: None
    attacker = RequestContext(address="203.0.113.66", user_agent="attack")
    outcomes = []
    for _ in range(10):
        try:
            auth.log_in(
                LoginRequest(username="owner", password="guess guess guess", otp="1", context=attacker)
            )
        except LoginThrottled:
            outcomes.append("throttled")
        except AuthenticationRequired:
            outcomes.append("refused")
    assert outcomes == ["refused"] * 5 + ["throttled"] * 5
    desk = RequestContext(address="10.1.2.3", user_agent="ward PC")
    result = auth.log_in(
        LoginRequest(username="owner", password=person.password, otp=person.code(), context=desk)
    )
    assert result.actor.account_id == person.account_id
