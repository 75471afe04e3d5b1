"""CORS for registered SMART apps, and for nothing else.

A browser SMART app (a public client, PKCE) runs on its own origin and calls discovery, the
token endpoint and the FHIR API with a bearer token. Only the origins of active apps' registered
redirect and launch URIs are answered, only on those paths, never with credentials (no cookie
rides a cross-origin call that the page can read) and never with the CSRF header allowed: a
session cookie stays useless to another site, as before. Sign-in and the web UI get no CORS.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PATHS = ("/fhir/", "/oauth/token", "/oauth/jwks", "/oauth/revoke", "/.well-known/smart-configuration")
ALLOW_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = b"Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-Modified-Since"
EXPOSE_HEADERS = b"Location, ETag, Last-Modified, Content-Location"
# How long a worker trusts its list of app origins (a suspended app's tokens stop at once anyway).
REFRESH_SECONDS = 30.0


class AppOrigins:
    """The registered apps' origins, read at most every REFRESH_SECONDS per worker."""

    def __init__(self, load: Callable[[], frozenset[str]]) -> None:
        self._load = load
        self._origins: frozenset[str] = frozenset()
        self._at = -REFRESH_SECONDS

    def __call__(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._at >= REFRESH_SECONDS:
            self._origins = self._load()
            self._at = now
        return self._origins


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class AppCors:
    """Pure ASGI: answers preflights and adds Access-Control-Allow-Origin for app origins."""

    def __init__(self, app: ASGIApp, *, origins: Callable[[Scope], frozenset[str]]) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin") if scope["type"] == "http" else None
        path = str(scope.get("path", ""))
        if origin is None or not path.startswith(PATHS) or origin not in self.origins(scope):
            await self.app(scope, receive, send)
            return
        allow = origin.encode("latin-1")
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        (b"access-control-allow-origin", allow),
                        (b"access-control-allow-methods", ALLOW_METHODS),
                        (b"access-control-allow-headers", ALLOW_HEADERS),
                        (b"access-control-max-age", b"600"),
                        (b"vary", b"Origin"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"access-control-allow-origin", allow))
                headers.append((b"access-control-expose-headers", EXPOSE_HEADERS))
                headers.append((b"vary", b"Origin"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)
