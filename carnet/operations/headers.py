"""Hardening headers on every answer: pages, FHIR, OAuth, errors, redirects and static files.

The web UI and the OAuth consent page set their own Content-Security-Policy (they need scripts
and styles from 'self'); everything else is data or a redirect and gets the strictest one. An
answer that chose its own Cache-Control (the CapabilityStatement, the static files) keeps it;
every other answer may carry patient data, a token or a session cookie, so nothing keeps it.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
# Two years, as browsers' preload lists expect; only sent outside demo and test (plain-HTTP
# loopback would otherwise pin localhost to HTTPS in the developer's browser).
HSTS = "max-age=63072000; includeSubDomains"

ALWAYS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", API_CONTENT_SECURITY_POLICY.encode()),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
# Our own scripts and styles: not patient data, cacheable by the browser (they are versioned).
CACHEABLE_PREFIXES = ("/static/",)


class SecurityHeaders:
    """Adds each hardening header the answer did not set itself (pure ASGI: streams untouched)."""

    def __init__(self, app: ASGIApp, *, hsts: Callable[[Scope], bool]) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = str(scope.get("path", "")).startswith(CACHEABLE_PREFIXES)

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in ALWAYS if name not in present)
                if not cacheable and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                if b"strict-transport-security" not in present and self.hsts(scope):
                    headers.append((b"strict-transport-security", HSTS.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_hardened)
