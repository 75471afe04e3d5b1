"""OAuth 2 for API clients: SMART Backend Services (client_credentials + private_key_jwt) and
SMART App Launch (authorization code + PKCE S256, EHR and standalone launch, openid fhirUser,
rotating refresh tokens).

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
from urllib.parse import urlencode, urlsplit

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

from carnet.access import scopes as smart
from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import PRIVILEGED_ROLES, Role
from carnet.access.scopes import grants
from carnet.audit.interfaces import AuditKind, AuditRecord, AuditWriter, Outcome
from carnet.identity import oidc
from carnet.identity.authenticate import RequestContext, actor_for, contained_message
from carnet.identity.models import (
    AccessToken,
    Account,
    ApiClient,
    AuthorizationCode,
    RefreshToken,
    SmartLaunch,
    UsedClientAssertion,
)
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
# An EHR launch is used within minutes of the click in the chart, once.
LAUNCH_LIFETIME = dt.timedelta(minutes=5)
ID_TOKEN_LIFETIME = dt.timedelta(minutes=5)
# online_access: as long as a working session might last; offline_access: one day, not more.
REFRESH_LIFETIME = {smart.ONLINE: dt.timedelta(hours=1), smart.OFFLINE: dt.timedelta(hours=24)}


def validate_scopes(scopes: str, *, contexts: tuple[str, ...] = BACKEND_CONTEXTS) -> list[str]:
    """Scopes a client may register: resource scopes of its contexts (system/ for a backend,
    user/ and patient/ for an app, v1 or v2, granular ?category= on Observation and Condition)
    and, for an app, the launch, identity and refresh scopes."""
    items = scopes.split()
    app = contexts != BACKEND_CONTEXTS
    bad = []
    for item in items:
        parsed = smart.parse(item)
        if parsed is not None and parsed.context in contexts:
            continue
        if app and item in smart.CONTEXT_SCOPES:
            continue
        bad.append(item)
    if bad or not any(smart.parse(s) for s in items):
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
    """SMART discovery (`/.well-known/smart-configuration`): exactly what this server does.

    Backend Services (private_key_jwt, system/ scopes); apps by authorization code with PKCE
    S256, public or confidential with their own keys (private_key_jwt: no shared secret), EHR
    launch from the chart and standalone launch with a patient picker, v1 and v2 scopes with
    granular ?category=, openid fhirUser (RS256 id_token) and rotating refresh tokens.
    """
    base = origin.rstrip("/")
    return {
        "issuer": base,
        "jwks_uri": base + "/oauth/jwks",
        "token_endpoint": base + "/oauth/token",
        "authorization_endpoint": base + "/oauth/authorize",
        "revocation_endpoint": base + "/oauth/revoke",
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types_supported": ["code"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "id_token_signing_alg_values_supported": [oidc.ALGORITHM],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": [
            "openid",
            "fhirUser",
            "launch",
            "launch/patient",
            "offline_access",
            "online_access",
            "patient/*.rs",
            "patient/*.read",
            "patient/Observation.rs?category=laboratory",
            "patient/Observation.rs?category=vital-signs",
            "patient/Condition.rs?category=problem-list-item",
            "user/*.rs",
            "user/*.read",
            "system/*.rs",
            "system/*.cruds",
        ],
        "capabilities": [
            "launch-ehr",
            "launch-standalone",
            "client-public",
            "client-confidential-asymmetric",
            "context-ehr-patient",
            "context-standalone-patient",
            "sso-openid-connect",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
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
    launch_uri: str = "",
    export_purpose: str = "",
) -> uuid.UUID:
    """Register an API client; it never holds a shared secret.

    A backend client is known by its public keys (JWKS) and uses system/ scopes. An app
    (authorization code + PKCE) is known by its exact redirect URIs and uses user/ or patient/
    scopes, acting for the person who authorizes it: public (PKCE only), or confidential when
    it registers public keys (it then authenticates with private_key_jwt too). Its launch URI
    is where the chart's "launch app" action sends the browser (EHR launch).
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
    launch = _check_redirect_uri(launch_uri) if launch_uri else None
    if launch and kind != "app":
        raise InvalidInput("only an app has a launch URI")
    purpose = check_export_purpose(export_purpose) if export_purpose.strip() else None
    if purpose and kind != "backend":
        raise InvalidInput("only a backend client registers a purpose of use for bulk exports")
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
        launch_uri=launch,
        export_purpose=purpose,
    )
    session.add(row)
    session.flush()
    return row.id


