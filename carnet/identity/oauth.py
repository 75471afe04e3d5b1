"""OAuth 2 for API clients: SMART Backend Services (client_credentials + private_key_jwt).

Client authentication is Authlib's RFC 7523 client assertion, verified against the JWKS
registered for the client; each assertion's jti is accepted once. Access tokens are opaque
random strings (only their SHA-256 is stored), live at most 5 minutes and are checked against
the database on every request, so a revocation is immediate on every worker.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnsupportedGrantTypeError,
)
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import PRIVILEGED_ROLES, Role
from carnet.access.scopes import SCOPE, grants
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.identity.authenticate import RequestContext, actor_for, contained_message
from carnet.identity.models import AccessToken, Account, ApiClient, AuthorizationCode, UsedClientAssertion
from carnet.identity.service import roles_of
from carnet.identity.sessions import digest
from carnet.kernel import clock
from carnet.kernel.errors import (
    AccountContained,
    AuthenticationRequired,
    CarnetError,
    Conflict,
    Forbidden,
    InvalidInput,
)
from carnet.runtime import Runtime

TOKEN_LIFETIME = dt.timedelta(minutes=5)
# SMART Backend Services: servers support RS384 and ES384; RS256/ES256 are common too.
ALGORITHMS = ["RS384", "ES384", "RS256", "ES256"]
MAX_ASSERTION_LIFETIME = 300
BACKEND_CONTEXTS = ("system",)
APP_CONTEXTS = ("user", "patient")
AUTHORIZATION_CODE_LIFETIME = dt.timedelta(seconds=60)


def validate_scopes(scopes: str, *, contexts: tuple[str, ...] = BACKEND_CONTEXTS) -> list[str]:
    items = scopes.split()
    matches = [SCOPE.match(s) for s in items]
    bad = [
        s
        for s, m in zip(items, matches, strict=True)
        if m is None or s.endswith(".") or m.group(1) not in contexts
    ]
    if bad or not items:
        examples = " or ".join(f"{c}/Patient.read" for c in contexts)
        raise InvalidInput(f"scopes look like {examples} or {contexts[0]}/*.rs (SMART)")
    return items


def require_scope(actor: Actor, *, resource_type: str, action: str) -> None:
    """Refuse a token whose scopes do not cover `action` on `resource_type`.

    `action` is create, read, update, delete or search. Browser sessions (scopes None) pass:
    their roles decide at the gate.
    """
    if action not in ("create", "read", "update", "delete", "search"):
        raise InvalidInput(f"unknown action {action!r}")
    if actor.scopes is None:
        return
    if not any(grants(s, resource_type, action) for s in actor.scopes):
        raise Forbidden(f"the access token's scopes do not allow {action} on {resource_type}")


def smart_configuration(origin: str) -> dict[str, Any]:
    """SMART discovery (`/.well-known/smart-configuration`): what this server really does.

    Backend Services (private_key_jwt, system/ scopes) and apps by authorization code with
    PKCE S256 (user/ and patient/ scopes, v1 and v2 syntax). Launch contexts, openid and
    fhirUser are not offered, so they are not declared.
    """
    base = origin.rstrip("/")
    return {
        "issuer": base,
        "token_endpoint": base + "/oauth/token",
        "authorization_endpoint": base + "/oauth/authorize",
        "revocation_endpoint": base + "/oauth/revoke",
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "response_types_supported": ["code"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["system/*.rs", "system/*.cruds", "user/*.rs", "patient/*.rs"],
        "capabilities": [
            "client-confidential-asymmetric",
            "client-public",
            "permission-user",
            "permission-patient",
            "permission-v1",
            "permission-v2",
        ],
    }


# -- clients ------------------------------------------------------------------------------
def _check_redirect_uri(uri: str) -> str:
    parts = urlsplit(uri)
    local = parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1")
    if not (parts.scheme == "https" or local) or not parts.hostname or parts.fragment:
        raise InvalidInput(
            "a redirect URI is https:// (or http://localhost for native apps), without #fragment"
        )
    return uri


def register_client(
    session: Session,
    *,
    client_id: str,
    name: str,
    jwks: dict[str, Any] | None,
    allowed_scopes: str,
    facility_id: uuid.UUID | None = None,
    kind: str = "backend",
    redirect_uris: str = "",
) -> uuid.UUID:
    """Register an API client; it never holds a shared secret.

    A backend client is known by its public keys (JWKS) and uses system/ scopes. An app
    (authorization code + PKCE) is known by its exact redirect URIs and uses user/ or patient/
    scopes, acting for the person who authorizes it.
    """
    if not re.fullmatch(r"[A-Za-z0-9._-]{3,100}", client_id):
        raise InvalidInput("a client id is 3 to 100 letters, digits, '.', '_' or '-'")
    if kind not in ("backend", "app"):
        raise InvalidInput("a client is a 'backend' service or an 'app'")
    public_jwks = ""
    if kind == "backend" or jwks:
        try:
            keys = KeySet.import_key_set(jwks or {})  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise InvalidInput("the JWKS does not hold usable public keys") from None
        if not keys.keys or any(k.is_private for k in keys.keys):
            raise InvalidInput("register public keys only (the JWKS holds a private key)")
        public_jwks = json.dumps(keys.as_dict(private=False))
    validate_scopes(allowed_scopes, contexts=BACKEND_CONTEXTS if kind == "backend" else APP_CONTEXTS)
    uris = [_check_redirect_uri(u) for u in redirect_uris.split()]
    if kind == "app" and not uris:
        raise InvalidInput("an app needs at least one redirect URI")
    if session.scalar(select(ApiClient.id).where(ApiClient.client_id == client_id)) is not None:
        raise Conflict("this client id is taken")
    row = ApiClient(
        client_id=client_id,
        name=name[:200],
        jwks=public_jwks,
        allowed_scopes=" ".join(allowed_scopes.split()),
        facility_id=facility_id,
        status="active",
        created_at=clock.now(),
        kind=kind,
        redirect_uris=" ".join(uris),
    )
    session.add(row)
    session.flush()
    return row.id


def revoke_client_tokens(
    session: Session, *, client_id: str, reason: str, actor: Actor, audit: AuditWriter
) -> int:
    """Revoke every live token of a client (containment, or the client's own request)."""
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
    if client is None:
        return 0
    count = session.execute(
        update(AccessToken)
        .where(
            AccessToken.client_pk == client.id,
            AccessToken.revoked_at.is_(None),
            AccessToken.expires_at > clock.now(),
        )
        .values(revoked_at=clock.now())
    ).rowcount  # type: ignore[attr-defined]
    audit.append(
        session,
        AuditRecord(
            kind=AuditKind.TOKEN_REVOKED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            resource_type="ApiClient",
            resource_ids=(client_id,),
            detail={"reason": reason[:200], "tokens": str(count)},
        ),
    )
    return int(count)


# -- token endpoint -----------------------------------------------------------------------
@dataclass
class _TokenRequest:
    """The shape Authlib's client-assertion check reads: a form and, after it, the client."""

    form: dict[str, str]
    client: ApiClient | None = None


class SmartClientAssertion(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 private_key_jwt as SMART Backend Services profiles it."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, session: Session, token_url: str) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self._session = session
        self._token_url = token_url

    def get_audiences(self) -> list[str]:
        return [self._token_url]

    def resolve_client_public_key(self, client: ApiClient) -> KeySet:
        return KeySet.import_key_set(json.loads(client.jwks))

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ALGORITHMS)
        except JoseError as exc:
            raise InvalidClientError(description=exc.description) from exc
        self.verify_claims(token.claims)
        return token.claims

    def verify_claims(self, claims: Any) -> None:
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp - time.time() > MAX_ASSERTION_LIFETIME + self.leeway:
            raise InvalidClientError(description="the client assertion must expire within 5 minutes")
        super().verify_claims(claims)

    def validate_jti(self, claims: Any, jti: Any) -> bool:
        if not isinstance(jti, str) or not 8 <= len(jti) <= 200:
            return False
        now = clock.now()
        self._session.execute(delete(UsedClientAssertion).where(UsedClientAssertion.expires_at < now))
        try:
            with self._session.begin_nested():
                self._session.add(
                    UsedClientAssertion(
                        jti=f"{claims['sub']}:{jti}"[:200],
                        client_id=str(claims["sub"])[:100],
                        expires_at=now + dt.timedelta(seconds=MAX_ASSERTION_LIFETIME * 2),
                    )
                )
        except IntegrityError:
            return False  # replayed assertion
        return True

    def authenticate_client(self, client: ApiClient) -> ApiClient:
        if client.status != "active":
            raise InvalidClientError(description="this client is suspended")
        return client


def _client_actor(client: ApiClient, context: RequestContext, scopes: frozenset[str] | None) -> Actor:
    return Actor(
        kind=ActorKind.CLIENT,
        username=f"client:{client.client_id}",
        roles=frozenset({Role.API_CLIENT}),
        client_id=client.client_id,
        facility_id=client.facility_id,
        address=context.address,
        user_agent=context.user_agent,
        scopes=scopes,
    )


@dataclass(frozen=True)
class TokenAnswer:
    status: int
    body: dict[str, Any]


def _backend_grant(
    session: Session, form: dict[str, str], request: _TokenRequest, token_url: str
) -> tuple[ApiClient, list[str], uuid.UUID | None]:
    auth = SmartClientAssertion(session, token_url)

    def query_client(client_id: str) -> ApiClient | None:
        return session.scalar(
            select(ApiClient).where(ApiClient.client_id == client_id, ApiClient.kind == "backend")
        )

    client = auth(query_client, request)
    if client is None:
        raise InvalidClientError(description="authenticate with a private_key_jwt client assertion")
    requested = (form.get("scope") or "").split()
    if not requested:
        raise InvalidScopeError(description="ask for scopes, e.g. system/Patient.read")
    refused = [s for s in requested if s not in set(client.allowed_scopes.split())]
    if refused:
        raise InvalidScopeError(description="this client may not have: " + " ".join(refused[:10]))
    return client, requested, None


def _code_grant(
    session: Session, form: dict[str, str], request: _TokenRequest
) -> tuple[ApiClient, list[str], uuid.UUID | None]:
    """Redeem an authorization code: once, within 60 s, by its client, with its PKCE verifier."""
    client = session.scalar(
        select(ApiClient).where(ApiClient.client_id == form.get("client_id", ""), ApiClient.kind == "app")
    )
    if client is None or client.status != "active":
        raise InvalidClientError(description="unknown or suspended app")
    request.client = client
    code = session.scalar(
        select(AuthorizationCode).where(AuthorizationCode.code_digest == digest(form.get("code") or ""))
    )
    verifier = form.get("code_verifier") or ""
    now = clock.now()
    if (
        code is None
        or code.client_pk != client.id
        or code.redirect_uri != form.get("redirect_uri")
        or code.expires_at <= now
        or not 43 <= len(verifier) <= 128
        or not hmac.compare_digest(create_s256_code_challenge(verifier), code.code_challenge)
    ):
        raise InvalidGrantError(
            description="the code is not valid for this client, redirect URI and verifier"
        )
    won = session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.id == code.id, AuthorizationCode.used_at.is_(None))
        .values(used_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if won != 1:
        # A second redemption means the code leaked: revoke what the first one got (RFC 6749 4.1.2).
        session.execute(
            update(AccessToken)
            .where(AccessToken.client_pk == client.id, AccessToken.account_id == code.account_id)
            .where(AccessToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        raise InvalidGrantError(description="the code was already used")
    return client, code.scopes.split(), code.account_id


def issue_token(runtime: Runtime, *, form: dict[str, str], context: RequestContext) -> TokenAnswer:
    """The token endpoint: authenticate the client, grant the scopes it may have, audit."""
    token_url = runtime.settings.origin.rstrip("/") + "/oauth/token"
    with runtime.session_factory.begin() as session:
        request = _TokenRequest(form=form)
        asserted = str(form.get("client_id") or "unknown")[:100]
        try:
            grant_type = form.get("grant_type")
            if grant_type == "client_credentials":
                client, requested, account_id = _backend_grant(session, form, request, token_url)
            elif grant_type == "authorization_code":
                client, requested, account_id = _code_grant(session, form, request)
            else:
                raise UnsupportedGrantTypeError(str(grant_type)[:40])
        except OAuth2Error as exc:
            client_row = request.client
            actor = (
                _client_actor(client_row, context, None)
                if client_row is not None
                else Actor(
                    kind=ActorKind.CLIENT,
                    username=f"client:{asserted}",
                    roles=frozenset(),
                    client_id=asserted,
                    address=context.address,
                    user_agent=context.user_agent,
                )
            )
            runtime.audit.append(
                session,
                AuditRecord(
                    kind=AuditKind.TOKEN_ISSUED,
                    outcome=Outcome.DENIED,
                    actor=actor,
                    detail={"error": str(exc.error), "reason": str(exc.description or "")[:200]},
                ),
            )
            status = 401 if isinstance(exc, InvalidClientError) else 400
            description = exc.description or exc.get_error_description()
            return TokenAnswer(status, {"error": exc.error, "error_description": description})
        except (InvalidRequestError, ValueError, TypeError, KeyError):
            return TokenAnswer(400, {"error": "invalid_request", "error_description": "malformed request"})
        token = secrets.token_urlsafe(32)
        now = clock.now()
        session.add(
            AccessToken(
                token_digest=digest(token),
                client_pk=client.id,
                account_id=account_id,
                scopes=" ".join(requested),
                issued_at=now,
                expires_at=now + TOKEN_LIFETIME,
            )
        )
        detail = {"scope": " ".join(requested)[:400], "grant": str(form.get("grant_type"))}
        if account_id is not None:
            detail["for_account"] = str(account_id)
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.TOKEN_ISSUED,
                outcome=Outcome.SUCCESS,
                actor=_client_actor(client, context, frozenset(requested)),
                detail=detail,
            ),
        )
    return TokenAnswer(
        200,
        {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(TOKEN_LIFETIME.total_seconds()),
            "scope": " ".join(requested),
        },
    )


# -- authorization code + PKCE (user-facing apps) ------------------------------------------
class AuthorizationRefused(CarnetError):
    """An authorization request to answer at the app's redirect URI with an OAuth error."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


@dataclass(frozen=True)
class AuthorizationRequest:
    client_id: str
    client_name: str
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str
    code_challenge: str


def check_authorization_request(session: Session, params: dict[str, str]) -> AuthorizationRequest:
    """Validate /oauth/authorize parameters.

    A wrong client or redirect URI raises InvalidInput (answered here, never redirected: an open
    redirector would help phishing); anything else raises AuthorizationRefused for the app.
    """
    client = session.scalar(
        select(ApiClient).where(ApiClient.client_id == params.get("client_id", ""), ApiClient.kind == "app")
    )
    redirect_uri = params.get("redirect_uri", "")
    if client is None or client.status != "active" or redirect_uri not in client.redirect_uris.split():
        raise InvalidInput("unknown app, or a redirect URI it did not register")
    if params.get("response_type") != "code":
        raise AuthorizationRefused("unsupported_response_type", "only response_type=code is supported")
    challenge = params.get("code_challenge", "")
    if params.get("code_challenge_method") != "S256" or not re.fullmatch(r"[A-Za-z0-9_-]{43,128}", challenge):
        raise AuthorizationRefused("invalid_request", "PKCE with code_challenge_method=S256 is required")
    state = params.get("state", "")
    if not 8 <= len(state) <= 500:
        raise AuthorizationRefused("invalid_request", "a state of 8 to 500 characters is required")
    scopes = params.get("scope", "").split()
    allowed = set(client.allowed_scopes.split())
    if not scopes or any(s not in allowed for s in scopes):
        raise AuthorizationRefused("invalid_scope", "ask for scopes this app registered")
    return AuthorizationRequest(
        client_id=client.client_id,
        client_name=client.name,
        redirect_uri=redirect_uri,
        scopes=tuple(scopes),
        state=state,
        code_challenge=challenge,
    )


def grant_code(session: Session, *, request: AuthorizationRequest, actor: Actor, audit: AuditWriter) -> str:
    """The person approved: a one-time code for the app (60 s), audited."""
    if actor.account_id is None or actor.kind not in (ActorKind.STAFF, ActorKind.PATIENT):
        raise Forbidden("only a signed-in person authorizes an app")
    if actor.is_privileged:
        # Administrators administer: their powers are not lent to third-party apps.
        raise Forbidden("privileged accounts cannot authorize apps")
    if actor.kind != ActorKind.PATIENT and any(s.startswith("patient/") for s in request.scopes):
        raise AuthorizationRefused("invalid_scope", "patient/ scopes are for a patient's own account")
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == request.client_id))
    if client is None:
        raise InvalidInput("unknown app")
    code = secrets.token_urlsafe(32)
    session.add(
        AuthorizationCode(
            code_digest=digest(code),
            client_pk=client.id,
            account_id=actor.account_id,
            scopes=" ".join(request.scopes),
            redirect_uri=request.redirect_uri,
            code_challenge=request.code_challenge,
            expires_at=clock.now() + AUTHORIZATION_CODE_LIFETIME,
        )
    )
    audit.append(
        session,
        AuditRecord(
            kind=AuditKind.APP_AUTHORIZED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            resource_type="ApiClient",
            resource_ids=(client.client_id,),
            detail={"scope": " ".join(request.scopes)[:400]},
        ),
    )
    return code


def revoke_token(runtime: Runtime, *, actor: Actor, token: str) -> bool:
    """RFC 7009 for a client's own token (the caller already authenticated as that client)."""
    with runtime.session_factory.begin() as session:
        row = session.scalar(select(AccessToken).where(AccessToken.token_digest == digest(token)))
        client = session.get(ApiClient, row.client_pk) if row is not None else None
        if row is None or client is None or client.client_id != actor.client_id or row.revoked_at is not None:
            return False  # RFC 7009: answer 200 either way
        row.revoked_at = clock.now()
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.TOKEN_REVOKED, outcome=Outcome.SUCCESS, actor=actor, detail={"tokens": "1"}
            ),
        )
        return True


