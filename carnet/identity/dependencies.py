"""FastAPI dependencies: who is asking, from a session cookie or a bearer token.

The FHIR API and the web UI use `current_actor`; carnet errors raised here become 401/403
answers (OperationOutcome) that say why and, for a contained account, whom to call.
"""

from __future__ import annotations

import functools
from http import cookies as http_cookies
from urllib.parse import urlsplit

from fastapi import Request

from carnet.access.actor import Actor
from carnet.identity.authenticate import Authenticator, RequestContext
from carnet.kernel.errors import AuthenticationRequired, Forbidden
from carnet.runtime import Runtime

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_COOKIE = "carnet_csrf"


def runtime_of(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise AuthenticationRequired("the service is starting")
    return runtime


def cookie_is_secure(origin: str) -> bool:
    """Secure cookies everywhere but a developer's plain-http localhost."""
    parts = urlsplit(origin)
    return not (parts.scheme == "http" and parts.hostname == "localhost")


@functools.cache  # an installation has one origin; asked on every request (urlsplit each time)
def session_cookie_name(origin: str) -> str:
    # __Host- forbids a Domain attribute and needs Secure: no sibling host can plant it.
    return "__Host-carnet_session" if cookie_is_secure(origin) else "carnet_session"


def request_context(request: Request) -> RequestContext:
    # The peer address only: a forwarded-for header is written by the client and proves nothing.
    address = request.client.host if request.client else None
    return RequestContext(address=address, user_agent=request.headers.get("user-agent"), path=_path(request))


def _path(request: Request) -> str:
    """`request.url.path` (as Starlette's URL escapes it), without building the whole URL on
    every request (host, scheme, query: a tenth of a millisecond the session read does not need)."""
    path: str = request.scope["path"]
    if "?" in path or "#" in path or "\\" in path:
        path = path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    return path[:200]


def session_token(request: Request, runtime: Runtime) -> str | None:
    return request.cookies.get(session_cookie_name(runtime.settings.origin))


def _bearer(request: Request) -> str | None:
    return _bearer_of(request.headers.get("authorization", ""))


def _bearer_of(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _actor(request: Request, *, allow_enrollment_only: bool) -> Actor:
    runtime = runtime_of(request)
    context = request_context(request)
    bearer = _bearer(request)
    if bearer is not None:
        from carnet.identity.oauth import resolve_bearer

        return resolve_bearer(runtime, token=bearer, context=context)
    token = session_token(request, runtime)
    if token is None:
        raise AuthenticationRequired("sign in first (POST /auth/login)")
    actor, row = Authenticator.of(runtime).resolve(
        token=token, context=context, allow_enrollment_only=allow_enrollment_only
    )
    if request.method not in SAFE_METHODS:
        from carnet.identity.sessions import csrf_matches

        # A cookie rides along with cross-site requests; the header proves our own page sent it.
        if not csrf_matches(row, request.headers.get(CSRF_HEADER)):
            raise Forbidden(f"missing or wrong {CSRF_HEADER} header (cross-site request refused)")
    return actor


def cookie_session(request: Request) -> str | None:
    """The session token of a request that presents a session cookie and no bearer token: the
    one whose Actor `current_actor` would resolve from that cookie (a caller may read the
    session itself, in its own round trip, and answer as `Authenticator.resolve` would)."""
    if _bearer(request) is not None:
        return None
    return session_token(request, runtime_of(request))


def cookie_read(request: Request, runtime: Runtime) -> tuple[str, RequestContext] | None:
    """`cookie_session(request)` and `request_context(request)` in one pass over the ASGI
    headers (Starlette's `Headers`, `cookies` and `client` cost 40 calls a read): the session
    token and the context of a request that presents a session cookie and no bearer token,
    else None. The same values (tests/identity/test_cookie_read.py): the first Authorization and
    User-Agent headers as `headers.get` reads them, the cookie as Starlette's `cookies` parses
    every Cookie header (a later one wins)."""
    authorization = agent = None
    cookie_headers = []
    for key, value in request.scope["headers"]:
        if key == b"cookie":
            cookie_headers.append(value)
        elif key == b"authorization":
            if authorization is None:
                authorization = value
        elif key == b"user-agent" and agent is None:
            agent = value
    if authorization is not None and _bearer_of(authorization.decode("latin-1")) is not None:
        return None
    token = _cookie(cookie_headers, session_cookie_name(runtime.settings.origin))
    if token is None:
        return None
    client = request.scope.get("client")
    context = RequestContext(
        address=client[0] if client is not None else None,
        user_agent=None if agent is None else agent.decode("latin-1"),
        path=_path(request),
    )
    return token, context


def _cookie(headers: list[bytes], name: str) -> str | None:
    """`starlette.requests.cookie_parser` over each header, in order, then `.get(name)`."""
    found = None
    for header in headers:
        for chunk in header.decode("latin-1").split(";"):
            key, equals, val = chunk.partition("=")
            if equals and key.strip() == name:
                found = val
    return None if found is None else http_cookies._unquote(found.strip())


def current_actor(request: Request) -> Actor:
    """The Actor of this request (session cookie with CSRF check, or bearer token)."""
    return _actor(request, allow_enrollment_only=False)


def enrolling_actor(request: Request) -> Actor:
    """Like current_actor, but also a privileged account's passkey-enrolment-only session."""
    return _actor(request, allow_enrollment_only=True)