def check_export_purpose(purpose: str) -> str:
    """A backend client's purpose of use for its bulk exports: what its kick-offs state when
    they name none (10 to 1000 characters, as an export request's purpose)."""
    text = " ".join(purpose.split())
    if not 10 <= len(text) <= 1000:
        raise InvalidInput("a purpose of use for exports is 10 to 1000 characters")
    return text


def set_export_purpose(session: Session, *, client_id: str, purpose: str) -> None:
    """Register (or replace) a backend client's purpose of use for bulk exports."""
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
    if client is None or client.kind != "backend":
        raise InvalidInput(f"no backend client {client_id[:100]!r}")
    client.export_purpose = check_export_purpose(purpose)


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
    session.execute(  # and its apps' refresh tokens: nothing mints a new access token after this
        update(RefreshToken)
        .where(RefreshToken.client_pk == client.id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=clock.now())
    )
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


@dataclass(frozen=True)
class _Grant:
    """What the token endpoint issues for: the client, its scopes, and for an app the person,
    the launch patient, the OpenID nonce and the refresh family it continues."""

    client: ApiClient
    scopes: list[str]
    account_id: uuid.UUID | None = None
    patient_id: uuid.UUID | None = None
    nonce: str | None = None
    family_id: uuid.UUID | None = None
    family_expires_at: dt.datetime | None = None


def _backend_grant(session: Session, form: dict[str, str], request: _TokenRequest, token_url: str) -> _Grant:
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
    return _Grant(client, requested)


def _app_client(session: Session, form: dict[str, str], request: _TokenRequest, token_url: str) -> ApiClient:
    """The app at the token endpoint. A confidential app (it registered keys) proves them with a
    private_key_jwt assertion; a public one names itself, PKCE or its refresh token binding it."""

    def query_client(client_id: str) -> ApiClient | None:
        return session.scalar(
            select(ApiClient).where(ApiClient.client_id == client_id, ApiClient.kind == "app")
        )

    named = form.get("client_id") or ""
    client: ApiClient | None
    if form.get("client_assertion"):
        client = SmartClientAssertion(session, token_url)(query_client, request)
        if client is None or (named and client.client_id != named):
            raise InvalidClientError(description="the client assertion does not name this app")
    else:
        client = query_client(named)
        if client is None or client.status != "active":
            raise InvalidClientError(description="unknown or suspended app")
        request.client = client
        if client.jwks:
            raise InvalidClientError(
                description="this app is confidential: authenticate with private_key_jwt"
            )
    request.client = client
    return client