def resolve_bearer(runtime: Runtime, *, token: str, context: RequestContext) -> Actor:
    """The Actor of a bearer token; AuthenticationRequired when unknown, expired or revoked."""
    with runtime.session_factory() as session:
        row = session.scalar(select(AccessToken).where(AccessToken.token_digest == digest(token)))
        client = session.get(ApiClient, row.client_pk) if row is not None else None
        if row is None or client is None or row.revoked_at is not None or row.expires_at <= clock.now():
            raise AuthenticationRequired("the access token is not valid (unknown, expired or revoked)")
        if client.status != "active":
            raise AuthenticationRequired("this API client is suspended")
        scopes = frozenset(row.scopes.split())
        if row.account_id is None:
            return _client_actor(client, context, scopes)
        # An app acts for a person: their roles and standing now, narrowed by the token's scopes.
        account = session.get(Account, row.account_id)
        if account is None or account.status == "disabled":
            raise AuthenticationRequired("the access token is not valid (unknown, expired or revoked)")
        if account.status == "suspended":
            raise AccountContained(contained_message(account, runtime.settings.security_contact))
        roles = roles_of(session, account=account)
        if roles & PRIVILEGED_ROLES:
            raise AuthenticationRequired("privileged accounts cannot act through apps")
        person = actor_for(account, roles, row=None, context=context)
        return replace(person, client_id=client.client_id, scopes=scopes)
