"""Step-up proofs for tests that exercise an access-widening action rather than the proof itself.

`prove_session` leaves what POST /auth/step-up/proof leaves after a verified passkey assertion:
a proof row for that session, now. The ceremony itself (Chromium's virtual authenticator, a
challenge bound to the session, replay, another session's assertion, staleness) is tested in
tests/web/test_stepup_browser.py and tests/web/test_stepup.py.
"""

from __future__ import annotations

import hashlib
import uuid

import sqlalchemy as sa
from fastapi.testclient import TestClient

from carnet.identity.models import AuthSession, StepUpProof
from carnet.kernel import clock
from carnet.runtime import Runtime


def prove_session(runtime: Runtime, session_id: uuid.UUID) -> None:
    now = clock.now()
    with runtime.session_factory.begin() as session:
        row = session.get_one(AuthSession, session_id)
        session.add(
            StepUpProof(
                session_id=session_id,
                account_id=row.account_id,
                challenge=None,
                issued_at=now,
                expires_at=now,
                consumed_at=now,
                proven_at=now,
                method="webauthn",
            )
        )


def session_of(client: TestClient, runtime: Runtime, cookie: str = "carnet_session") -> uuid.UUID:
    token = client.cookies.get(cookie)
    assert token, "the client holds no session cookie"
    digest = hashlib.sha256(token.encode()).hexdigest()
    with runtime.session_factory() as session:
        found = session.scalar(sa.select(AuthSession.id).where(AuthSession.token_digest == digest))
    assert found is not None
    return found


def prove(client: TestClient, runtime: Runtime) -> None:
    """A passkey proof in the client's current session (as a passkey step-up leaves it)."""
    prove_session(runtime, session_of(client, runtime))