def _revoke_grants_of(
    session: Session, *, client_pk: uuid.UUID, account_id: uuid.UUID, now: dt.datetime
) -> None:
    """A leaked code or refresh token: everything the app holds for this person ends."""
    session.execute(
        update(AccessToken)
        .where(AccessToken.client_pk == client_pk, AccessToken.account_id == account_id)
        .where(AccessToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    session.execute(
        update(RefreshToken)
        .where(RefreshToken.client_pk == client_pk, RefreshToken.account_id == account_id)
        .where(RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def _code_grant(session: Session, form: dict[str, str], request: _TokenRequest, token_url: str) -> _Grant:
    """Redeem an authorization code: once, within 60 s, by its client, with its PKCE verifier."""
    client = _app_client(session, form, request, token_url)
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
        _revoke_grants_of(session, client_pk=client.id, account_id=code.account_id, now=now)
        raise InvalidGrantError(description="the code was already used")
    return _Grant(client, code.scopes.split(), code.account_id, code.patient_id, code.nonce)


def _refresh_grant(session: Session, form: dict[str, str], request: _TokenRequest, token_url: str) -> _Grant:
    """Rotate a refresh token: single use; a second use revokes its family (it leaked)."""
    client = _app_client(session, form, request, token_url)
    row = session.scalar(
        select(RefreshToken).where(RefreshToken.token_digest == digest(form.get("refresh_token") or ""))
    )
    now = clock.now()
    if row is None or row.client_pk != client.id or row.revoked_at is not None or row.expires_at <= now:
        raise InvalidGrantError(description="the refresh token is not valid for this app")
    won = session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if won != 1:
        _revoke_grants_of(session, client_pk=client.id, account_id=row.account_id, now=now)
        raise InvalidGrantError(description="the refresh token was already used")
    held = row.scopes.split()
    requested = (form.get("scope") or "").split() or held
    if any(s not in held for s in requested):
        raise InvalidScopeError(description="a refresh may narrow the scopes, never widen them")
    account = session.get(Account, row.account_id)
    if account is None or account.status != "active" or roles_of(session, account=account) & PRIVILEGED_ROLES:
        raise InvalidGrantError(description="the person this app acts for cannot use it now")
    return _Grant(client, requested, row.account_id, row.patient_id, None, row.family_id, row.expires_at)


def _fhir_user(origin: str, account: Account) -> str | None:
    """The person's FHIR resource URL: their Practitioner (staff) or Patient (a patient account)."""
    if account.practitioner_id is not None:
        return f"{origin}/fhir/Practitioner/{account.practitioner_id}"
    if account.patient_id is not None:
        return f"{origin}/fhir/Patient/{account.patient_id}"
    return None


def _id_token(runtime: Runtime, session: Session, grant: _Grant, now: dt.datetime) -> str | None:
    if grant.account_id is None or smart.OPENID not in grant.scopes:
        return None
    account = session.get(Account, grant.account_id)
    if account is None:
        return None
    origin = runtime.settings.origin.rstrip("/")
    claims: dict[str, Any] = {
        "iss": origin,
        "sub": str(account.id),
        "aud": grant.client.client_id,
        "iat": int(now.timestamp()),
        "exp": int((now + ID_TOKEN_LIFETIME).timestamp()),
    }
    if grant.nonce:
        claims["nonce"] = grant.nonce
    if smart.FHIR_USER in grant.scopes:
        fhir_user = _fhir_user(origin, account)
        if fhir_user is not None:
            claims["fhirUser"] = fhir_user
    if "profile" in grant.scopes:
        claims["name"] = account.display_name
    return oidc.sign(runtime.settings.resolved_oidc_key_file, claims)


def _refresh_token(session: Session, grant: _Grant, now: dt.datetime) -> str | None:
    """offline_access or online_access: a new refresh token, in the family it continues."""
    if grant.account_id is None:
        return None
    kind = next((k for k in (smart.OFFLINE, smart.ONLINE) if k in grant.scopes), None)
    if kind is None:
        return None
    value = secrets.token_urlsafe(32)
    expires = grant.family_expires_at or now + REFRESH_LIFETIME[kind]  # a family never outlives its first
    session.add(
        RefreshToken(
            token_digest=digest(value),
            family_id=grant.family_id or uuid.uuid4(),
            client_pk=grant.client.id,
            account_id=grant.account_id,
            scopes=" ".join(grant.scopes),
            patient_id=grant.patient_id,
            issued_at=now,
            expires_at=expires,
        )
    )
    return value


def issue_token(runtime: Runtime, *, form: dict[str, str], context: RequestContext) -> TokenAnswer:
    """The token endpoint: authenticate the client, grant the scopes it may have, audit."""
    token_url = runtime.settings.origin.rstrip("/") + "/oauth/token"
    with runtime.session_factory.begin() as session:
        request = _TokenRequest(form=form)
        asserted = str(form.get("client_id") or "unknown")[:100]
        try:
            grant_type = form.get("grant_type")
            if grant_type == "client_credentials":
                grant = _backend_grant(session, form, request, token_url)
            elif grant_type == "authorization_code":
                grant = _code_grant(session, form, request, token_url)
            elif grant_type == "refresh_token":
                grant = _refresh_grant(session, form, request, token_url)
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
        client, requested = grant.client, grant.scopes
        token = secrets.token_urlsafe(32)
        now = clock.now()
        session.add(
            AccessToken(
                token_digest=digest(token),
                client_pk=client.id,
                account_id=grant.account_id,
                scopes=" ".join(requested),
                issued_at=now,
                expires_at=now + TOKEN_LIFETIME,
                patient_id=grant.patient_id,
            )
        )
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(TOKEN_LIFETIME.total_seconds()),
            "scope": " ".join(requested),
        }
        if grant.patient_id is not None:
            body["patient"] = str(grant.patient_id)
            body["need_patient_banner"] = True
        id_token = _id_token(runtime, session, grant, now)
        if id_token is not None:
            body["id_token"] = id_token
        refresh = _refresh_token(session, grant, now)
        if refresh is not None:
            body["refresh_token"] = refresh
        detail = {"scope": " ".join(requested)[:400], "grant": str(form.get("grant_type"))}
        if grant.account_id is not None:
            detail["for_account"] = str(grant.account_id)
        runtime.audit.append(
            session,
            AuditRecord(
                kind=AuditKind.TOKEN_ISSUED,
                outcome=Outcome.SUCCESS,
                actor=_client_actor(client, context, frozenset(requested)),
                patient_ids=[grant.patient_id] if grant.patient_id is not None else [],
                detail=detail,
            ),
        )
    return TokenAnswer(200, body)


# -- EHR launch: the chart hands an app a one-time launch context ----------------------------
@dataclass(frozen=True)
class LaunchableApp:
    client_id: str
    name: str
    origin: str  # of its launch URI: where the chart's launch form sends the browser


def origin_of(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}"


def launchable_apps(session: Session) -> list[LaunchableApp]:
    """The active apps a chart can launch (a launch URI and the `launch` scope)."""
    rows = session.execute(
        select(ApiClient.client_id, ApiClient.name, ApiClient.allowed_scopes, ApiClient.launch_uri)
        .where(ApiClient.kind == "app", ApiClient.status == "active", ApiClient.launch_uri.is_not(None))
        .order_by(ApiClient.name)
    ).all()
    return [
        LaunchableApp(r.client_id, r.name, origin_of(r.launch_uri))
        for r in rows
        if smart.LAUNCH in r.allowed_scopes.split()
    ]


def _person(actor: Actor) -> uuid.UUID:
    if actor.account_id is None or actor.kind not in (ActorKind.STAFF, ActorKind.PATIENT):
        raise Forbidden("only a signed-in person launches or authorizes an app")
    if actor.is_privileged:
        # Administrators administer: their powers are not lent to third-party apps.
        raise Forbidden("privileged accounts cannot authorize apps")
    return actor.account_id


def create_launch(
    session: Session,
    *,
    client_id: str,
    actor: Actor,
    patient_id: uuid.UUID,
    fhir_base: str,
    audit: AuditWriter,
) -> str:
    """An EHR launch: a single-use `launch` value for this person, patient and app, valid 5
    minutes, and the app's launch URL carrying it. The caller has opened the chart through the
    gate (so the person may see the patient); the code grant checks it again."""
    account_id = _person(actor)
    client = session.scalar(
        select(ApiClient).where(
            ApiClient.client_id == client_id, ApiClient.kind == "app", ApiClient.status == "active"
        )
    )
    if client is None or not client.launch_uri or smart.LAUNCH not in client.allowed_scopes.split():
        raise NotFoundApp("no such app to launch")
    value = secrets.token_urlsafe(32)
    now = clock.now()
    session.add(
        SmartLaunch(
            launch_digest=digest(value),
            client_pk=client.id,
            account_id=account_id,
            patient_id=patient_id,
            created_at=now,
            expires_at=now + LAUNCH_LIFETIME,
        )
    )
    audit.append(
        session,
        AuditRecord(
            kind=AuditKind.APP_LAUNCHED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            resource_type="ApiClient",
            resource_ids=(client.client_id,),
            patient_ids=[patient_id],
        ),
    )
    separator = "&" if "?" in client.launch_uri else "?"
    return client.launch_uri + separator + urlencode({"iss": fhir_base, "launch": value})


class NotFoundApp(InvalidInput):
    """No active app by that id can be launched."""


def _launch_row(session: Session, *, launch: str, client_pk: uuid.UUID, account_id: uuid.UUID) -> SmartLaunch:
    row = session.scalar(select(SmartLaunch).where(SmartLaunch.launch_digest == digest(launch)))
    if (
        row is None
        or row.client_pk != client_pk
        or row.account_id != account_id
        or row.used_at is not None
        or row.expires_at <= clock.now()
    ):
        raise AuthorizationRefused(
            "invalid_request", "the launch is unknown, expired, already used or not yours"
        )
    return row


def launch_patient(session: Session, *, request: AuthorizationRequest, actor: Actor) -> uuid.UUID:
    """The patient of a pending EHR launch (not used up: the person has not approved yet)."""
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == request.client_id))
    if client is None or not request.launch:
        raise AuthorizationRefused("invalid_request", "no launch to resolve")
    return _launch_row(
        session, launch=request.launch, client_pk=client.id, account_id=_person(actor)
    ).patient_id


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
    launch: str = ""
    nonce: str = ""
    aud: str = ""

    @property
    def wants_patient(self) -> bool:
        """Standalone launch asking the person to pick a patient (launch/patient)."""
        return not self.launch and smart.LAUNCH_PATIENT in self.scopes


def _within(scope: str, allowed: set[str]) -> bool:
    """A scope the app registered, or a narrowing of one (a type of `*`, fewer letters, a
    category: `patient/Observation.rs?category=laboratory` within `patient/*.rs`)."""
    return scope in allowed or any(smart.narrows(scope, held) for held in allowed)


def check_authorization_request(
    session: Session, params: dict[str, str], *, fhir_base: str
) -> AuthorizationRequest:
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
    aud = params.get("aud", "")
    if aud.rstrip("/") != fhir_base.rstrip("/"):
        raise AuthorizationRefused("invalid_request", f"aud must be this server's FHIR base, {fhir_base}")
    scopes = params.get("scope", "").split()
    allowed = set(client.allowed_scopes.split())
    if not scopes or any(not _within(s, allowed) for s in scopes) or len(scopes) > 50:
        raise AuthorizationRefused("invalid_scope", "ask for scopes this app registered")
    launch = params.get("launch", "")
    if (smart.LAUNCH in scopes) != bool(launch) or len(launch) > 200:
        raise AuthorizationRefused(
            "invalid_request", "an EHR launch sends both the launch scope and its launch value"
        )
    nonce = params.get("nonce", "")
    if len(nonce) > 200:
        raise AuthorizationRefused("invalid_request", "the nonce is too long")
    return AuthorizationRequest(
        client_id=client.client_id,
        client_name=client.name,
        redirect_uri=redirect_uri,
        scopes=tuple(scopes),
        state=state,
        code_challenge=challenge,
        launch=launch,
        nonce=nonce,
        aud=aud,
    )


def grant_code(
    session: Session,
    *,
    request: AuthorizationRequest,
    actor: Actor,
    audit: AuditWriter,
    patient_id: uuid.UUID | None = None,
) -> str:
    """The person approved: a one-time code for the app (60 s), audited.

    The launch patient is the EHR launch's (used up here, once), the patient a patient account
    is, or `patient_id` picked in a standalone launch; the caller has checked through the gate
    that the person may see it. patient/ scopes without a launch patient are refused.
    """
    account_id = _person(actor)
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == request.client_id))
    if client is None:
        raise InvalidInput("unknown app")
    now = clock.now()
    if request.launch:
        row = _launch_row(session, launch=request.launch, client_pk=client.id, account_id=account_id)
        used = session.execute(
            update(SmartLaunch)
            .where(SmartLaunch.id == row.id, SmartLaunch.used_at.is_(None))
            .values(used_at=now)
        ).rowcount  # type: ignore[attr-defined]
        if used != 1 or (patient_id is not None and patient_id != row.patient_id):
            raise AuthorizationRefused("invalid_request", "the launch is already used")
        patient_id = row.patient_id
    elif actor.kind == ActorKind.PATIENT:
        patient_id = actor.patient_id  # a patient's app reaches their own record only
    elif not request.wants_patient:
        patient_id = None
    if smart.patient_scoped(request.scopes) and patient_id is None:
        raise AuthorizationRefused(
            "invalid_scope",
            "patient/ scopes need a patient: launch the app from a chart, or ask for launch/patient",
        )
    code = secrets.token_urlsafe(32)
    session.add(
        AuthorizationCode(
            code_digest=digest(code),
            client_pk=client.id,
            account_id=account_id,
            scopes=" ".join(request.scopes),
            redirect_uri=request.redirect_uri,
            code_challenge=request.code_challenge,
            expires_at=now + AUTHORIZATION_CODE_LIFETIME,
            patient_id=patient_id,
            nonce=request.nonce or None,
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
            patient_ids=[patient_id] if patient_id is not None else [],
            detail={"scope": " ".join(request.scopes)[:400]},
        ),
    )
    return code


