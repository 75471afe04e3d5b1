"""Per-request metrics and trace span, outside the routers so every answer is counted."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext

from opentelemetry.trace import INVALID_SPAN, SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from carnet.operations import metrics
from carnet.operations.tracing import TRACER, recording

# The access log: route templates, never the path asked (a client can put an INS in it) nor the
# query string (search criteria). `carnet serve` turns uvicorn's own access log off for this one.
access_log = logging.getLogger("carnet.access")


def route_of(scope: Scope) -> str:
    """The matched route's template, never the path asked (it can hold an identifier)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return "/static" if str(scope.get("path", "")).startswith("/static/") else "unmatched"


class Observe:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        method = str(scope.get("method", ""))

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        metrics.IN_FLIGHT.inc()
        # An exception message can quote data: its type is in the logs. No span at all when no
        # tracer provider is installed (it would record nothing).
        traced = (
            TRACER.start_as_current_span("HTTP request", kind=SpanKind.SERVER, record_exception=False)
            if recording()
            else nullcontext(INVALID_SPAN)
        )
        with traced as span:
            try:
                await self.app(scope, receive, send_observed)
            finally:
                metrics.IN_FLIGHT.dec()
                route = route_of(scope)
                span.update_name(f"{method} {route}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                seconds = time.perf_counter() - start
                metrics.observe_request(route, method, status, seconds)
                access_log.info(
                    "%s %s %d %.1fms",
                    method,
                    route,
                    status,
                    seconds * 1000,
                    extra={"route": route, "method": method, "status": status},
                )
