"""OAuth 2 for API clients: SMART Backend Services (client_credentials + private_key_jwt).

Client authentication is Authlib's RFC 7523 client assertion, verified against the JWKS
registered for the client; each assertion's jti is accepted once. Access tokens are opaque
random strings (only their SHA-256 is stored), live at most 5 minutes and are checked against
the database on every request, so a revocation is immediate on every worker.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnsupportedGrantTypeError,
)
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.identity.authenticate import RequestContext
from carnet.identity.models import AccessToken, ApiClient, UsedClientAssertion
from carnet.identity.sessions import digest
from carnet.kernel import clock
from carnet.kernel.errors import AuthenticationRequired, Conflict, Forbidden, InvalidInput
from carnet.runtime import Runtime

TOKEN_LIFETIME = dt.timedelta(minutes=5)
# SMART Backend Services: servers support RS384 and ES384; RS256/ES256 are common too.
ALGORITHMS = ["RS384", "ES384", "RS256", "ES256"]
MAX_ASSERTION_LIFETIME = 300
# SMART v1/v2 scopes for a system: system/<Resource or *>.<read|write|*|cruds>
SCOPE = re.compile(r"^system/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*|c?r?u?d?s?)$")


def validate_scopes(scopes: str) -> list[str]:
    items = scopes.split()
    bad = [s for s in items if not SCOPE.match(s) or s.endswith(".")]
    if bad or not items:
        raise InvalidInput("scopes look like system/Patient.read or system/*.rs (SMART)")
    return items


def _grants(scope: str, resource_type: str, action: str) -> bool:
    match = SCOPE.match(scope)
    if match is None:
        return False
    resource, permission = match.groups()
    if resource not in ("*", resource_type):
        return False
    if permission == "*":
        return True
    if permission == "read":
        return action in ("read", "search")
    if permission == "write":
        return action in ("create", "update", "delete")
    letter = {"create": "c", "read": "r", "update": "u", "delete": "d", "search": "s"}[action]
    return letter in permission


def require_scope(actor: Actor, *, resource_type: str, action: str) -> None:
    """Refuse a token whose scopes do not cover `action` on `resource_type`.

    `action` is create, read, update, delete or search. Browser sessions (scopes None) pass:
    their roles decide at the gate.
    """
    if action not in ("create", "read", "update", "delete", "search"):
        raise InvalidInput(f"unknown action {action!r}")
    if actor.scopes is None:
        return
    if not any(_grants(s, resource_type, action) for s in actor.scopes):
        raise Forbidden(f"the access token's scopes do not allow {action} on {resource_type}")


# -- clients ------------------------------------------------------------------------------
def register_client(
    session: Session,
    *,
    client_id: str,
    name: str,
    jwks: dict[str, Any],
    allowed_scopes: str,
    facility_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Register an API client by its public keys (JWKS); it never holds a shared secret."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{3,100}", client_id):
        raise InvalidInput("a client id is 3 to 100 letters, digits, '.', '_' or '-'")
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError):
        raise InvalidInput("the JWKS does not hold usable public keys") from None
    if not keys.keys or any(k.is_private for k in keys.keys):
        raise InvalidInput("register public keys only (the JWKS holds a private key)")
    validate_scopes(allowed_scopes)
    if session.scalar(select(ApiClient.id).where(ApiClient.client_id == client_id)) is not None:
        raise Conflict("this client id is taken")
    row = ApiClient(
        client_id=client_id,
        name=name[:200],
        jwks=json.dumps(keys.as_dict(private=False)),
        allowed_scopes=" ".join(allowed_scopes.split()),
        facility_id=facility_id,
        status="active",
        created_at=clock.now(),
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


def issue_token(runtime: Runtime, *, form: dict[str, str], context: RequestContext) -> TokenAnswer:
    """The token endpoint: authenticate the client, grant the scopes it may have, audit."""
    token_url = runtime.settings.origin.rstrip("/") + "/oauth/token"
    with runtime.session_factory.begin() as session:
        request = _TokenRequest(form=form)
        asserted = str(form.get("client_id") or "unknown")[:100]
        try:
            if form.get("grant_type") != "client_credentials":
                raise UnsupportedGrantTypeError(str(form.get("grant_type"))[:40])
            auth = SmartClientAssertion(session, token_url)

            def query_client(client_id: str) -> ApiClient | None:
                return session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))

            client = auth(query_client, request)
            if client is None:
                raise InvalidClientError(description="authenticate with a private_key_jwt client assertion")
            asserted = client.client_id
            requested = (form.get("scope") or "").split()
            allowed = set(client.allowed_scopes.split())
            if not requested:
                raise InvalidScopeError(description="ask for scopes, e.g. system/Patient.read")
            refused = [s for s in requested if s not in allowed]
            if refused:
                raise InvalidScopeError(description="this client may not have: " + " ".join(refused[:10]))
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
                scopes=" ".join(requested),
                issued_at=now,
                expires_at=now + TOKEN_LIFETIME,
            )
        )
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.TOKEN_ISSUED,
                outcome=Outcome.SUCCESS,
                actor=_client_actor(client, context, frozenset(requested)),
                detail={"scope": " ".join(requested)[:400]},
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
        return _client_actor(client, context, frozenset(row.scopes.split()))