def revoke_token(runtime: Runtime, *, actor: Actor, token: str) -> bool:
    """RFC 7009 for a client's own access or refresh token (the caller authenticated as it)."""
    with runtime.session_factory.begin() as session:
        row: AccessToken | RefreshToken | None = session.scalar(
            select(AccessToken).where(AccessToken.token_digest == digest(token))
        )
        if row is None:
            row = session.scalar(select(RefreshToken).where(RefreshToken.token_digest == digest(token)))
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
        compartment = None
        if smart.patient_scoped(scopes):
            if row.patient_id is None:
                raise AuthenticationRequired("a patient-scoped token without its patient: fail closed")
            compartment = row.patient_id  # every access of this token is confined to it
        person = actor_for(account, roles, row=None, context=context)
        return replace(person, client_id=client.client_id, scopes=scopes, compartment_patient_id=compartment)


# -- for the web pages (which open no database session themselves) --------------------------
def apps_to_launch(runtime: Runtime) -> list[LaunchableApp]:
    with runtime.session_factory() as session:
        return launchable_apps(session)


def start_launch(runtime: Runtime, *, client_id: str, actor: Actor, patient_id: uuid.UUID) -> str:
    """`create_launch` in its own transaction; the app's launch URL."""
    fhir_base = runtime.settings.origin.rstrip("/") + "/fhir"
    with runtime.session_factory.begin() as session:
        return create_launch(
            session,
            client_id=client_id,
            actor=actor,
            patient_id=patient_id,
            fhir_base=fhir_base,
            audit=runtime.audit,
        )


