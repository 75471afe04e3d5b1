"""OAuth 2 for API clients: SMART Backend Services (client_credentials + private_key_jwt).

Access tokens are opaque random strings (only their SHA-256 is stored), live at most 5 minutes
and are checked against the database on every request, so a revocation is immediate everywhere.
"""

from __future__ import annotations

from sqlalchemy import select

from carnet.access.actor import Actor, ActorKind
from carnet.access.roles import Role
from carnet.identity.authenticate import RequestContext
from carnet.identity.models import AccessToken, ApiClient
from carnet.identity.sessions import digest
from carnet.kernel import clock
from carnet.kernel.errors import AuthenticationRequired
from carnet.runtime import Runtime


def resolve_bearer(runtime: Runtime, *, token: str, context: RequestContext) -> Actor:
    """The Actor of a bearer token; AuthenticationRequired when unknown, expired or revoked."""
    with runtime.session_factory() as session:
        row = session.scalar(select(AccessToken).where(AccessToken.token_digest == digest(token)))
        client = session.get(ApiClient, row.client_pk) if row is not None else None
        if row is None or client is None or row.revoked_at is not None or row.expires_at <= clock.now():
            raise AuthenticationRequired("the access token is not valid (unknown, expired or revoked)")
        if client.status != "active":
            raise AuthenticationRequired("this API client is suspended")
        return Actor(
            kind=ActorKind.CLIENT,
            username=f"client:{client.client_id}",
            roles=frozenset({Role.API_CLIENT}),
            client_id=client.client_id,
            facility_id=client.facility_id,
            address=context.address,
            user_agent=context.user_agent,
            scopes=frozenset(row.scopes.split()),
        )
