"""The single-use guarantees rest on conditional UPDATEs and unique keys: checked on SQLite and
PostgreSQL alike."""

from __future__ import annotations

import pytest
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from joserfc.jwk import ECKey

from carnet.identity import oauth, service
from carnet.identity.authenticate import Authenticator, LoginRequest, RequestContext
from carnet.kernel import clock
from carnet.kernel.errors import AuthenticationRequired
from carnet.runtime import Runtime
from tests.identity.conftest import make_person


def test_totp_and_recovery_codes_are_single_use(runtime: Runtime, movable_clock: clock.MovableClock) -> None:
    person = make_person(runtime, "single.use")
    auth = Authenticator.of(runtime)
    auth.sleep = lambda _s: None
    code = person.code()
    result = auth.log_in(LoginRequest(username="single.use", password=person.password, otp=code))
    assert result.actor.account_id == person.account_id
    with pytest.raises(AuthenticationRequired):
        auth.log_in(LoginRequest(username="single.use", password=person.password, otp=code))
    with runtime.session_factory.begin() as session:
        codes = service.replace_recovery_codes(session, account_id=person.account_id)
    auth.log_in(LoginRequest(username="single.use", password=person.password, otp=codes[3]))
    with pytest.raises(AuthenticationRequired):
        auth.log_in(LoginRequest(username="single.use", password=person.password, otp=codes[3]))


def test_a_client_assertion_is_accepted_once(runtime: Runtime) -> None:
    key = ECKey.generate_key("P-384", parameters={"kid": "k"})
    with runtime.session_factory.begin() as session:
        oauth.register_client(
            session,
            client_id="pacs",
            name="PACS",
            jwks={"keys": [key.as_dict(private=False)]},
            allowed_scopes="system/ImagingStudy.read",
        )
    assertion = private_key_jwt_sign(
        key, "pacs", runtime.settings.origin + "/oauth/token", alg="ES384", expires_in=300
    )
    form = {
        "grant_type": "client_credentials",
        "scope": "system/ImagingStudy.read",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion.decode() if isinstance(assertion, bytes) else assertion,
    }
    context = RequestContext(address="192.0.2.1", user_agent="pacs")
    first = oauth.issue_token(runtime, form=form, context=context)
    assert first.status == 200
    actor = oauth.resolve_bearer(runtime, token=first.body["access_token"], context=context)
    assert actor.scopes == frozenset({"system/ImagingStudy.read"})
    assert oauth.issue_token(runtime, form=form, context=context).status == 401
