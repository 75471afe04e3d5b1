"""A token without the right SMART scope is refused by the FHIR API, seen through fhirpy."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, ForbiddenError
from joserfc.jwk import ECKey
from sqlalchemy import select

from carnet.app import create_app
from carnet.audit.models import AuditEvent
from carnet.identity import oauth
from carnet.identity.authenticate import RequestContext
from carnet.runtime import Runtime


@pytest.fixture
def server(sqlite_runtime: Runtime) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    app_server = uvicorn.Server(
        uvicorn.Config(create_app(sqlite_runtime), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=app_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not app_server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app_server.started
    yield f"http://127.0.0.1:{port}"
    app_server.should_exit = True
    thread.join(timeout=10)


def _token(runtime: Runtime, key: ECKey, scope: str) -> str:
    assertion = private_key_jwt_sign(
        key, "lab-system", runtime.settings.origin + "/oauth/token", alg="ES384", expires_in=300
    )
    answer = oauth.issue_token(
        runtime,
        form={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion.decode() if isinstance(assertion, bytes) else assertion,
        },
        context=RequestContext(address="127.0.0.1", user_agent="test"),
    )
    assert answer.status == 200, answer.body
    return str(answer.body["access_token"])


def test_a_token_without_the_patient_scope_is_refused(server: str, sqlite_runtime: Runtime) -> None:
    key = ECKey.generate_key("P-384", parameters={"kid": "k"})
    with sqlite_runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="lab-system",
            name="Lab",
            jwks={"keys": [key.as_dict(private=False)]},
            allowed_scopes="system/Observation.rs system/Patient.read",
        )
    observations_only = _token(sqlite_runtime, key, "system/Observation.rs")
    fhir = SyncFHIRClient(f"{server}/fhir", authorization=f"Bearer {observations_only}")
    with pytest.raises(ForbiddenError) as refused:
        fhir.resources("Patient").search(identifier="1234567890123").fetch()
    assert "scopes do not allow search on Patient" in str(refused.value)
    with pytest.raises(ForbiddenError):
        fhir.reference("Patient", "00000000-0000-0000-0000-000000000001").to_resource()

    # A made-up token is not a session at all.
    stranger = SyncFHIRClient(f"{server}/fhir", authorization="Bearer not-a-token")
    with pytest.raises(AuthorizationError):
        stranger.resources("Observation").search(patient="x").fetch()

    # Token issue is audited with the scopes granted; the refusal names the client.
    with sqlite_runtime.session_factory() as session:
        issued = session.scalars(select(AuditEvent).where(AuditEvent.kind == "client:token:issued")).all()
    assert [e.client_id for e in issued] == ["lab-system"]
