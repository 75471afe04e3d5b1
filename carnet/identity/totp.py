"""TOTP (RFC 6238, via pyotp) with replay protection: each time step is accepted once."""

from __future__ import annotations

import datetime as dt
import hmac
import uuid

import pyotp

from carnet.crypto.keys import KeyProvider

# One step either side absorbs clock drift between the server and the phone.
DRIFT_STEPS = 1
ISSUER = "carnet"


def new_secret() -> str:
    return pyotp.random_base32()


def _context(device_id: uuid.UUID) -> str:
    return f"carnet/totp/{device_id}"


def wrap_secret(keys: KeyProvider, device_id: uuid.UUID, secret: str) -> tuple[str, bytes]:
    """Encrypt a secret under the key-encryption key, bound to its device row."""
    return keys.wrap(secret.encode(), context=_context(device_id))


def unwrap_secret(keys: KeyProvider, device_id: uuid.UUID, kek_id: str, wrapped: bytes) -> str:
    return keys.unwrap(kek_id, wrapped, context=_context(device_id)).decode()


def provisioning_uri(secret: str, *, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)


def matching_step(secret: str, code: str, *, at: dt.datetime, after_step: int | None) -> int | None:
    """The time step `code` belongs to, if valid and later than `after_step`; else None.

    Refusing steps at or before the last accepted one makes a code single use, including one
    seen over a shoulder or phished and replayed within its 30 seconds.
    """
    code = code.strip().replace(" ", "")
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(at)
    found: int | None = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        # Compare every candidate so the time taken does not depend on which one matched.
        if hmac.compare_digest(totp.generate_otp(step), code) and found is None:
            found = step
    if found is None or (after_step is not None and found <= after_step):
        return None
    return found
