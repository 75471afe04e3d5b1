from __future__ import annotations

import pytest
from sqlalchemy import select

from carnet.identity import passwords, service, totp
from carnet.identity.models import Account, TotpDevice
from carnet.kernel.errors import Conflict, InvalidInput
from carnet.runtime import Runtime

STRONG = "violet tram escapes quietly"


def test_create_account_hashes_with_argon2id_and_wraps_totp(runtime: Runtime) -> None:
    secret = totp.new_secret()
    with runtime.session_factory.begin() as session:
        account_id = service.create_account(
            session,
            username="a.martin",
            display_name="Alice Martin",
            kind="staff",
            password=STRONG,
            totp_secret=secret,
        )
    with runtime.session_factory() as session:
        account = session.get_one(Account, account_id)
        assert account.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert passwords.verify_password(account.password_hash, STRONG)
        device = session.scalars(select(TotpDevice).where(TotpDevice.account_id == account_id)).one()
        assert device.confirmed_at is not None
        assert secret.encode() not in device.secret_wrapped
        assert totp.unwrap_secret(runtime.keys, device.id, device.kek_id, device.secret_wrapped) == secret


@pytest.mark.parametrize(
    "password",
    ["short pass", "password1234", "qwerty123456", "aaaaaaaaaaaaaaaa", "a.martin2024!"],
)
def test_weak_passwords_are_refused_and_nothing_is_stored(sqlite_runtime: Runtime, password: str) -> None:
    with pytest.raises(InvalidInput), sqlite_runtime.session_factory.begin() as session:
        service.create_account(
            session, username="a.martin", display_name="Alice Martin", kind="staff", password=password
        )
    with sqlite_runtime.session_factory() as session:
        assert session.scalars(select(Account)).all() == []


def test_no_composition_rules_a_long_lowercase_phrase_is_fine() -> None:
    passwords.check_policy("lantern orchard pebble cinnamon")


def test_duplicate_username_is_a_conflict(sqlite_runtime: Runtime) -> None:
    with sqlite_runtime.session_factory.begin() as session:
        service.create_account(session, username="bob", display_name="Bob", kind="staff", password=STRONG)
    with pytest.raises(Conflict), sqlite_runtime.session_factory.begin() as session:
        service.create_account(session, username="bob", display_name="Bob", kind="staff", password=STRONG)


def test_rehash_is_needed_when_parameters_change() -> None:
    from argon2 import PasswordHasher

    old = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(STRONG)
    assert passwords.needs_rehash(old)
    assert not passwords.needs_rehash(passwords.hash_password(STRONG))
