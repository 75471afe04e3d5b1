"""Passwords: Argon2id with OWASP parameters, NIST SP 800-63B acceptance rules."""

from __future__ import annotations

import functools

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from zxcvbn import zxcvbn
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from carnet.kernel.errors import InvalidInput

MIN_LENGTH = 12
# NIST allows a generous maximum; Argon2 is cheap in length but requests are not.
MAX_LENGTH = 128
# zxcvbn score (0-4) below which a password is guessable from dictionaries and patterns.
MIN_STRENGTH = 3

# OWASP Password Storage Cheat Sheet: Argon2id, m=19 MiB, t=2, p=1.
HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16, type=Type.ID)

# Verified against for unknown usernames so that they cost the same time as known ones.
DUMMY_HASH = HASHER.hash("carnet-dummy-password-for-timing-equality")


@functools.lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    # zxcvbn ships the 30,000 most common passwords of public breach corpora.
    return frozenset(FREQUENCY_LISTS["passwords"])


def check_policy(password: str, *, context: tuple[str, ...] = ()) -> None:
    """Refuse a password NIST SP 800-63B says to refuse; no composition rules.

    `context` holds words specific to the account (username, display name) that must not
    make the password guessable. Raises InvalidInput with a message safe to show.
    """
    if len(password) < MIN_LENGTH:
        raise InvalidInput(f"the password must be at least {MIN_LENGTH} characters long")
    if len(password) > MAX_LENGTH:
        raise InvalidInput(f"the password must be at most {MAX_LENGTH} characters long")
    if password.lower() in _common_passwords():
        raise InvalidInput("this password is in a list of commonly used or breached passwords")
    words = [w for w in context if w]
    if zxcvbn(password, user_inputs=words)["score"] < MIN_STRENGTH:
        raise InvalidInput(
            "this password is too easy to guess (common words, names, sequences or repetitions); "
            "a longer phrase of unrelated words works well"
        )


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant work whether or not there is a stored hash (unknown accounts use the dummy)."""
    try:
        return HASHER.verify(stored_hash or DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when the hash was made with other parameters than today's (rehash at next login)."""
    try:
        return HASHER.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True