def check_request(runtime: Runtime, params: dict[str, str]) -> AuthorizationRequest:
    with runtime.session_factory() as session:
        return check_authorization_request(
            session, params, fhir_base=runtime.settings.origin.rstrip("/") + "/fhir"
        )


def pending_launch_patient(runtime: Runtime, *, request: AuthorizationRequest, actor: Actor) -> uuid.UUID:
    with runtime.session_factory() as session:
        return launch_patient(session, request=request, actor=actor)


def approve(
    runtime: Runtime, *, params: dict[str, str], actor: Actor, patient_id: uuid.UUID | None
) -> tuple[AuthorizationRequest, str]:
    """The person approved: the request checked again and a code granted, in one transaction."""
    fhir_base = runtime.settings.origin.rstrip("/") + "/fhir"
    with runtime.session_factory.begin() as session:
        checked = check_authorization_request(session, params, fhir_base=fhir_base)
        code = grant_code(session, request=checked, actor=actor, audit=runtime.audit, patient_id=patient_id)
    return checked, code


def app_origins(runtime: Runtime) -> frozenset[str]:
    """The origins of active apps' redirect and launch URIs (for CORS, carnet.identity.cors)."""
    with runtime.session_factory() as session:
        rows = session.execute(
            select(ApiClient.redirect_uris, ApiClient.launch_uri).where(
                ApiClient.kind == "app", ApiClient.status == "active"
            )
        ).all()
    found: set[str] = set()
    for redirects, launch in rows:
        for uri in [*redirects.split(), *([launch] if launch else [])]:
            parts = urlsplit(uri)
            if parts.scheme and parts.netloc:
                found.add(f"{parts.scheme}://{parts.netloc}")
    return frozenset(found)
